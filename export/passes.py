"""The export stage as a declared list of passes, run in order (as Olive runs a model through
its passes).

Each pass declares the ExportConfig fields it reads (it is handed only those), says when it
applies, writes its files into the artifact folder, checks itself where it can (the file run on
the probe batch against the PyTorch model) and returns its metrics plus `passed`: True or False
for its own check, None where it has none here (the C sources are compiled and checked by
validation; int8 is kept or dropped by validation's gates). export_stage.py runs `PASSES` and records
each pass, in order, in metrics["passes"]; `summary` assembles the metrics that reports read.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from edgeprune.artifacts import Artifact
from edgeprune.config import ExportConfig
from edgeprune.diskspace import DiskFull
from edgeprune.errors import GateFailed, UserError
from edgeprune.models import ModelSpec, poisson_spikes

from . import cost as costlib, metadata, parity
from .c_codegen import write_c
from .c_program import choose_dense_rows, program_from_model
from .compact import check as compact_check, compact
from .nir_graph import write_nir
from .nir_sim import simulate
from .onnx_files import (INT8, STEP, UNROLLED, check_options, store_sparse, write_step,
                         write_unrolled)
from .prepare import for_export
from .quantize import quantize_weights

NIR_FILE = "model.nir"
ONNX_ALIGN = 16  # conv channels of the compacted ONNX graph: a multiple of this
# max |Δlogit| compaction may cause, relative to the logits' size (float32 summation order
# only: logits of ~50 differ by a few units in the last place, ~1e-5)
COMPACT_TOLERANCE = 1e-6
# max |Δlogit| between a file and the folded network it holds, relative to the logits' size,
# when their spikes agree exactly (ONNX Runtime's kernels sum in another order)
PARITY_TOLERANCE = 1e-4


@dataclass
class Export:
    """What the passes share: the stage's inputs, and what earlier passes made."""

    spec: ModelSpec
    model: torch.nn.Module  # the checkpoint's model, as trained
    timesteps: int
    folder: Path
    source: Artifact  # the model artifact (its id goes into the files' metadata)
    # set by prepare: the probe batch and the PyTorch references the files are checked against
    x: torch.Tensor | None = None
    ref: dict = field(default_factory=dict)  # the model as trained (near-threshold counts)
    folded: dict = field(default_factory=dict)  # the folded network the files hold
    near: dict = field(default_factory=dict)
    # set by compact (the model itself without it)
    deploy: torch.nn.Module | None = None  # what the ONNX graphs are made of
    step_model: torch.nn.Module | None = None  # what the streaming graph is made of
    c_model: torch.nn.Module | None = None  # what the C program is made of
    extra_meta: dict = field(default_factory=dict)  # more edgeprune.* keys for model.onnx
    dense_unrolled: bytes = b""  # model.onnx before sparse storage (int8 quantizes it)
    files: dict = field(default_factory=dict)  # file name -> seconds, nodes, bytes, ...
    runs: dict = field(default_factory=dict)  # file name -> its outputs on the probe
    checks: dict = field(default_factory=dict)  # file name -> its parity on the probe


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[Export, object], dict]  # (state, its declared config) -> metrics, "passed"
    reads: tuple[str, ...] = ()  # the ExportConfig fields it is handed
    applies: Callable[[ExportConfig], bool] = lambda cfg: True
    off: dict = field(default_factory=dict)  # its metrics when it does not apply


class Declared:
    """The ExportConfig fields a pass declared; reading another is a bug, caught on first use."""

    def __init__(self, cfg: ExportConfig, names: tuple[str, ...], owner: str):
        self._cfg, self._names, self._owner = cfg, names, owner

    def __getattr__(self, name: str):
        if name not in self._names:
            raise AttributeError(f"export pass {self._owner!r} reads ExportConfig.{name} "
                                 f"without declaring it")
        return getattr(self._cfg, name)


# -- prepare: the probe batch and the references --------------------------------------------------

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


def prepare(ex: Export, cfg) -> dict:
    """The probe batch and two references: the checkpoint's model as trained, and the folded
    network the files hold. Against the folded one spikes must match exactly; against the
    original, folding may flip a spike whose membrane potential sits within 1e-5 of the
    threshold."""
    ex.x, source = probe_batch(ex.source, ex.spec, ex.timesteps, cfg.probe)
    ex.ref = parity.torch_reference(ex.model, ex.x, ex.timesteps, near_eps=1e-5)
    ex.folded = parity.torch_reference(for_export(ex.model), ex.x, ex.timesteps)
    ex.near = parity.near_threshold(ex.ref)
    ex.deploy = ex.step_model = ex.c_model = ex.model
    return {"probe": source, "near_threshold": ex.near, "timesteps": ex.timesteps,
            "encoding": ex.spec.encoding, "sparsity": metadata.sparsity(ex.model)["total"],
            "passed": None}


