"""The `export` stage: a model artifact in, an `export-<id>/` artifact out.

The artifact holds `model.onnx` (unrolled T), `model.step.onnx` (one step, state in/out) and,
when the model can be expressed in NIR, `model.nir`. Its metrics record what each export cost
and how closely each file reproduces the PyTorch model on a probe batch.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from edgeprune import checkpoint
from edgeprune.artifacts import Artifact, Job, Store
from edgeprune.config import ExportConfig
from edgeprune.errors import UserError
from edgeprune.models import ModelSpec, poisson_spikes

from . import metadata, parity
from .nir_graph import write_nir
from .prepare import for_export
from .nir_sim import simulate
from .onnx_files import STEP, UNROLLED, write_onnx

NIR_FILE = "model.nir"
FORMAT = 1  # bump when the exported files change for the same config

Report = Callable[[dict], None]


def _quiet(_event: dict) -> None:
    pass


def nir_mode(nir: bool | None) -> str:
    """--nir: "on" (fail if NIR cannot express the model), --no-nir: "off", neither: "auto"
    (write it when possible, otherwise skip with a note)."""
    return "auto" if nir is None else ("on" if nir else "off")


def probe_batch(model_artifact: Artifact, spec: ModelSpec, timesteps: int,
                size: int) -> tuple[torch.Tensor, str]:
    """Test images of the model's dataset when the artifact names one (the realistic activity a
    parity check needs), else seeded uniform noise; poisson models get seeded input spikes."""
    from edgeprune import data as datalib

    name = model_artifact.config.get("data", {}).get("name")
    g = torch.Generator().manual_seed(0)
    x, source = None, "uniform noise (seed 0)"
    if name:
        try:
            ds = datalib.load(name)
            if tuple(ds.input_shape) == tuple(spec.input_shape):
                x, source = ds.x_test[:size].float(), f"{name} test[:{size}]"
        except UserError:
            pass  # the data is not on this machine: noise still exercises every layer
    if x is None:
        x = torch.rand((size, *spec.input_shape), generator=g)
    if spec.encoding == "poisson":
        x = poisson_spikes(x, timesteps, g)
        source += ", poisson spikes (seed 0)"
    return x, source


def export(store: Store, model_artifact: Artifact, cfg: ExportConfig = ExportConfig(),
           report: Report = _quiet) -> tuple[Artifact, bool]:
    """Export the model.pt of `model_artifact`. Returns (artifact, cached).

    cfg.nir: True = required (UserError if NIR cannot express the model), False = skip,
    None = write when expressible, else skip with the reason in metrics["nir"].
    """
    spec, model = checkpoint.load(model_artifact.file("model.pt"))
    T = cfg.timesteps or spec.timesteps
    config = {"format": FORMAT, "timesteps": T, "outputs": cfg.outputs, "opset": cfg.opset,
              "sparse_initializers": cfg.sparse_initializers, "nir": nir_mode(cfg.nir),
              "probe": cfg.probe, "exporter": "torch.onnx (TorchScript)"}
    model.eval()

    def compute(job: Job) -> dict:
        tmp = job.dir
        report({"event": "onnx"})
        files = write_onnx(spec, model, tmp, timesteps=T, outputs=cfg.outputs, opset=cfg.opset,
                           sparse=cfg.sparse_initializers, artifact_id=model_artifact.id)
        x, source = probe_batch(model_artifact, spec, T, cfg.probe)
        report({"event": "parity"})
        # Two references: the checkpoint's model as trained, and the folded network the files
        # hold. Against the folded one spikes must match exactly; against the original, folding
        # may flip a spike whose membrane potential sits within 1e-5 of the threshold.
        ref = parity.torch_reference(model, x, T, near_eps=1e-5)
        folded = parity.torch_reference(for_export(model), x, T)
        near = parity.near_threshold(ref)
        runs = {UNROLLED: parity.run_unrolled(parity.session(tmp / UNROLLED), x.numpy()),
                STEP: parity.run_stream(parity.session(tmp / STEP), x.numpy(), T, spec.encoding,
                                        metadata.read(tmp / STEP)["edgeprune.states"])}
        nir_note = "not asked (--no-nir)"
        if cfg.nir is not False:
            report({"event": "nir"})
            t0 = time.perf_counter()
            try:
                graph = write_nir(model, spec.input_shape, T, tmp / NIR_FILE)
            except UserError as e:
                if cfg.nir:
                    raise
                nir_note = f"skipped: {e}"
            else:
                import nir as nirlib  # read back what was written: the file is what ships
                sim = simulate(nirlib.read(str(tmp / NIR_FILE)), x.numpy(), T,
                               input_is_sequence=spec.encoding == "poisson")
                runs[NIR_FILE] = sim
                files[NIR_FILE] = {"seconds": time.perf_counter() - t0, "nodes": len(graph.nodes),
                                   "bytes": (tmp / NIR_FILE).stat().st_size}
                nir_note = "written"
        checks = {k: parity.compare(ref, got, near) for k, got in runs.items()}
        for k, got in runs.items():
            checks[k]["spike_mismatches_vs_folded"] = \
                parity.compare(folded, got)["spike_mismatches"]
        return {
            "timesteps": T, "encoding": spec.encoding, "opset": cfg.opset, "outputs": cfg.outputs,
            "export_seconds": {k: v["seconds"] for k, v in files.items()},
            "nodes": {k: v["nodes"] for k, v in files.items()},
            "bytes": {k: v["bytes"] for k, v in files.items()},
            "bytes_dense": {k: v["bytes_dense"] for k, v in files.items() if "bytes_dense" in v},
            "bytes_sparse": {k: v["bytes_sparse"] for k, v in files.items()
                             if "bytes_sparse" in v},
            "states": len(files[STEP]["states"]),
            "sparsity": metadata.sparsity(model)["total"],
            "probe": source, "parity": checks, "nir": nir_note,
            "max_abs_diff": max(c["max_abs_diff"] for c in checks.values()),
            "spike_mismatches": sum(c["spike_mismatches"] for c in checks.values()),
            "spike_mismatches_unexplained": sum(c["spike_mismatches_unexplained"]
                                                for c in checks.values()),
            "spike_mismatches_vs_folded": sum(c["spike_mismatches_vs_folded"]
                                              for c in checks.values()),
            "near_threshold": near,
            "prediction_agreement": min(c["prediction_agreement"] for c in checks.values()),
        }

    return store.run("export", config, [model_artifact.id], compute)
