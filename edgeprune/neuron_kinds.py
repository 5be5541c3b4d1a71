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
from .errors import UserError


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


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


SINABS_RESETS = ("subtract", "value")


@dataclass(frozen=True)
class SinabsParams:
    """A LIF in Sinabs' form (sinabs.layers IAF / LIF and their Squeeze forms, no synaptic
    current), in `lif_forward_single`'s order:
        v' = alpha_mem·v + x  (norm_input: + (1 − alpha_mem)·x);  IAF: alpha_mem = 1
        multi-spike: n = [v' > 0]·trunc(v'/threshold) (floor: v' > 0)   single: n = [v' − threshold >= 0]
        reset: v' − n·threshold ("subtract"),  v'·[n == 0] + reset_value ("value")
        min_v: v ← relu(v − min_v) + min_v (None: no floor)
    alpha_mem is Sinabs' float32 exp(−1/tau_mem). The output is the spike count n."""

    alpha_mem: float = 1.0
    threshold: float = 1.0
    norm_input: bool = False
    multi_spike: bool = True
    reset: str = "subtract"
    reset_value: float = 0.0
    min_v: Optional[float] = None
    surrogate: str = "super"
    alpha: float = 10.0

    def __post_init__(self):
        check_rate("Sinabs-form LIF alpha_mem", self.alpha_mem)
        for name in ("threshold", "reset_value", "min_v"):
            if getattr(self, name) is not None:
                check_finite(f"Sinabs-form LIF {name}", getattr(self, name))
        _require(self.threshold > 0, f"Sinabs-form LIF threshold must be positive, got "
                                   f"{self.threshold!r}")
        for name in ("norm_input", "multi_spike"):
            check_choice(f"Sinabs-form LIF {name}", getattr(self, name), (True, False))
        check_choice("Sinabs-form LIF reset", self.reset, SINABS_RESETS)
        check_surrogate(self.surrogate)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ChargeParams:
    """A LIF in SpikingJelly's form (neuron.IFNode / LIFNode / ParametricLIFNode): charge, fire,
    reset, in SpikingJelly's CPU order:
        IF:                 h = v + x
        LIF, decay_input:   h = v + (x − (v − v_reset))/tau      (PLIF: ·q instead of /tau)
        LIF, not:           h = v − (v − v_reset)/tau + x        (PLIF: ·q)
        s = [h >= v_threshold];  v' = h − s·v_threshold (v_reset None: soft reset)
                                 or  s·v_reset + (1 − s)·h
    with v_reset 0 in the charge when it is None. tau: the LIFNode's float; q: the
    ParametricLIFNode's float32 sigmoid(w); neither: an IF neuron."""

    tau: Optional[float] = None
    q: Optional[float] = None
    decay_input: bool = True
    v_threshold: float = 1.0
    v_reset: Optional[float] = None  # None (the default here: NIR metadata stores no None)
    surrogate: str = "super"
    alpha: float = 4.0

    def __post_init__(self):
        _require(self.tau is None or self.q is None,
               "SpikingJelly-form LIF: give tau (LIFNode) or q (ParametricLIFNode), not both")
        if self.tau is not None:
            check_finite("SpikingJelly-form LIF tau", self.tau)
            _require(self.tau >= 1.0, f"SpikingJelly-form LIF tau must be at least 1, got "
                                    f"{self.tau!r}")
        if self.q is not None:
            check_rate("SpikingJelly-form LIF q", self.q)
        check_choice("SpikingJelly-form LIF decay_input", self.decay_input, (True, False))
        for name in ("v_threshold", "v_reset"):
            if getattr(self, name) is not None:
                check_finite(f"SpikingJelly-form LIF {name}", getattr(self, name))
        check_surrogate(self.surrogate)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RockpoolParams:
    """A LIF in Rockpool's form (rockpool LIFTorch: feed-forward, one synapse per neuron, no
    noise), in its forward's order:
        i = i + x;  v = v·alpha_mem;  i = i·alpha_syn;  v = (v + i) + bias
        n = [v >= threshold]·floor(v/threshold);  n = max_spikes where n > max_spikes
        v = v − n·threshold
    alpha_mem = exp(−dt/tau_mem), alpha_syn = exp(−dt/tau_syn): the float32 values Rockpool
    computes (its `alpha` and `beta`). The output is the spike count n."""

    alpha_mem: float = 0.9
    alpha_syn: float = 0.9
    bias: float = 0.0
    threshold: float = 1.0
    max_spikes: float = 65536.0  # Rockpool's max_spikes_per_dt (2^16 by default)
    surrogate: str = "super"
    alpha: float = 10.0

    def __post_init__(self):
        for name in ("alpha_mem", "alpha_syn"):
            check_rate(f"Rockpool-form LIF {name}", getattr(self, name), closed_low=True)
        for name in ("bias", "threshold"):
            check_finite(f"Rockpool-form LIF {name}", getattr(self, name))
        _require(self.threshold > 0, f"Rockpool-form LIF threshold must be positive, got "
                                   f"{self.threshold!r}")
        _require(float(self.max_spikes).is_integer() and 1 <= self.max_spikes <= 2.0 ** 24,
                 f"Rockpool-form LIF max_spikes must be a whole number in [1, 2^24], got "
                 f"{self.max_spikes!r}")
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


