"""A small numpy reference interpreter for the NIR graphs edgeprune writes.

It exists to prove a `.nir` file computes what the PyTorch model does, independently of any
NIR backend: it reads only the graph (nodes, edges, metadata). Semantics:
- every timestep, nodes run once in topological order; a node's input is the sum of the outputs
  of the nodes with an edge into it (in edge order), with no delay along edges;
- LIF is NIR's equation integrated by forward Euler with the graph's `dt` (default 1):
      v' = v + (dt/tau)·((v_leak − v) + r·I);  z = [v' > v_threshold];  v ← v_reset where z
- LI (leaky integrator, no spikes) the same way: v' = v + (dt/tau)·((v_leak − v) + r·I); its
  output is v';
- arithmetic is float32, like the PyTorch model, so spikes can be compared exactly.
- CubaLIF the same way, the current first: I' = I + (dt/tau_syn)·(w_in·S − I), then the
  membrane from I'; IF: v' = v + dt·r·I; Integrator: v' = v + dt·r·I, output v';
- a neuron node whose metadata holds an edgeprune description ("edgeprune.layer", written by
  export/nir_graph.py) runs that description exactly: its kind's step function
  (edgeprune.neuron_kinds), the one the PyTorch module runs;
Supported nodes: Input, Output, Conv1d, Conv2d, Affine, Linear, SumPool2d, AvgPool2d, Scale,
Flatten, Threshold, LIF, CubaLIF, IF, LI, Integrator.
"""
from __future__ import annotations

import numpy as np
import nir
from numpy.lib.stride_tricks import sliding_window_view

from edgeprune.neuron_kinds import KINDS, heaviside

F32 = np.float32


def _pair(v) -> tuple[int, int]:
    """A 2-d pooling/conv parameter given as one number (SpikingJelly writes scalars) or two."""
    a = np.ravel(np.asarray(v))
    return (int(a[0]), int(a[0])) if a.size == 1 else (int(a[0]), int(a[1]))


def _windows(x: np.ndarray, kernel, stride, padding, dilation=(1, 1)) -> np.ndarray:
    """(B, C, H, W) -> (B, C, OH, OW, kh, kw) views of the zero-padded input."""
    kernel, stride, padding, dilation = map(_pair, (kernel, stride, padding, dilation))
    ph, pw = int(padding[0]), int(padding[1])
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = int(kernel[0]), int(kernel[1])
    dh, dw = int(dilation[0]), int(dilation[1])
    win = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[..., ::dh, ::dw]
    return win[:, :, ::int(stride[0]), ::int(stride[1])]