# -- compact --------------------------------------------------------------------------------------

def compaction(ex: Export, cfg) -> dict:
    """Exact compaction (export/compact.py), proved on the probe. Two forms from the same ticket:
    ONNX keeps conv channels a multiple of ONNX_ALIGN (ORT's blocked convolutions), the C
    runtime gains from every removed unit; alignment changes which units go, so each is its own
    fixed point."""
    model, T = ex.model, ex.timesteps
    comp, why = compact(model, T, ex.spec.input_shape, align=ONNX_ALIGN)
    if comp is None:
        return {"compaction": {"applied": False, "reason": why}, "passed": None}
    c_comp, _ = compact(model, T, ex.spec.input_shape)
    proof, c_proof = compact_check(model, comp, ex.x), compact_check(model, c_comp, ex.x)
    for pr in (proof, c_proof):
        tol = COMPACT_TOLERANCE * max(1.0, pr["logit_scale"])
        if pr["spike_mismatches"] or pr["max_abs_logit_diff"] > tol:
            raise UserError(f"compaction changed the model on the probe batch "
                            f"({pr['spike_mismatches']} spike mismatches, max "
                            f"|Δlogit| {pr['max_abs_logit_diff']:.3g}): export "
                            "with --no-compact and report this")
    ex.c_model, ex.deploy = c_comp.model, comp.model
    ex.deploy.constant_spikes = comp.constant_spikes
    # a stream may outlast the T that per-step biases were computed for: the streaming graph
    # stays uncompacted then (documented in export/compact.py)
    ex.step_model = model if comp.step_biases else ex.deploy
    ex.extra_meta["edgeprune.compaction"] = json.dumps(
        [{k: l[k] for k in ("name", "shape_before", "shape_after", "step_bias")}
         for l in comp.layers])
    return {"compaction": {
        "applied": True, **comp.summary(), "check": proof, "align": ONNX_ALIGN,
        "streaming_model": "uncompacted (per-step biases)" if comp.step_biases else "compacted",
        "c": {"layers": c_comp.layers, "check": c_proof,
              "weights_after": c_comp.summary()["weights_after"]}}, "passed": True}


# -- ONNX -----------------------------------------------------------------------------------------

def _parity(ex: Export, name: str, got: dict) -> bool:
    """Record file `name`'s outputs on the probe and its parity; whether it passed: no spike
    mismatch that a near-threshold potential does not explain and, where its spikes are those
    of the folded network exactly, logits within PARITY_TOLERANCE of that network's or of the
    trained network's."""
    ex.runs[name] = got
    check = parity.compare(ex.ref, got, ex.near)
    vs_folded = parity.compare(ex.folded, got)
    check["spike_mismatches_vs_folded"] = vs_folded["spike_mismatches"]
    ex.checks[name] = check
    if check["spike_mismatches_unexplained"]:
        return False
    if vs_folded["spike_mismatches"]:
        return True  # a spike flipped at the threshold moves the logits by its weight
    # Within tolerance of the folded network, or of the trained one: a file whose outputs are
    # logits only cannot show a spike that folding's rounding flipped at the threshold, and ONNX
    # Runtime's folded arithmetic may land on the trained model's side of it (seen on the dense
    # digits model: |Δ| 0 against the trained network, 0.93 of 60 against torch's folded one).
    tol = PARITY_TOLERANCE * max(1.0, float(np.abs(ex.folded["logits"]).max()))
    return vs_folded["max_abs_diff"] <= tol or check["max_abs_diff"] <= tol


def _refuse(ex: Export, name: str) -> GateFailed:
    """A file that does not reproduce the model is no export: the stage fails (exit 1) and,
    raised inside the stage, stores nothing, so no later run (compress included) reuses it."""
    c = ex.checks[name]
    return GateFailed(f"{name} does not reproduce the model on the probe batch: "
                      f"{c['prediction_agreement']:.1%} same class, "
                      f"{c['spike_mismatches_unexplained']} unexplained spike mismatches, max "
                      f"|Δlogit| {c['max_abs_diff']:.3g}; nothing was stored (report this)")


def _judged(ex: Export, name: str, got: dict) -> bool:
    """_parity, where failing it fails the export."""
    if not _parity(ex, name, got):
        raise _refuse(ex, name)
    return True


