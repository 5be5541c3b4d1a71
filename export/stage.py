"""The `export` stage: a model artifact in, an `export-<id>/` artifact out.

The artifact holds `model.onnx` (unrolled T, compacted: export/compact.py), `model.step.onnx`
(one step, state in/out; uncompacted when compaction needed per-step biases), `model.int8.onnx`
(int8 QDQ weights, for validation to keep or drop), the C runtime's sources (`model.h`,
`model.c`, `model_weights.c`, `runner.c`) and, when the model can be expressed in NIR,
`model.nir`. Its metrics record the compaction (shapes before/after and its exactness check on
the probe), what each export cost and how closely each file reproduces the PyTorch model on a
probe batch.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

from edgeprune import checkpoint
from edgeprune.artifacts import Artifact, Job, Store
from edgeprune.config import ExportConfig
from edgeprune.diskspace import DiskFull
from edgeprune.errors import UserError
from edgeprune.models import ModelSpec, poisson_spikes

from . import metadata, parity
from .nir_graph import write_nir
from .prepare import for_export
from .nir_sim import simulate
from .c_codegen import write_c
from .c_program import choose_dense_rows, program_from_model
from .compact import check as compact_check, compact
from .onnx_files import INT8, STEP, UNROLLED, write_onnx

NIR_FILE = "model.nir"
FORMAT = 3  # bump when the exported files change for the same config
ONNX_ALIGN = 16  # conv channels of the compacted ONNX graph: a multiple of this
# max |Δlogit| compaction may cause, relative to the logits' size (float32 summation order
# only: logits of ~50 differ by a few units in the last place, ~1e-5)
COMPACT_TOLERANCE = 1e-6

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
              "compact": cfg.compact, "int8": nir_mode(cfg.int8),
              "c_runtime": nir_mode(cfg.c_runtime), "c_dense_rows": cfg.c_dense_rows,
              "probe": cfg.probe, "exporter": "torch.onnx (TorchScript)"}
    model.eval()

    def compute(job: Job) -> dict:
        tmp = job.dir
        x, source = probe_batch(model_artifact, spec, T, cfg.probe)
        deploy, c_model, step_model, comp_metrics, extra_meta = model, model, model, None, {}
        if cfg.compact:
            report({"event": "compact"})
            # ONNX: conv channels stay a multiple of ONNX_ALIGN (ORT's blocked convolutions);
            # the C runtime gains from every removed unit
            comp, why = compact(model, T, spec.input_shape, align=ONNX_ALIGN)
            c_comp, _ = compact(model, T, spec.input_shape)
            if comp is None:
                comp_metrics = {"applied": False, "reason": why}
            else:
                proof = compact_check(model, comp, x)
                c_proof = compact_check(model, c_comp, x)
                c_model = c_comp.model
                deploy = comp.model
                deploy.constant_spikes = comp.constant_spikes
                # a stream may outlast the T that per-step biases were computed for: the
                # streaming graph stays uncompacted then (documented in export/compact.py)
                step_model = model if comp.step_biases else deploy
                comp_metrics = {"applied": True, **comp.summary(), "check": proof,
                                "align": ONNX_ALIGN,
                                "streaming_model": "uncompacted (per-step biases)"
                                if comp.step_biases else "compacted",
                                "c": {"layers": c_comp.layers, "check": c_proof,
                                      "weights_after": c_comp.summary()["weights_after"]}}
                extra_meta["edgeprune.compaction"] = json.dumps(
                    [{k: l[k] for k in ("name", "shape_before", "shape_after", "step_bias")}
                     for l in comp.layers])
                for pr in (proof, c_proof):
                    tol = COMPACT_TOLERANCE * max(1.0, pr["logit_scale"])
                    if pr["spike_mismatches"] or pr["max_abs_logit_diff"] > tol:
                        raise UserError(f"compaction changed the model on the probe batch "
                                        f"({pr['spike_mismatches']} spike mismatches, max "
                                        f"|Δlogit| {pr['max_abs_logit_diff']:.3g}): export "
                                        "with --no-compact and report this")
        report({"event": "onnx"})
        files = write_onnx(spec, deploy, tmp, timesteps=T, outputs=cfg.outputs, opset=cfg.opset,
                           sparse=cfg.sparse_initializers, artifact_id=model_artifact.id,
                           meta_model=model, step_model=step_model, extra_meta=extra_meta,
                           int8=cfg.int8 is not False)
        int8_info = files[UNROLLED].pop("int8", None)
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
        if int8_info is not None:
            runs[INT8] = parity.run_unrolled(parity.session(tmp / INT8), x.numpy())
            files[INT8] = {"seconds": 0.0, "nodes": None, **int8_info}
        c_note = "not asked (--no-c-runtime)"
        c_summary = None
        if cfg.c_runtime is not False:
            report({"event": "c"})
            try:
                program = program_from_model(c_model, T, spec.input_shape)
            except UserError as e:
                if cfg.c_runtime:
                    raise
                c_note = f"skipped: {e}"
            else:
                choose_dense_rows(program, cfg.c_dense_rows)
                c_summary = write_c(program, tmp)
                c_note = "written"
        nir_note = "not asked (--no-nir)"
        if cfg.nir is not False:
            report({"event": "nir"})
            t0 = time.perf_counter()
            try:
                graph = write_nir(model, spec.input_shape, T, tmp / NIR_FILE)
            except UserError as e:
                if cfg.nir or isinstance(e, DiskFull):  # a full disk is no reason to skip NIR
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
        exact = {k: v for k, v in checks.items() if k != INT8}  # int8 is judged by validation
        return {
            "compaction": comp_metrics,
            "int8": (None if int8_info is None else
                     {**int8_info, "parity": checks[INT8], "asked": bool(cfg.int8)}),
            "c_runtime": c_note,
            "c": None if c_summary is None else {
                "files": sorted(c_summary["files"]), "weight_bytes": c_summary["weight_bytes"],
                "state_bytes": c_summary["state_bytes"], "buffer_bytes": c_summary["buffer_bytes"],
                "layers": [{k: l[k] for k in ("name", "kind", "in_shape", "out_shape", "weights",
                                              "nonzero", "mode", "bytes", "index_type")
                            if k in l}
                           for l in c_summary["layers"]]},
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
            "max_abs_diff": max(c["max_abs_diff"] for c in exact.values()),
            "spike_mismatches": sum(c["spike_mismatches"] for c in exact.values()),
            "spike_mismatches_unexplained": sum(c["spike_mismatches_unexplained"]
                                                for c in exact.values()),
            "spike_mismatches_vs_folded": sum(c["spike_mismatches_vs_folded"]
                                              for c in exact.values()),
            "near_threshold": near,
            "prediction_agreement": min(c["prediction_agreement"] for c in exact.values()),
        }

    return store.run("export", config, [model_artifact.id], compute)
