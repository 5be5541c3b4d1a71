"""The neuron kinds: one record each, torch-free.

A kind is what every backend needs to know about one neuron: its key (the layer type in a
model description, "lif"), its parameters (a frozen dataclass that validates itself once, in
`__post_init__`), the names of its state arrays (in the order the exporters flatten them; all
start at 0), whether its output is 0/1 spikes, and a pure step function, Norse-style:

    step(x, state, p, spike) -> (output, state)     state: a tuple of arrays, `states(p)` order

Each step is written with arithmetic operators only, in its source framework's float32
operation order, so the same function runs on torch tensors (edgeprune.neurons: `spike` is
Norse's threshold with a surrogate gradient) and on float32 numpy arrays (export/nir_sim.py:
`spike` is `heaviside`), and both are bit-identical to the framework. Parameters are Python
floats that are float32 values (the importers round them), so a float32 array times a
parameter rounds the way the framework's float32 tensor does.

Backends register against the key, each in a file named for it: the torch module
(edgeprune/neurons.py MODULES), its layer description (edgeprune/layers.py, from `describe` /
`from_description` here), the streaming ONNX state (export/onnx_step.py reads `states`), C
(export/c_neurons.py), NIR write (export/nir_graph.py NEURON_NODES), NIR simulate
(export/nir_sim.py: this step function, on numpy) and NIR read (edgeprune/importers/nirfile.py
NEURON_READERS). tests/test_neuron_kinds.py walks every kind through every backend. Adding a
kind: one record here, one entry per backend.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np

from .config import NeuronParams, check_choice, check_finite, check_rate, check_surrogate


def heaviside(u):
    """1 where u > 0, else 0, in u's float type, without a gradient (numpy or torch)."""
    fired = u > 0
    return fired.astype(u.dtype) if isinstance(fired, (np.ndarray, np.generic)) else \
        fired.to(u.dtype)


# -- parameters (the box LIF's are the train stage's NeuronParams, edgeprune.config) ----------

@dataclass(frozen=True)
class LIParams:
    """Norse's leaky integrator with dt = 1 (both rates are Norse's dt × tau_*_inv):
        i_jump = i + x;  v' = v + tau_mem_inv·(−v + i_jump);  i' = (1 − tau_syn_inv)·i_jump
    tau_syn_inv = 1 is a leaky integrator without synaptic current (Norse's LIBoxCell)."""

    tau_mem_inv: float = 0.1
    tau_syn_inv: float = 1.0

    def __post_init__(self):
        for name in ("tau_mem_inv", "tau_syn_inv"):
            check_rate(f"leaky integrator {name} (times dt)", getattr(self, name))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CubaParams:
    """A current-based LIF: Norse's LIFCell (`lif_feed_forward_step`) with dt folded into the
    rates (a = dt·tau_mem_inv, b = dt·tau_syn_inv, each the float32 product Norse computes):
        i_j = i + x;  v' = v + a·((0 − v) + i_j);  i' = i_j + (−b)·i_j
        z = [v' > v_th];  v ← v_reset where z ("value"), or v' − v_th ("subtract")
    NIR's CubaLIF with forward Euler (current first) is this with a = dt/tau_mem,
    b = dt/tau_syn and an input gain r·w_in·dt/tau_syn (a Scale before it when not 1)."""

    tau_mem_inv: float = 0.1
    tau_syn_inv: float = 0.2
    v_th: float = 1.0
    v_reset: float = 0.0
    reset: str = "value"
    surrogate: str = "super"
    alpha: float = 100.0

    def __post_init__(self):
        for name in ("tau_mem_inv", "tau_syn_inv"):
            check_rate(f"current-based LIF {name} (times dt)", getattr(self, name))
        for name in ("v_th", "v_reset"):
            check_finite(f"current-based LIF {name}", getattr(self, name))
        check_choice("current-based LIF reset", self.reset, ("value", "subtract"))
        check_surrogate(self.surrogate)

    def to_dict(self) -> dict:
        return asdict(self)


DECAY_RESETS = ("subtract", "zero", "none")


@dataclass(frozen=True)
class DecayParams:
    """A LIF written in decay form, as snnTorch's Leaky and Synaptic compute it:
        Leaky:     r = [mem > th];  mem' = beta·mem + x − r·th            (subtract)
                                    mem' = beta·((1 − r)·mem) + x         (zero)
        Synaptic:  syn' = alpha_syn·syn + x;  m = beta·mem + syn'
                                    mem' = m − r·th  (subtract),  m − m·r  (zero)
        spike = [mem' > th]
    r is the spike of the *previous* step: snnTorch subtracts the threshold one step after a
    spike (`reset_delay`, its default). Without the delay the reset also applies at once:
    mem' −= (spike − r)·th (subtract) or (spike − r)·mem' (zero). "none" never resets.
    NIR's IF (dv/dt = R·I) is this with beta = 1."""

    beta: float = 0.9
    threshold: float = 1.0
    alpha_syn: Optional[float] = None  # Synaptic's current decay; None: Leaky (no current)
    reset: str = "subtract"
    reset_delay: bool = True
    surrogate: str = "super"
    alpha: float = 10.0

    def __post_init__(self):
        for name in ("beta", "alpha_syn"):
            if getattr(self, name) is not None:
                check_rate(f"decay-form LIF {name}", getattr(self, name), closed_low=True)
        check_finite("decay-form LIF threshold", self.threshold)
        check_choice("decay-form LIF reset", self.reset, DECAY_RESETS)
        check_choice("decay-form LIF reset_delay", self.reset_delay, (True, False))
        check_surrogate(self.surrogate)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class IntegratorParams:
    """A perfect integrator has no parameters (a gain stands in a Scale before it)."""

    def to_dict(self) -> dict:
        return {}