def _run_file(ex: Export, name: str) -> dict:
    path, x = ex.folder / name, ex.x.numpy()
    if name == STEP:
        return parity.run_stream(parity.session(path), x, ex.timesteps, ex.spec.encoding,
                                 metadata.read(path)["edgeprune.states"])
    return parity.run_unrolled(parity.session(path), x)


def onnx_unrolled(ex: Export, cfg) -> dict:
    """model.onnx: T steps unrolled, of the compacted network where compaction applied."""
    check_options(timesteps=ex.timesteps, outputs=cfg.outputs, opset=cfg.opset)
    info = write_unrolled(ex.spec, ex.deploy, ex.folder, timesteps=ex.timesteps,
                          outputs=cfg.outputs, opset=cfg.opset, artifact_id=ex.source.id,
                          meta_model=ex.model, extra_meta=ex.extra_meta)
    ex.files[UNROLLED] = info
    ex.dense_unrolled = (ex.folder / UNROLLED).read_bytes()
    return {"opset": cfg.opset, "outputs": cfg.outputs,
            "passed": _judged(ex, UNROLLED, _run_file(ex, UNROLLED))}


def onnx_step(ex: Export, cfg) -> dict:
    """model.step.onnx: one step, the neuron state as inputs and outputs."""
    info = write_step(ex.spec, ex.step_model, ex.folder, timesteps=ex.timesteps, opset=cfg.opset,
                      artifact_id=ex.source.id, meta_model=ex.model,
                      extra_meta=ex.extra_meta if ex.step_model is ex.deploy else {})
    ex.files[STEP] = info
    return {"states": len(info["states"]), "passed": _judged(ex, STEP, _run_file(ex, STEP))}


def sparse_storage(ex: Export, cfg) -> dict:
    """Both ONNX files with their mostly-zero weights as sparse initializers; checked by
    running each again: ONNX Runtime densifies them at load, so every output must be the same
    bit for bit; a difference fails the export."""
    for name in (UNROLLED, STEP):
        t0 = time.perf_counter()
        ex.files[name].update(store_sparse(ex.folder / name))
        ex.files[name]["seconds"] += time.perf_counter() - t0
        again = _run_file(ex, name)
        if not all(np.array_equal(again[k], v) for k, v in ex.runs[name].items()):
            raise GateFailed(f"{name} with sparse initializers computes otherwise than without "
                             "them on the probe batch; nothing was stored (report this, or "
                             "export with --no-sparse-initializers)")
    return {"passed": True}


def int8(ex: Export, cfg) -> dict:
    """model.int8.onnx: per-channel int8 weights of the dense model.onnx; its parity is recorded
    for validation, whose gates keep or drop it."""
    t0 = time.perf_counter()
    info = quantize_weights(onnx.load_from_string(ex.dense_unrolled), ex.folder / INT8,
                            sparse=cfg.sparse_initializers)
    ex.files[INT8] = {"seconds": time.perf_counter() - t0, "nodes": None, **info}
    _parity(ex, INT8, _run_file(ex, INT8))  # recorded, not judged here
    return {"int8": {**info, "parity": ex.checks[INT8], "asked": bool(cfg.int8)},
            "passed": None}


# -- C, NIR ---------------------------------------------------------------------------------------

def c_runtime(ex: Export, cfg) -> dict:
    """The event-driven sparse C runtime's sources, when it can express the model (required
    with --c-runtime); compiled and checked by validation, where a compiler is."""
    try:
        program = program_from_model(ex.c_model, ex.timesteps, ex.spec.input_shape)
    except UserError as e:
        if cfg.c_runtime:
            raise
        return {"c_runtime": f"skipped: {e}", "c": None, "passed": None}
    choose_dense_rows(program, cfg.c_dense_rows)
    s = write_c(program, ex.folder)
    return {"c_runtime": "written", "passed": None, "c": {
        "files": sorted(s["files"]), "weight_bytes": s["weight_bytes"],
        "state_bytes": s["state_bytes"], "buffer_bytes": s["buffer_bytes"],
        "layers": [{k: l[k] for k in ("name", "kind", "in_shape", "out_shape", "weights",
                                      "nonzero", "mode", "bytes", "index_type") if k in l}
                   for l in s["layers"]]}}


