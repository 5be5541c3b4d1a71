"""Write both ONNX files of a model: unrolled and streaming, with metadata, optionally sparse,
each checked with onnx.checker. The one entry point the stage, tests and benchmarks share."""
from __future__ import annotations

import time
from pathlib import Path

import onnx
import torch

from edgeprune.errors import UserError
from edgeprune.models import ModelSpec

from . import metadata
from .onnx_step import export_step
from .onnx_unrolled import OUTPUT_CHOICES, export_unrolled, name_output_dims, node_count
from .sparse import to_sparse_initializers

UNROLLED, STEP = "model.onnx", "model.step.onnx"


def _finish(path: Path, meta: dict, dims: dict, sparse: bool) -> dict:
    """Add metadata (and sparse initializers), check, save; return sizes and node count."""
    proto = onnx.load(str(path))
    name_output_dims(proto, dims)
    metadata.attach(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    info = {"nodes": node_count(proto), "bytes_dense": path.stat().st_size,
            "opset": max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))}
    if sparse:
        conv = to_sparse_initializers(proto)
        # Structure only: ONNX shape inference does not type a sparse tensor feeding Conv/Gemm
        # directly ("unsupported type: sparse_tensor"), although ONNX Runtime densifies and
        # runs it; the dense graph above passed the full check.
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
        info.update(bytes_sparse=path.stat().st_size, sparse_tensors=len(conv["converted"]))
    info["bytes"] = path.stat().st_size
    return info


def write_onnx(spec: ModelSpec, model: torch.nn.Module, folder: Path, *, timesteps: int,
               outputs: str = "logits", opset: int = 17, sparse: bool = False,
               artifact_id: str | None = None, step: bool = True) -> dict:
    """Write `model.onnx` (and `model.step.onnx` unless step=False) into `folder`.
    Returns {"model.onnx": {seconds, nodes, bytes, bytes_dense[, bytes_sparse], opset, outputs},
             "model.step.onnx": {..., states}}."""
    if outputs not in OUTPUT_CHOICES:
        raise UserError(f"unknown --outputs {outputs!r}: choose {' or '.join(OUTPUT_CHOICES)}")
    if timesteps < 1:
        raise UserError(f"timesteps must be at least 1, got {timesteps}")
    if not 13 <= opset <= 20:  # 13: ReduceSum with axes input; 20: newest the TorchScript exporter knows
        raise UserError(f"--opset {opset} is not supported: choose 13 to 20")
    folder = Path(folder)
    model = model.eval()
    k = spec.num_classes
    result = {}

    path = folder / UNROLLED
    t0 = time.perf_counter()
    info = export_unrolled(model, spec.input_shape, timesteps, path, outputs=outputs, opset=opset)
    dims = {"logits": ["batch", k], "step_logits": [timesteps, "batch", k]}
    meta = metadata.build(spec, model, kind="unrolled", timesteps=timesteps,
                          artifact_id=artifact_id, outputs=info["outputs"])
    info.update(_finish(path, meta, dims, sparse))
    info["seconds"] = time.perf_counter() - t0
    result[UNROLLED] = info

    if step:
        path = folder / STEP
        t0 = time.perf_counter()
        info = export_step(model, spec.input_shape, path, opset=opset)
        meta = metadata.build(spec, model, kind="step", timesteps=timesteps,
                              artifact_id=artifact_id,
                              outputs=["logits", *[s["output"] for s in info["states"]]],
                              states=info["states"])
        info.update(_finish(path, meta, {"logits": ["batch", k]}, sparse))
        info["seconds"] = time.perf_counter() - t0
        result[STEP] = info
    return result
