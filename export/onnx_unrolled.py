"""The unrolled ONNX graph: T timesteps in one static graph (`model.onnx`).

Graph interface (T is baked in and recorded in the metadata; a different T needs a new export):
  input   `input`         direct encoding: float32 (batch, C, H, W) raw [0, 1] pixels (the
                          per-channel normalization is inside the graph);
                          poisson encoding: float32 (T, batch, C, H, W) input spikes.
  output  `logits`        (batch, classes): per-step logits summed over the T steps
                          (argmax = the model's prediction).
  with outputs="all" also
  output  `step_logits`   (T, batch, classes)
  output  `spikes.<name>` (batch,): per-sample total spike count of LIF layer <name> (its module
                          name in the PyTorch model, e.g. `body.4`), summed over T and neurons.
The graph follows the SNN layer protocol: stateless layers run once on all T steps folded into
the batch, the LIF loop is unrolled, and with direct encoding the stem runs once.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from edgeprune.models import SNN, spiking_layers

from .prepare import for_export

OUTPUT_CHOICES = ("logits", "all")


def run_snn(model: SNN, x: torch.Tensor, timesteps: int) -> torch.Tensor:
    """Per-step logits (T, B, classes) of `model` on images (direct) or input spikes (poisson)."""
    return model(x, timesteps) if model.encoding == "direct" else model.forward_spikes(x)


class Unrolled(nn.Module):
    """Wraps a prepared SNN: images (or input spikes) -> summed logits [, step logits, spikes]."""

    def __init__(self, model: SNN, timesteps: int, outputs: str = "logits"):
        super().__init__()
        self.model, self.timesteps, self.outputs = model, timesteps, outputs
        self.lif_names = list(spiking_layers(model))
        self._counts: dict[str, torch.Tensor] | None = None
        if outputs == "all":  # forward hooks record each LIF layer's output sequence (T, B, ...)
            for name, lif in spiking_layers(model).items():
                lif.register_forward_hook(self._recorder(name))

    def _recorder(self, name: str):
        def record(_m, _inp, out):
            if self._counts is not None:
                # + the fixed spikes of dead neurons that compaction removed (export/compact.py)
                self._counts[name] = out.transpose(0, 1).flatten(1).sum(1) + \
                    getattr(self.model, "constant_spikes", {}).get(name, 0.0)
        return record

    def forward(self, x: torch.Tensor):
        self._counts = {}
        try:
            steps = run_snn(self.model, x, self.timesteps)
            counts = self._counts
        finally:
            self._counts = None
        if self.outputs == "logits":
            return steps.sum(0)
        return (steps.sum(0), steps, *[counts[n] for n in self.lif_names])

    def output_names(self) -> list[str]:
        if self.outputs == "logits":
            return ["logits"]
        return ["logits", "step_logits", *[f"spikes.{n}" for n in self.lif_names]]


def example_input(encoding: str, input_shape, timesteps: int, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if encoding == "direct":
        return torch.rand((batch, *input_shape), generator=g)
    return (torch.rand((timesteps, batch, *input_shape), generator=g) < 0.5).float()


def export_unrolled(model: SNN, input_shape, timesteps: int, path: Path, *,
                    outputs: str = "logits", opset: int = 17) -> dict:
    """Trace `model` unrolled over `timesteps` and write a plain (metadata-less) ONNX file.
    Returns facts about the export: seconds, output names."""
    wrapper = Unrolled(for_export(model), timesteps, outputs).eval()
    x = example_input(model.encoding, input_shape, timesteps)
    batch_axis = 0 if model.encoding == "direct" else 1
    names = wrapper.output_names()
    dynamic = {"input": {batch_axis: "batch"}, "logits": {0: "batch"}}
    if outputs == "all":
        dynamic["step_logits"] = {1: "batch"}
        dynamic.update({n: {0: "batch"} for n in names[2:]})
    t0 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        # Norse's Heaviside traces its threshold as a constant, which is what we want.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The TorchScript exporter: an unrolled trace is what we want, and it exports in a
        # fraction of the dynamo exporter's time (NOTES.md).
        torch.onnx.export(wrapper, (x,), str(path), dynamo=False, input_names=["input"],
                          output_names=names, dynamic_axes=dynamic, opset_version=opset,
                          do_constant_folding=True)
    return {"seconds": time.perf_counter() - t0, "outputs": names}


def node_count(proto: onnx.ModelProto) -> int:
    return len(proto.graph.node)


def name_output_dims(proto: onnx.ModelProto, dims: dict[str, list]) -> None:
    """Replace the exporter's generated dim names (e.g. 'ReduceSumlogits_dim_1') with the known
    sizes (int) or names (str), so a reader of the graph sees (batch, 10), not placeholders."""
    for out in proto.graph.output:
        if out.name not in dims:
            continue
        shape = out.type.tensor_type.shape
        for d, want in zip(shape.dim, dims[out.name]):
            if isinstance(want, str):
                d.dim_param = want
            else:
                d.dim_value = int(want)