def _floor(u):
    """Round down, numpy or torch. Where Sinabs counts (v > 0) it is its trunc; elsewhere
    the count is 0 either way. (ONNX has Floor, not Trunc.)"""
    return np.floor(u) if isinstance(u, (np.ndarray, np.generic)) else u.floor()


def sinabs_step(x, state, p: SinabsParams, spike=heaviside):
    """Sinabs' lif_forward_single (see SinabsParams). The count's forward value is Sinabs'
    exactly; `spike` adds its surrogate gradient at the threshold: spike(v − th) plus the
    gradient-free difference to the count (0/1 and small integers: every sum is exact)."""
    (v,) = state
    th = p.threshold
    if p.norm_input:
        x = float(np.float32(1.0 - p.alpha_mem)) * x
    v = p.alpha_mem * v + x if p.alpha_mem != 1.0 else v + x
    if p.multi_spike:
        n = heaviside(v) * _floor(v / th)
    else:
        n = 1 - heaviside(th - v)  # [v − th >= 0]: v >= th exactly
    n = spike(v - th) + (n - heaviside(v - th))
    if p.reset == "subtract":
        v = v - n * th
    else:
        v = v * (1 - heaviside(n)) + p.reset_value
    if p.min_v is not None:
        u = v - p.min_v
        v = u * heaviside(u) + p.min_v
    return n, (v,)


def charge_step(x, state, p: ChargeParams, spike=heaviside):
    """SpikingJelly's IF / LIF / PLIF step (see ChargeParams); the spike is [h >= v_th], its
    surrogate gradient taken at the threshold. SpikingJelly starts v at v_reset: with a
    v_reset other than 0 a second state, 0 before the first step and 1 after it, adds v_reset
    to the zero start once (v + 0·v_reset is v exactly afterwards)."""
    vr = 0.0 if p.v_reset is None else p.v_reset
    if _charge_started(p):
        v, started = state
        v = v + (1.0 - started) * vr
    else:
        (v,) = state
    if p.tau is None and p.q is None:
        h = v + x
    elif p.decay_input:
        h = v + ((x - (v - vr)) / p.tau if p.q is None else (x - (v - vr)) * p.q)
    else:
        h = (v - ((v - vr) / p.tau if p.q is None else (v - vr) * p.q)) + x
    th = p.v_threshold
    s = spike(h - th) + ((1 - heaviside(th - h)) - heaviside(h - th))
    if p.v_reset is None:
        v = h - s * th
    else:
        v = s * p.v_reset + (1.0 - s) * h
    return s, ((v, 1.0 + 0.0 * started) if _charge_started(p) else (v,))


def rockpool_step(x, state, p: RockpoolParams, spike=heaviside):
    """Rockpool's LIFTorch step (see RockpoolParams). Its clamp to max_spikes is its own
    n − (n − max)·[n > max]; the count's surrogate is added as in sinabs_step."""
    v, i = state
    th = p.threshold
    i = i + x
    v = v * p.alpha_mem
    i = i * p.alpha_syn
    v = (v + i) + p.bias
    n = (1 - heaviside(th - v)) * _floor(v / th)  # [v >= th]·floor(v/th)
    n = n - (n - p.max_spikes) * heaviside(n - p.max_spikes)
    n = spike(v - th) + (n - heaviside(v - th))
    return n, (v - n * th, i)


def _charge_started(p: ChargeParams) -> bool:
    return p.v_reset is not None and p.v_reset != 0.0


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
    counts: bool = False  # its output is a spike count (0, 1, 2, ...), not 0/1 spikes

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
    NeuronKind("sinabs_lif", "Sinabs-form LIF", SinabsParams, sinabs_step, _fixed("v"),
               spiking=False, counts=True),
    NeuronKind("charge_lif", "SpikingJelly-form LIF", ChargeParams, charge_step,
               lambda p: ("v", "started") if _charge_started(p) else ("v",), spiking=True),
    NeuronKind("rockpool_lif", "Rockpool-form LIF", RockpoolParams, rockpool_step,
               _fixed("v", "i"), spiking=False, counts=True),
    NeuronKind("integrator", "integrator", IntegratorParams, integrator_step, _fixed("v"),
               spiking=False, nested=False),
)}
