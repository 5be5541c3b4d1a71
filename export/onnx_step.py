"""The streaming ONNX graph: one timestep, every neuron state an explicit input and output
(`model.step.onnx`). Its size does not depend on T; a device runs it once per timestep.

Graph interface:
  input   `input`          direct: float32 (batch, C, H, W) raw [0,1] image, fed at every step;
                           poisson: float32 (batch, C, H, W) this step's input spikes.
  input   `state_in.<i>`   float32 (batch, *shape): membrane potential of state i before the step
  output  `logits`         (batch, classes): this step's logits (sum them over steps to predict)
  output  `state_out.<i>`  the state after the step; feed it back as `state_in.<i>` next step.
State i belongs to LIF layer `layer` (module name), or is `<layer>.<part>` of a layer whose state
is several tensors, named by its `state_names` (LI and current-based LIF: `v`, `i`; snnTorch's
Synaptic: `syn`, `mem`; a residual block: `lif1`, `lif2`); initial value 0 for every state. The list
(`input`, `output`, `layer`, `shape` without batch, `init`) goes to the metadata key
`edgeprune.states`.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch
from torch import nn

from edgeprune.errors import UserError
from edgeprune.models import SNN, is_stateful

from .prepare import for_export


def state_layout(model: SNN, input_shape) -> list[dict]:
    """One entry per state tensor, in the order of the graph's state inputs."""
    x = torch.zeros((1, *input_shape))
    with torch.no_grad():
        states = model.initial_state(x)
    layout = []
    for i, (child, s) in enumerate(zip(model.body, states)):
        if s is None:
            continue
        if isinstance(s, torch.Tensor):
            parts = [(f"body.{i}", s)]
        elif len(getattr(child, "state_names", ())) == len(s):
            # several tensors, named by the layer (a block's two LIFs, an LI's v and i)
            parts = [(f"body.{i}.{n}", t) for n, t in zip(child.state_names, s)]
        else:  # a state that is not one tensor or named parts would be mis-flattened
            raise UserError(f"cannot export the streaming model: stateful layer "
                            f"{type(child).__name__} has no known state layout")
        for layer, t in parts:
            k = len(layout)
            layout.append({"input": f"state_in.{k}", "output": f"state_out.{k}",
                           "layer": layer, "shape": list(t.shape[1:]), "init": 0.0})
    return layout


class Step(nn.Module):
    """(input, *states) -> (logits, *new states) for one timestep, states flattened in the order
    of `state_layout`."""

    def __init__(self, model: SNN):
        super().__init__()
        self.model = model
        self.stateful = [is_stateful(m) for m in model.body]
        self.arity = [len(getattr(m, "state_names", "x")) for m in model.body]

    def forward(self, x: torch.Tensor, *flat: torch.Tensor):
        it, states = iter(flat), []
        for stateful, n in zip(self.stateful, self.arity):
            if not stateful:
                states.append(None)
            elif n == 1:
                states.append(next(it))
            else:
                states.append(tuple(next(it) for _ in range(n)))
        logits, new = self.model.step(x, states)
        out = []
        for s in new:
            if isinstance(s, torch.Tensor):
                out.append(s)
            elif s is not None:
                out.extend(s)
        return (logits, *out)


def export_step(model: SNN, input_shape, path: Path, *, opset: int = 17) -> dict:
    """Write the one-step graph (no metadata yet). Returns seconds and the state layout."""
    prepared = for_export(model)
    layout = state_layout(prepared, input_shape)
    g = torch.Generator().manual_seed(0)
    # Distinct example tensors for every state: a shared zeros tensor lets an exporter merge the
    # inputs and ignore them (NOTES.md).
    x = torch.rand((2, *input_shape), generator=g)
    states = [torch.rand((2, *s["shape"]), generator=g) for s in layout]
    names_in = ["input", *[s["input"] for s in layout]]
    names_out = ["logits", *[s["output"] for s in layout]]
    dynamic = {n: {0: "batch"} for n in names_in + names_out}
    t0 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        # Norse's Heaviside traces its threshold as a constant, which is what we want.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(Step(prepared).eval(), (x, *states), str(path), dynamo=False,
                          input_names=names_in, output_names=names_out, dynamic_axes=dynamic,
                          opset_version=opset, do_constant_folding=True)
    return {"seconds": time.perf_counter() - t0, "states": layout}