def nir(ex: Export, cfg) -> dict:
    """model.nir, of the uncompacted model, when NIR can express it (required with --nir);
    read back and simulated: the file is what ships."""
    t0 = time.perf_counter()
    path = ex.folder / NIR_FILE
    try:
        graph = write_nir(ex.model, ex.spec.input_shape, ex.timesteps, path)
    except UserError as e:
        if cfg.nir or isinstance(e, DiskFull):  # a full disk is no reason to skip NIR
            raise
        return {"nir": f"skipped: {e}", "passed": None}
    import nir as nirlib

    got = simulate(nirlib.read(str(path)), ex.x.numpy(), ex.timesteps,
                   input_is_sequence=ex.spec.encoding == "poisson")
    ex.files[NIR_FILE] = {"seconds": time.perf_counter() - t0, "nodes": len(graph.nodes),
                          "bytes": path.stat().st_size}
    _parity(ex, NIR_FILE, got)
    # NIR holds normalization as a 1x1 conv, which rounds otherwise than the folded network:
    # judged by the near-threshold rule alone. Required, a failure fails the export; asked for
    # only where possible, the file goes and the reason stays
    if ex.checks[NIR_FILE]["spike_mismatches_unexplained"]:
        if cfg.nir:
            raise _refuse(ex, NIR_FILE)
        path.unlink()
        c = ex.checks.pop(NIR_FILE)
        del ex.files[NIR_FILE], ex.runs[NIR_FILE]
        return {"nir": f"skipped: its parity check failed ({c['prediction_agreement']:.1%} "
                       f"same class, {c['spike_mismatches_unexplained']} unexplained spike "
                       "mismatches)", "passed": None}
    return {"nir": "written", "passed": True}


# -- the cost model -------------------------------------------------------------------------------

COST_FILE = "cost.json"


def cost(ex: Export, cfg) -> dict:
    """cost.json: SynOps (ACs, MACs, effective), activation and connection sparsity and an energy
    estimate of the model, per layer and in total, per inference on the probe batch
    (export/cost.py); the totals go into the metrics, for validation to report."""
    counted = costlib.count(ex.model, ex.x, ex.timesteps)
    (ex.folder / COST_FILE).write_text(json.dumps(counted, indent=2, sort_keys=True) + "\n")
    return {"cost": {"total": counted["total"], "energy": counted["energy"],
                     "file": COST_FILE}, "passed": None}


# -- the list -------------------------------------------------------------------------------------

PASSES: tuple[Pass, ...] = (
    Pass("prepare", prepare, ("probe",)),
    Pass("cost", cost),
    Pass("compact", compaction, ("compact",), lambda cfg: cfg.compact, {"compaction": None}),
    Pass("onnx", onnx_unrolled, ("outputs", "opset")),
    Pass("onnx-step", onnx_step, ("opset",)),
    Pass("sparse", sparse_storage, ("sparse_initializers",),
         lambda cfg: cfg.sparse_initializers),
    Pass("int8", int8, ("int8", "sparse_initializers"), lambda cfg: cfg.int8 is not False,
         {"int8": None}),
    Pass("c", c_runtime, ("c_runtime", "c_dense_rows"), lambda cfg: cfg.c_runtime is not False,
         {"c_runtime": "not asked (--no-c-runtime)", "c": None}),
    Pass("nir", nir, ("nir",), lambda cfg: cfg.nir is not False,
         {"nir": "not asked (--no-nir)"}),
)


def summary(ex: Export, metrics: dict) -> dict:
    """The stage's metrics: what the passes returned, plus per-file facts and the parity of the
    exact files (int8 is judged by validation) in one place."""
    files, checks = ex.files, ex.checks
    exact = {k: v for k, v in checks.items() if k != INT8}
    return {
        **metrics,
        "export_seconds": {k: v["seconds"] for k, v in files.items()},
        "nodes": {k: v["nodes"] for k, v in files.items()},
        "bytes": {k: v["bytes"] for k, v in files.items()},
        "bytes_dense": {k: v["bytes_dense"] for k, v in files.items() if "bytes_dense" in v},
        "bytes_sparse": {k: v["bytes_sparse"] for k, v in files.items() if "bytes_sparse" in v},
        "parity": checks,
        "max_abs_diff": max(c["max_abs_diff"] for c in exact.values()),
        "spike_mismatches": sum(c["spike_mismatches"] for c in exact.values()),
        "spike_mismatches_unexplained": sum(c["spike_mismatches_unexplained"]
                                            for c in exact.values()),
        "spike_mismatches_vs_folded": sum(c["spike_mismatches_vs_folded"]
                                          for c in exact.values()),
        "prediction_agreement": min(c["prediction_agreement"] for c in exact.values()),
    }
