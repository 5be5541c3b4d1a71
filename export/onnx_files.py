"""Write both ONNX files of a model: unrolled and streaming, with metadata, optionally sparse,
each checked with onnx.checker. The export stage's passes (export/passes.py) call the steps one
by one; `write_onnx` runs them together for tests and benchmarks."""
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

UNROLLED, STEP, INT8 = "model.onnx", "model.step.onnx", "model.int8.onnx"


def compact_names(proto: onnx.ModelProto) -> dict:
    """Make the graph's own bytes small (in place): identical Constant nodes merged, node names
    and doc strings dropped, internal tensor and initializer names shortened to hex counters.
    The graph's inputs and outputs keep their names (they are the interface); nothing computed
    changes. The exporter's names ('/model/body/body.0/Concat_3_output_0') were a third of a
    97%-sparse ticket's file. Returns counts."""
    g = proto.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    seen: dict[bytes, str] = {}
    alias: dict[str, str] = {}
    nodes = []
    for n in g.node:
        n.input[:] = [alias.get(x, x) for x in n.input]
        if n.op_type == "Constant" and len(n.output) == 1 and n.output[0] not in keep:
            key = b"".join(a.SerializeToString() for a in n.attribute)
            if key in seen:
                alias[n.output[0]] = seen[key]
                continue
            seen[key] = n.output[0]
        nodes.append(n)
    merged = len(g.node) - len(nodes)
    del g.node[:]
    g.node.extend(nodes)
    names: dict[str, str] = {}

    def short(x: str) -> str:
        if not x or x in keep:
            return x
        if x not in names:
            names[x] = format(len(names), "x")
        return names[x]

    for n in g.node:
        n.name, n.doc_string = "", ""
        n.input[:] = [short(x) for x in n.input]
        n.output[:] = [short(x) for x in n.output]
    for i in g.initializer:
        i.name = short(i.name)
    for v in g.value_info:
        v.name = short(v.name)
    g.doc_string = ""
    return {"constants_merged": merged, "names_shortened": len(names)}


def check_options(*, timesteps: int, outputs: str, opset: int) -> None:
    if outputs not in OUTPUT_CHOICES:
        raise UserError(f"unknown --outputs {outputs!r}: choose {' or '.join(OUTPUT_CHOICES)}")
    if timesteps < 1:
        raise UserError(f"timesteps must be at least 1, got {timesteps}")
    if not 13 <= opset <= 20:  # 13: ReduceSum with axes input; 20: newest the TorchScript exporter knows
        raise UserError(f"--opset {opset} is not supported: choose 13 to 20")


def _finish(path: Path, meta: dict, dims: dict) -> dict:
    """Add metadata, check, save; return sizes and node count."""
    proto = onnx.load(str(path))
    name_output_dims(proto, dims)
    compact_names(proto)
    metadata.attach(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    size = path.stat().st_size
    return {"nodes": node_count(proto), "bytes_dense": size, "bytes": size,
            "opset": max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))}


def write_unrolled(spec: ModelSpec, model: torch.nn.Module, folder: Path, *, timesteps: int,
                   outputs: str, opset: int, artifact_id: str | None,
                   meta_model: torch.nn.Module, extra_meta: dict) -> dict:
    """`model.onnx`: T steps unrolled, metadata from `meta_model` plus `extra_meta`, dense
    weights. Returns {seconds, outputs, nodes, bytes, bytes_dense, opset}."""
    path = Path(folder) / UNROLLED
    t0 = time.perf_counter()
    info = export_unrolled(model, spec.input_shape, timesteps, path, outputs=outputs, opset=opset)
    k = spec.num_classes
    meta = metadata.build(spec, meta_model, kind="unrolled", timesteps=timesteps,
                          artifact_id=artifact_id, outputs=info["outputs"])
    meta.update(extra_meta)
    info.update(_finish(path, meta, {"logits": ["batch", k],
                                     "step_logits": [timesteps, "batch", k]}))
    info["seconds"] = time.perf_counter() - t0
    return info


def write_step(spec: ModelSpec, model: torch.nn.Module, folder: Path, *, timesteps: int,
               opset: int, artifact_id: str | None, meta_model: torch.nn.Module,
               extra_meta: dict) -> dict:
    """`model.step.onnx`: one step, the neuron state as inputs and outputs, dense weights.
    Returns {seconds, states, nodes, bytes, bytes_dense, opset}."""
    path = Path(folder) / STEP
    t0 = time.perf_counter()
    info = export_step(model, spec.input_shape, path, opset=opset)
    meta = metadata.build(spec, meta_model, kind="step", timesteps=timesteps,
                          artifact_id=artifact_id,
                          outputs=["logits", *[s["output"] for s in info["states"]]],
                          states=info["states"])
    meta.update(extra_meta)
    info.update(_finish(path, meta, {"logits": ["batch", spec.num_classes]}))
    info["seconds"] = time.perf_counter() - t0
    return info


def store_sparse(path: Path) -> dict:
    """Rewrite an ONNX file with its mostly-zero weights as sparse initializers.
    Returns {bytes_sparse, sparse_tensors, bytes}."""
    proto = onnx.load(str(path))
    conv = to_sparse_initializers(proto)
    # Structure only: ONNX shape inference does not type a sparse tensor feeding Conv/Gemm
    # directly ("unsupported type: sparse_tensor"), although ONNX Runtime densifies and
    # runs it; the dense graph passed the full check.
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    size = Path(path).stat().st_size
    return {"bytes_sparse": size, "sparse_tensors": len(conv["converted"]), "bytes": size}


def write_onnx(spec: ModelSpec, model: torch.nn.Module, folder: Path, *, timesteps: int,
               outputs: str = "logits", opset: int = 17, sparse: bool = False,
               artifact_id: str | None = None, step: bool = True,
               meta_model: torch.nn.Module | None = None) -> dict:
    """Write `model.onnx` (and `model.step.onnx` unless step=False) into `folder`, as the
    export stage's passes do. `meta_model`: the model whose sparsity the metadata records (the
    ticket, when `model` is its compacted form).
    Returns {"model.onnx": {seconds, nodes, bytes, bytes_dense[, bytes_sparse], opset, outputs},
             "model.step.onnx": {..., states}}."""
    check_options(timesteps=timesteps, outputs=outputs, opset=opset)
    folder = Path(folder)
    model = model.eval()
    meta_model = meta_model if meta_model is not None else model
    result = {UNROLLED: write_unrolled(spec, model, folder, timesteps=timesteps, outputs=outputs,
                                       opset=opset, artifact_id=artifact_id,
                                       meta_model=meta_model, extra_meta={})}
    if step:
        result[STEP] = write_step(spec, model, folder, timesteps=timesteps, opset=opset,
                                  artifact_id=artifact_id, meta_model=meta_model, extra_meta={})
    if sparse:
        for name, info in result.items():
            info.update(store_sparse(folder / name))
    return result
