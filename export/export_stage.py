"""The `export` stage: a model artifact in, an `export-<id>/` artifact out.

The artifact holds `model.onnx` (unrolled T, compacted: export/compact.py), `model.step.onnx`
(one step, state in/out; uncompacted when compaction needed per-step biases), `model.int8.onnx`
(int8 QDQ weights, for validation to keep or drop), the C runtime's sources (`model.h`,
`model.c`, `model_weights.c`, `runner.c`) and, when the model can be expressed in NIR,
`model.nir`. Each is made by one pass of export/passes.py, run in order here; the metrics record
every pass (applied, passed, seconds), the compaction (shapes before/after and its exactness
check on the probe), what each export cost and how closely each file reproduces the PyTorch
model on a probe batch.
"""
from __future__ import annotations

import time
from typing import Callable

from edgeprune import checkpoint
from edgeprune.artifacts import Artifact, Job, Store
from edgeprune.config import ExportConfig

from .passes import PASSES, Declared, Export, summary

FORMAT = 7  # bump when the exported files change for the same config (5: C profile hooks;
#              6: dense-row kernels for the stem, padded lanes, row-wise pooling; 7: event
#              lists, halo event convs, spike pooling rows first)

Report = Callable[[dict], None]


def _quiet(_event: dict) -> None:
    pass


def nir_mode(nir: bool | None) -> str:
    """--nir: "on" (fail if NIR cannot express the model), --no-nir: "off", neither: "auto"
    (write it when possible, otherwise skip with a note)."""
    return "auto" if nir is None else ("on" if nir else "off")


def export(store: Store, model_artifact: Artifact, cfg: ExportConfig = ExportConfig(),
           report: Report = _quiet) -> tuple[Artifact, bool]:
    """Export the model.pt of `model_artifact`. Returns (artifact, cached).

    cfg.nir: True = required (UserError if NIR cannot express the model), False = skip,
    None = write when expressible, else skip with the reason in metrics["nir"].
    A required file that fails its own parity check is GateFailed (exit 1), and nothing is
    stored: a failed export is never found, and reused, by a later run (an optional model.nir
    that fails is left out instead, the reason in metrics["nir"]).
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
        ex = Export(spec, model, T, job.dir, model_artifact)
        metrics, record = {}, []
        for p in PASSES:
            if not p.applies(cfg):
                metrics.update(p.off)
                record.append({"name": p.name, "applied": False})
                continue
            report({"event": p.name})
            t0 = time.perf_counter()
            out = p.run(ex, Declared(cfg, p.reads, p.name))
            record.append({"name": p.name, "applied": True, "passed": out.pop("passed"),
                           "seconds": time.perf_counter() - t0})
            metrics.update(out)
        return {**summary(ex, metrics), "passes": record}

    return store.run("export", config, [model_artifact.id], compute)