def conv2d(x: np.ndarray, node: nir.Conv2d) -> np.ndarray:
    w = node.weight.astype(F32)
    if isinstance(node.padding, str):
        raise ValueError("string padding is not supported by this interpreter")
    win = _windows(x, w.shape[2:], node.stride, node.padding, node.dilation)
    g = int(node.groups)
    cin, cout = w.shape[1], w.shape[0]
    outs = []
    for k in range(g):  # grouped conv: each group sees its own slice of channels
        wi = w[k * cout // g:(k + 1) * cout // g]
        xi = win[:, k * cin:(k + 1) * cin]
        outs.append(np.einsum("bchwij,ocij->bohw", xi, wi, dtype=F32))
    y = np.concatenate(outs, axis=1)
    return y + node.bias.astype(F32).reshape(1, -1, 1, 1)


def sum_pool(x: np.ndarray, node: nir.SumPool2d) -> np.ndarray:
    win = _windows(x, node.kernel_size, node.stride, node.padding)
    return win.sum(axis=(-2, -1), dtype=F32)


def flatten(x: np.ndarray, node: nir.Flatten) -> np.ndarray:
    start = node.start_dim + 1  # NIR dims exclude the batch, ours lead with it
    end = x.ndim if node.end_dim == -1 else node.end_dim + 2
    return x.reshape(*x.shape[:start], -1, *x.shape[end:])


def _order(graph: nir.NIRGraph) -> list[str]:
    incoming = {n: [s for s, d in graph.edges if d == n] for n in graph.nodes}
    done, order = set(), []
    while len(order) < len(graph.nodes):
        ready = [n for n in graph.nodes if n not in done and all(s in done for s in incoming[n])]
        if not ready:
            raise ValueError("the NIR graph has a cycle; this interpreter runs feed-forward graphs")
        for n in ready:
            done.add(n)
            order.append(n)
    return order


def _lif_step(node: nir.LIF, inp, v, dt):
    leak = (dt / node.tau).astype(F32)  # dt/tau in float64, rounded once
    vd = v + leak * ((node.v_leak.astype(F32) - v) + node.r.astype(F32) * inp)
    z = vd > node.v_threshold.astype(F32)
    return z.astype(F32), np.where(z, node.v_reset.astype(F32), vd).astype(F32)


def _li_step(node: nir.LI, inp, v, dt):
    leak = (dt / node.tau).astype(F32)
    v = (v + leak * ((node.v_leak.astype(F32) - v) + node.r.astype(F32) * inp)).astype(F32)
    return v, v


def _cuba_step(node: nir.CubaLIF, inp, state, dt):
    """Forward Euler, the current first: I' = I + (dt/tau_syn)·(w_in·S − I);
    v' = v + (dt/tau_mem)·((v_leak − v) + r·I'); spike and reset in the same step."""
    i, v = state
    bs = (dt / node.tau_syn).astype(F32)
    bm = (dt / node.tau_mem).astype(F32)
    i = (i + bs * (node.w_in.astype(F32) * inp - i)).astype(F32)
    vd = v + bm * ((node.v_leak.astype(F32) - v) + node.r.astype(F32) * i)
    z = vd > node.v_threshold.astype(F32)
    return z.astype(F32), (i, np.where(z, node.v_reset.astype(F32), vd).astype(F32))


def _if_step(node: nir.IF, inp, v, dt):
    vd = (v + F32(dt) * node.r.astype(F32) * inp).astype(F32)
    z = vd > node.v_threshold.astype(F32)
    reset = node.v_reset.astype(F32) if node.v_reset is not None else F32(0)
    return z.astype(F32), np.where(z, reset, vd).astype(F32)


def _integrator_step(node: nir.I, inp, v, dt):
    v = (v + F32(dt) * node.r.astype(F32) * inp).astype(F32)
    return v, v


def avg_pool(x: np.ndarray, node: nir.AvgPool2d) -> np.ndarray:
    win = _windows(x, node.kernel_size, node.stride, node.padding)
    kh, kw = _pair(node.kernel_size)
    k = kh * kw  # count_include_pad: every window divides by its full area
    return (win.sum(axis=(-2, -1), dtype=F32) / F32(k)).astype(F32)


def conv1d(x: np.ndarray, node: nir.Conv1d) -> np.ndarray:
    class _As2d:  # (B, C, L) as (B, C, 1, L) through the 2-d convolution
        weight = node.weight[:, :, None, :]
        stride = (1, int(np.ravel(node.stride)[0]))
        padding = (0, int(np.ravel(node.padding)[0]))
        dilation = (1, int(np.ravel(node.dilation)[0]))
        groups = node.groups
        bias = node.bias
    return conv2d(x[:, :, None, :], _As2d)[:, :, 0, :]


# node class -> f(input, node): nodes without state
STATELESS = {
    nir.Output: lambda x, node: x,
    nir.Conv1d: conv1d,
    nir.Conv2d: conv2d,
    nir.Affine: lambda x, node: x @ node.weight.astype(F32).T + node.bias.astype(F32),
    nir.Linear: lambda x, node: x @ node.weight.astype(F32).T,
    nir.SumPool2d: sum_pool,
    nir.AvgPool2d: avg_pool,
    nir.Scale: lambda x, node: x * node.scale.astype(F32),
    nir.Flatten: flatten,
    nir.Threshold: lambda x, node: (x > node.threshold.astype(F32)).astype(F32),
}
# node class -> (initial state of the node for a batch, step(node, input, state, dt) ->
# (output, state)): NIR's equations
STATEFUL = {
    nir.LIF: (lambda node, b: np.zeros((b, *node.v_reset.shape), F32), _lif_step),
    nir.LI: (lambda node, b: np.zeros((b, *node.tau.shape), F32), _li_step),
    nir.CubaLIF: (lambda node, b: (np.zeros((b, *node.tau_mem.shape), F32),) * 2, _cuba_step),
    nir.IF: (lambda node, b: np.zeros((b, *node.r.shape), F32), _if_step),
    nir.I: (lambda node, b: np.zeros((b, *node.r.shape), F32), _integrator_step),
}
SPIKING = (nir.LIF, nir.CubaLIF, nir.IF)


# -- edgeprune's exact neurons (a node whose metadata holds "edgeprune.layer") ---------------
# The kind's own step function (edgeprune.neuron_kinds) on float32 numpy arrays: the same
# operations in the same order as the PyTorch model, so the simulated spikes are its spikes bit
# for bit.

def _exact_of(node):
    """(kind, parameters) of a node with an edgeprune description in its metadata, else None."""
    meta = getattr(node, "metadata", None)
    d = meta.get("edgeprune.layer") if isinstance(meta, dict) else None
    if not isinstance(d, dict) or d.get("type") not in KINDS:
        return None
    kind = KINDS[d["type"]]
    plain = {k: (v.item() if isinstance(v, (np.ndarray, np.generic)) and np.ndim(v) == 0 else v)
             for k, v in (d.get("neuron", {}) if kind.nested else d).items()}
    return kind, kind.from_description({"neuron": plain} if kind.nested else plain)


def simulate(graph: nir.NIRGraph, x: np.ndarray, timesteps: int, *,
             input_is_sequence: bool = False, dt: float | None = None,
             exact: bool = True) -> dict:
    """Run `graph` for `timesteps` steps on a batch. `x`: (B, ...) fed at every step, or
    (T, B, ...) one slice per step when `input_is_sequence`. `dt`: the time step (default: the
    graph's metadata, else 1). `exact`: neurons with an edgeprune description in their metadata
    run it (bit for bit); False: every node by NIR's equations.
    Returns {"step_logits": (T,B,K), "logits": (B,K), "spikes.<spiking node>": (B,) counts}."""
    if dt is None:
        dt = float(graph.metadata.get("dt", 1.0)) if isinstance(graph.metadata, dict) else 1.0
    order = _order(graph)
    sources = {n: [s for s, d in graph.edges if d == n] for n in graph.nodes}
    inputs = [n for n, v in graph.nodes.items() if isinstance(v, nir.Input)]
    outputs = [n for n, v in graph.nodes.items() if isinstance(v, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError("expected one Input and one Output node")
    for n, node in graph.nodes.items():
        if not isinstance(node, (nir.Input, *STATELESS, *STATEFUL)):
            raise ValueError(f"node {n}: {type(node).__name__} is not supported")
    batch = x.shape[1] if input_is_sequence else x.shape[0]
    ex = {n: _exact_of(node) for n, node in graph.nodes.items()} if exact else {}
    ex = {n: p for n, p in ex.items() if p is not None}
    state = {}
    for n, node in graph.nodes.items():
        if n in ex:
            init = STATEFUL[type(node)][0](node, batch)
            shape = (init[0] if isinstance(init, tuple) else init).shape
            kind, p = ex[n]
            state[n] = tuple(np.zeros(shape, F32) for _ in kind.states(p))
        elif type(node) in STATEFUL:
            state[n] = STATEFUL[type(node)][0](node, batch)
    counts = {n: np.zeros(batch, np.float64) for n, node in graph.nodes.items()
              if (ex[n][0].spiking if n in ex else isinstance(node, SPIKING))}
    steps = []
    for t in range(timesteps):
        val: dict[str, np.ndarray] = {}
        for n in order:
            node = graph.nodes[n]
            if isinstance(node, nir.Input):
                val[n] = np.asarray(x[t] if input_is_sequence else x, F32)
                continue
            inp = val[sources[n][0]]
            for s in sources[n][1:]:
                inp = inp + val[s]
            if n in ex:
                kind, p = ex[n]
                val[n], state[n] = kind.step(inp, state[n], p, heaviside)
            elif type(node) in STATEFUL:
                val[n], state[n] = STATEFUL[type(node)][1](node, inp, state[n], dt)
            else:
                val[n] = STATELESS[type(node)](inp, node)
            if n in counts:
                counts[n] += val[n].reshape(batch, -1).sum(1)
        steps.append(val[outputs[0]])
    step_logits = np.stack(steps)
    out = {"step_logits": step_logits, "logits": step_logits.sum(0)}
    out.update({f"spikes.{n}": c.astype(F32) for n, c in counts.items()})
    return out
