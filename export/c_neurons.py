"""The neuron kinds in C (the C backend of edgeprune.neuron_kinds): one C function per layer
that steps all its neurons once, in the kind's float32 operation order, so spikes match
PyTorch bit for bit except where a potential lands within rounding of the threshold.

Each function is `fn(x, y, state...)`, the state arrays in the kind's `states` order (one
float per neuron each, 0 at the start); a spiking kind returns its spike count.
- LIF (lif_box_feed_forward_step): dv = a*((x + v_leak) - v); vd = v + dv; z = vd - v_th > 0
  (i.e. vd > v_th); v = z ? v_reset : vd ("value") or z ? vd - v_th : vd ("subtract").
- LI (li_feed_forward_step): ij = i + x; v' = v + a*((v_leak - v) + ij); i' = ij + (-b)*ij.
- current-based LIF (Norse lif_feed_forward_step): the LI update, then the LIF's spike and reset.
- decay-form LIF (snnTorch Leaky / Synaptic): r = [mem > th]; (syn' = alpha*syn + x;)
  m = beta*mem + (syn' or x) - r*th (or its zero/none reset); z = [m > th].
- Sinabs-form LIF (IAF / LIF): v' = alpha*v + x (norm_input: (1 - alpha)*x); the count
  n = trunc(v'/th) where v' > 0 (multi-spike) or [v' >= th]; subtract n*th or reset; floor.
- SpikingJelly-form LIF (IFNode / LIFNode / ParametricLIFNode): h = v + x, or the LIF charge
  (divided by tau, or times q); s = [h >= v_th]; v = s ? h - v_th (soft) or v_reset : h.
- Rockpool-form LIF (LIFTorch): i = i + x; v = v*alpha_mem; i = i*alpha_syn; v = (v + i) + bias;
  n = floor(v/th) where v >= th, at most max_spikes; v = v - n*th.
- integrator: v' = v + x.
Selects (`s ? a : b`) stand for the frameworks' (1 - z)*a + z*b: the same value for z in {0, 1}.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .c_text import comment, hexf


def _function(op: dict, fn: str, title: str, facts: str, states: tuple, lines: list[str],
              spiking: bool) -> str:
    """The C function of a neuron layer: `lines` are the loop body for neuron i; the comment
    says "title, N neurons" and the facts."""
    n = int(np.prod(op["in_shape"]))
    out = "z" if spiking else "y"
    args = ", ".join(["const float *restrict x", f"float *restrict {out}",
                      *(f"float *restrict {s}" for s in states)])
    return (f"/* {comment(op['name'])}: {title}, {n} neurons{facts} */\n"
            f"static {'uint32_t' if spiking else 'void'} {fn}({args})\n{{\n"
            + ("    uint32_t spikes = 0;\n" if spiking else "") + "    int i;\n"
            f"    for (i = 0; i < {n}; i++) {{\n" + "".join(f"        {ln}\n" for ln in lines)
            + "    }\n" + ("    return spikes;\n" if spiking else "") + "}\n")


def _fire(th: str, after: str) -> list[str]:
    """Spike where vd > th (as vd - th > 0, the frameworks' test), then reset v to `after`."""
    return [f"const int s = vd - {th} > 0.0f;", "z[i] = s ? 1.0f : 0.0f;",
            f"v[i] = s ? {after} : vd;", "spikes += (uint32_t)s;"]


def _integrate(op: dict) -> list[str]:
    """Norse's leaky integrator with a synaptic current (LI, and the current-based LIF)."""
    a, nb = hexf(op["tau_mem_inv"]), hexf(-float(np.float32(op["tau_syn_inv"])))
    return ["const float ij = cur[i] + x[i];",
            f"const float dv = {a} * ((0.0f - v[i]) + ij); /* v_leak = 0 */",
            "const float vd = v[i] + dv;", f"const float di = {nb} * ij;", "cur[i] = ij + di;"]


def _lif_fn(op: dict, fn: str) -> str:
    a, th, vr = hexf(op["tau_mem_inv"]), hexf(op["v_th"]), hexf(op["v_reset"])
    lines = [f"const float dv = {a} * ((x[i] + 0.0f) - v[i]); /* v_leak = 0 */",
             "const float vd = v[i] + dv;",
             *_fire(th, vr if op["reset"] == "value" else f"vd - {th}")]
    facts = (f", tau_mem_inv {op['tau_mem_inv']!r}, v_th {op['v_th']!r}, reset {op['reset']} "
             f"({op['v_reset']!r}); returns the spike count.\n"
             " * Branch-free (spikes are unpredictable), so the compiler can vectorize it.")
    return _function(op, fn, "LIF", facts, ("v",), lines, True)


def _li_fn(op: dict, fn: str) -> str:
    facts = f", tau_mem_inv {op['tau_mem_inv']!r}, tau_syn_inv {op['tau_syn_inv']!r}"
    return _function(op, fn, "leaky integrator", facts, ("v", "cur"),
                     _integrate(op) + ["v[i] = vd;", "y[i] = vd;"], False)


def _cuba_fn(op: dict, fn: str) -> str:
    th = hexf(op["v_th"])
    after = "vd - " + th if op["reset"] == "subtract" else hexf(op["v_reset"])
    facts = (f", tau_mem_inv {op['tau_mem_inv']!r}, tau_syn_inv {op['tau_syn_inv']!r}, v_th "
             f"{op['v_th']!r}, reset {op['reset']} ({op['v_reset']!r}); returns the spike count.")
    return _function(op, fn, "current-based LIF (Norse LIFCell)", facts, ("v", "cur"),
                     _integrate(op) + _fire(th, after), True)


def _decay_fn(op: dict, fn: str) -> str:
    """snnTorch's Leaky / Synaptic in its operation order (edgeprune.neuron_kinds); r and z are
    0/1 floats multiplied in as snnTorch does, so every product is exact."""
    beta, th = hexf(op["beta"]), hexf(op["threshold"])
    syn = op.get("alpha_syn") is not None
    reset = op["reset"]
    lines = [f"const float r = mem[i] - {th} > 0.0f ? 1.0f : 0.0f;"]
    if syn:
        lines += [f"const float sy = {hexf(op['alpha_syn'])} * syn[i] + x[i];",
                  f"float m = {beta} * mem[i] + sy;", "syn[i] = sy;"]
        if reset == "subtract":
            lines.append(f"m = m - r * {th};")
        elif reset == "zero":
            lines.append("m = m - m * r;")
    elif reset == "zero":
        lines.append(f"float m = {beta} * ((1.0f - r) * mem[i]) + x[i];")
    else:
        lines.append(f"float m = {beta} * mem[i] + x[i];")
        if reset == "subtract":
            lines.append(f"m = m - r * {th};")
    lines += [f"const int s = m - {th} > 0.0f;", "const float zs = s ? 1.0f : 0.0f;"]
    if not op["reset_delay"] and reset != "none":
        lines += ["const float d = zs - r;", f"m = m - d * {th};" if reset == "subtract"
                  else "m = m - d * m;"]
    lines += ["mem[i] = m;", "z[i] = zs;", "spikes += (uint32_t)s;"]
    facts = (f", beta {op['beta']!r}, threshold {op['threshold']!r}, reset {reset}"
             f"{' one step late' if op['reset_delay'] else ''}; returns the spike count.")
    return _function(op, fn, f"decay-form LIF (snnTorch {'Synaptic' if syn else 'Leaky'})",
                     facts, ("syn", "mem") if syn else ("mem",), lines, True)


def _sinabs_fn(op: dict, fn: str) -> str:
    """Sinabs' lif_forward_single; the count is the float Sinabs computes (trunc of the
    quotient, exact through an int below 2^23, where every float above is an integer)."""
    th = hexf(op["threshold"])
    alpha = float(np.float32(op["alpha_mem"]))
    lines = [f"const float xi = {hexf(float(np.float32(1.0 - alpha)))} * x[i];"
             if op["norm_input"] else "const float xi = x[i];",
             "float vv = v[i] + xi;" if alpha == 1.0 else f"float vv = {hexf(alpha)} * v[i] + xi;"]
    if op["multi_spike"]:
        lines += [f"const float q = vv / {th};",
                  "const float n = vv > 0.0f ? (q < 8388608.0f ? (float)(int32_t)q : q) : 0.0f;"]
    else:
        lines.append(f"const float n = vv >= {th} ? 1.0f : 0.0f;")
    lines.append(f"vv = vv - n * {th};" if op["reset"] == "subtract"
                 else f"vv = (n > 0.0f ? 0.0f : vv) + {hexf(op['reset_value'])};")
    if op.get("min_v") is not None:
        mv = hexf(op["min_v"])
        lines += [f"const float u = vv - {mv};", f"vv = (u > 0.0f ? u : 0.0f) + {mv};"]
    lines += ["v[i] = vv;", "y[i] = n;"]
    facts = (f", alpha_mem {op['alpha_mem']!r}, threshold {op['threshold']!r}, "
             f"{'multi' if op['multi_spike'] else 'single'}-spike, reset {op['reset']}; "
             "writes spike counts")
    return _function(op, fn, "Sinabs-form LIF", facts, ("v",), lines, False)


def _charge_fn(op: dict, fn: str) -> str:
    """SpikingJelly's charge, fire (>= threshold) and reset, in its CPU order."""
    th = hexf(op["v_threshold"])
    hard = op.get("v_reset") is not None
    vr = hexf(op["v_reset"] if hard else 0.0)
    started = hard and op["v_reset"] != 0.0
    lines = ["float vv = v[i];"]
    if started:  # SpikingJelly starts at v_reset: added to the zero start once
        lines += [f"vv = vv + (1.0f - started[i]) * {vr};", "started[i] = 1.0f;"]
    if op.get("tau") is None and op.get("q") is None:
        lines.append("const float h = vv + x[i];")
    else:
        leak = (f"/ {hexf(float(np.float32(op['tau'])))}" if op.get("q") is None
                else f"* {hexf(op['q'])}")
        lines.append(f"const float h = vv + (x[i] - (vv - {vr})) {leak};" if op["decay_input"]
                     else f"const float h = (vv - (vv - {vr}) {leak}) + x[i];")
    lines += [f"const int s = h >= {th};", "z[i] = s ? 1.0f : 0.0f;",
              f"v[i] = s ? {('h - ' + th) if not hard else vr} : h;", "spikes += (uint32_t)s;"]
    facts = (f", tau {op.get('tau')!r}, q {op.get('q')!r}, v_threshold {op['v_threshold']!r}, "
             f"v_reset {op.get('v_reset')!r}; returns the spike count.")
    return _function(op, fn, "SpikingJelly-form LIF", facts,
                     ("v", "started") if started else ("v",), lines, True)


def _rockpool_fn(op: dict, fn: str) -> str:
    """Rockpool's LIFTorch in its forward's order. Where v >= th > 0 the quotient is at least
    1, so floor is the int truncation (exact below 2^23, where every float above is whole)."""
    th, mx = hexf(op["threshold"]), hexf(op["max_spikes"])
    lines = ["const float is = cur[i] + x[i];", f"const float vm = v[i] * {hexf(op['alpha_mem'])};",
             f"const float ib = is * {hexf(op['alpha_syn'])};",
             f"float vv = (vm + ib) + {hexf(op['bias'])};", f"const float q = vv / {th};",
             f"float n = vv >= {th} ? (q < 8388608.0f ? (float)(int32_t)q : q) : 0.0f;",
             f"n = n > {mx} ? {mx} : n;", f"v[i] = vv - n * {th};", "cur[i] = ib;", "y[i] = n;"]
    facts = (f", alpha_mem {op['alpha_mem']!r}, alpha_syn {op['alpha_syn']!r}, bias "
             f"{op['bias']!r}, threshold {op['threshold']!r}, at most {op['max_spikes']!r} "
             "spikes a step; writes spike counts")
    return _function(op, fn, "Rockpool-form LIF", facts, ("v", "cur"), lines, False)


def _integrator_fn(op: dict, fn: str) -> str:
    return _function(op, fn, "integrator", "", ("v",), ["v[i] = v[i] + x[i];", "y[i] = v[i];"],
                     False)


@dataclass(frozen=True)
class NeuronC:
    """One neuron kind in C: `emit(op, fn)` writes its function; `keys` are the parameters its
    op carries (export/c_program.py copies them from the module, export/c_plan.py checks them
    with the kind's parameter class)."""

    emit: Callable[[dict, str], str]
    keys: tuple[str, ...] = ()


# the C backend: neuron kind -> its C form
C_NEURONS = {
    "lif": NeuronC(_lif_fn, ("tau_mem_inv", "v_th", "v_reset", "reset")),
    "li": NeuronC(_li_fn, ("tau_mem_inv", "tau_syn_inv")),
    "cuba_lif": NeuronC(_cuba_fn, ("tau_mem_inv", "tau_syn_inv", "v_th", "v_reset", "reset")),
    "decay_lif": NeuronC(_decay_fn, ("beta", "threshold", "alpha_syn", "reset", "reset_delay")),
    "sinabs_lif": NeuronC(_sinabs_fn, ("alpha_mem", "threshold", "norm_input", "multi_spike",
                                       "reset", "reset_value", "min_v")),
    "charge_lif": NeuronC(_charge_fn, ("tau", "q", "decay_input", "v_threshold", "v_reset")),
    "rockpool_lif": NeuronC(_rockpool_fn, ("alpha_mem", "alpha_syn", "bias", "threshold",
                                           "max_spikes")),
    "integrator": NeuronC(_integrator_fn),
}
