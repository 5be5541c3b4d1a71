"""The `edgeprune.*` metadata_props of exported ONNX files.

The validator (targets/) reads exactly these keys through onnxruntime's
`get_modelmeta().custom_metadata_map`; do not rename them. Values are strings; structured
values are JSON.
"""
from __future__ import annotations

import json

import onnx
import torch

import edgeprune
from edgeprune.models import ModelSpec, prunable

KEYS = ("edgeprune.version", "edgeprune.artifact_id", "edgeprune.timesteps",
        "edgeprune.encoding", "edgeprune.neuron", "edgeprune.sparsity",
        "edgeprune.class_names", "edgeprune.normalization", "edgeprune.input_shape",
        "edgeprune.kind")


def sparsity(model: torch.nn.Module) -> dict:
    """Fraction of exactly-zero conv/linear weights: total and per layer (parameter name)."""
    layers, zeros, total = {}, 0, 0
    for name, w in prunable(model).items():
        z = int((w == 0).sum())
        layers[name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    return {"total": zeros / total if total else 0.0, "layers": layers}


def neuron_facts(spec: ModelSpec) -> dict:
    """The neuron parameters: the model's LIF, and for an imported model every neuron layer's
    kind and parameters ("layers": the body's neuron layers in order)."""
    facts = {**spec.neuron.to_dict(), "dt": 1.0, "spike": "v > v_th (Heaviside, no surrogate)"}
    if spec.arch == "sequential":
        from edgeprune import layers

        facts["layers"] = [d for d in spec.layers if layers.KINDS[d["type"]].neuron]
    return facts


def build(spec: ModelSpec, model: torch.nn.Module, *, kind: str, timesteps: int,
          artifact_id: str | None, outputs: list[str], states: list[dict] | None = None) -> dict:
    """The metadata of one exported file. `kind` is "unrolled" or "step".

    `edgeprune.input_shape` is the image shape (C, H, W) of the model; the graph input adds the
    batch axis in front, and for poisson encoding of the unrolled graph also T before the batch:
    `edgeprune.input_layout` says which ("NCHW" or "TNCHW").
    """
    layout = "TNCHW" if spec.encoding == "poisson" and kind == "unrolled" else "NCHW"
    meta = {
        "edgeprune.version": edgeprune.__version__,
        "edgeprune.artifact_id": artifact_id or "",
        "edgeprune.timesteps": str(timesteps),
        "edgeprune.encoding": spec.encoding,
        "edgeprune.neuron": json.dumps(neuron_facts(spec)),
        "edgeprune.sparsity": json.dumps(sparsity(model)),
        "edgeprune.class_names": json.dumps(list(spec.class_names)
                                            or [str(i) for i in range(spec.num_classes)]),
        "edgeprune.normalization": json.dumps({"mean": list(spec.mean), "std": list(spec.std),
                                               "applied_in_graph": spec.encoding == "direct"}),
        "edgeprune.input_shape": json.dumps(list(spec.input_shape)),
        "edgeprune.kind": kind,
        "edgeprune.input_layout": layout,
        "edgeprune.outputs": json.dumps(outputs),
        "edgeprune.arch": spec.arch,
    }
    if states is not None:
        meta["edgeprune.states"] = json.dumps(states)
    return meta


def attach(proto: onnx.ModelProto, meta: dict) -> None:
    onnx.helper.set_model_props(proto, {k: str(v) for k, v in meta.items()})


def read(path) -> dict:
    """The edgeprune.* metadata of an ONNX file, JSON values decoded."""
    proto = onnx.load(str(path), load_external_data=False)
    out = {}
    for p in proto.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except json.JSONDecodeError:
            out[p.key] = p.value
    return out