# -- the step functions ------------------------------------------------------------------------

def constant(z):
    """z without a gradient (torch); numpy arrays have none to drop."""
    return z.detach() if hasattr(z, "detach") else z


def lif_step(x, state, p: NeuronParams, spike=heaviside):
    """Norse's lif_box_feed_forward_step with dt = 1, in its operation order:
    vd = v + a·((x + v_leak) − v) (v_leak = 0); z = H(vd − v_th); Norse's reset:
    (1 − z)·vd + z·v_reset ("value") or (1 − z)·vd + z·(vd − v_th) ("subtract"). With
    reset_grad "detach" the reset's z is a constant (the same values)."""
    (v,) = state
    vd = v + p.tau_mem_inv * ((x + 0.0) - v)
    z = spike(vd - p.v_th)
    zr = constant(z) if p.reset_grad == "detach" else z
    after = vd - p.v_th if p.reset == "subtract" else p.v_reset
    return z, ((1 - zr) * vd + zr * after,)


def li_step(x, state, p: LIParams, spike=heaviside):
    """Norse's li_feed_forward_step with dt = 1; the output is the new potential."""
    v, i = state
    i_jump = i + x
    v_new = v + p.tau_mem_inv * ((0.0 - v) + i_jump)
    return v_new, (v_new, i_jump + (-p.tau_syn_inv) * i_jump)


def cuba_lif_step(x, state, p: CubaParams, spike=heaviside):
    """Norse's lif_feed_forward_step with dt = 1 (see CubaParams)."""
    v, i = state
    i_j = i + x
    vd = v + p.tau_mem_inv * ((0.0 - v) + i_j)
    i_new = i_j + (-p.tau_syn_inv) * i_j
    z = spike(vd - p.v_th)
    v_new = vd - z * p.v_th if p.reset == "subtract" else (1 - z) * vd + z * p.v_reset
    return z, (v_new, i_new)


def decay_lif_step(x, state, p: DecayParams, spike=heaviside):
    """snnTorch's Leaky / Synaptic in its operation order (see DecayParams); r and z are 0/1
    floats multiplied in as snnTorch does, so every product is exact."""
    synaptic = p.alpha_syn is not None
    syn, mem = state if synaptic else (None, state[0])
    th = p.threshold
    r = heaviside(mem - th)  # snnTorch's detached reset signal
    if synaptic:
        syn = p.alpha_syn * syn + x
        m = p.beta * mem + syn
        if p.reset == "subtract":
            m = m - r * th
        elif p.reset == "zero":
            m = m - m * r
    elif p.reset == "zero":
        m = p.beta * ((1 - r) * mem) + x
    else:
        m = p.beta * mem + x
        if p.reset == "subtract":
            m = m - r * th
    z = spike(m - th)
    if not p.reset_delay and p.reset != "none":
        do = z - r
        m = m - do * th if p.reset == "subtract" else m - do * m
    return z, ((syn, m) if synaptic else (m,))


def integrator_step(x, state, p: IntegratorParams, spike=heaviside):
    """NIR's Integrator (dv/dt = R·I) with the gain outside: v' = v + x, the output is v'."""
    v = state[0] + x
    return v, (v,)


# -- the records ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class NeuronKind:
    key: str  # the layer type in a model description
    title: str  # how messages name it
    params: type  # its parameters: a frozen dataclass validated in __post_init__, `to_dict()`
    step: Callable  # step(x, state, p, spike) -> (output, state)
    states: Callable[[object], tuple[str, ...]]  # the state names for parameters p
    spiking: bool  # its output is 0/1 spikes
    nested: bool = True  # described as {"neuron": params} (else the params' fields inline)

    def describe(self, p) -> dict:
        """The layer description of a neuron with parameters `p` (without "type"). Artifact
        ids hash these: the layout of each kind stays as it was."""
        return {"neuron": p.to_dict()} if self.nested else p.to_dict()

    def from_description(self, d: dict):
        """The parameters a layer description holds (UserError when a value is bad,
        TypeError/KeyError when the description is malformed)."""
        if self.nested:
            return self.params(**d["neuron"])
        return self.params(**{k: v for k, v in d.items() if k != "type"})


def _fixed(*names: str):
    return lambda p: names


KINDS: dict[str, NeuronKind] = {k.key: k for k in (
    NeuronKind("lif", "LIF", NeuronParams, lif_step, _fixed("v"), spiking=True),
    NeuronKind("li", "leaky integrator", LIParams, li_step, _fixed("v", "i"), spiking=False,
               nested=False),
    NeuronKind("cuba_lif", "current-based LIF", CubaParams, cuba_lif_step, _fixed("v", "i"),
               spiking=True),
    NeuronKind("decay_lif", "decay-form LIF", DecayParams, decay_lif_step,
               lambda p: ("syn", "mem") if p.alpha_syn is not None else ("mem",), spiking=True),
    NeuronKind("integrator", "integrator", IntegratorParams, integrator_step, _fixed("v"),
               spiking=False, nested=False),
)}
