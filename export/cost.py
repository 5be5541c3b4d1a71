"""The cost model: synaptic operations, sparsity and an energy estimate of a model, counted on
the probe inputs by running it in PyTorch with hooks on its conv and linear layers.

Definitions, after NeuroBench (github.com/NeuroBench/neurobench; read, not copied, since the
`neurobench` package cannot share a venv with our pinned torch):

- SynOps (`synops`, NeuroBench's "Dense"; neurobench/metrics/workload/synaptic_operations.py
  and neurobench/metrics/utils/layers/): every connection a layer's call evaluates, counted as
  the sum of the layer's output when run with all-ones weights on an all-ones input, bias left
  out. A padded convolution therefore counts only the connections that exist: a border output
  sees fewer inputs, and padding contributes no operation.
- ACs / MACs: a call whose input holds only 0 and 1 (spikes) accumulates (AC); any other input
  (the image under direct encoding, a pooled average) multiplies and accumulates (MAC), as
  NeuroBench's `binary_inputs` decides.
- Effective SynOps (`effective_synops`, NeuroBench's Effective_ACs + Effective_MACs): only
  non-zero weights times non-zero inputs: the same sum with the weights and the input
  binarized (non-zero -> 1). `effective_acs` / `effective_macs` split it as above.
- Activation sparsity (neurobench/metrics/workload/activation_sparsity.py): the share of zero
  outputs over all spiking neuron layers, all timesteps.
- Connection sparsity (neurobench/metrics/static/connection_sparsity.py): the share of zero
  weights over all conv and linear layers.
- Energy: effective ACs x `pj_per_ac` + effective MACs x `pj_per_mac`. The defaults are the
  45 nm figures of Horowitz, "Computing's energy problem", ISSCC 2014: 0.9 pJ for a 32-bit
  float add (an AC), 3.7 + 0.9 = 4.6 pJ for a multiply-add (a MAC). Memory traffic is not in it.

Counts are per inference: summed over the T timesteps and divided by the batch. A layer counts
what the model runs: under direct encoding the stem sees the static image once (its output is
repeated over T), so its MACs count once per inference, not T times. Pooling, BatchNorm and the
neurons are no synaptic operations (pooling sums a window without weights) and are not counted;
an average pool between spiking layers makes the next layer's input analog, so MACs.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from edgeprune.models import spiking_layers

PJ_PER_AC = 0.9
PJ_PER_MAC = 4.6
ENERGY_SOURCE = ("Horowitz, ISSCC 2014, 45 nm: 32-bit float add 0.9 pJ (AC), "
                 "multiply-add 4.6 pJ (MAC)")
SYNAPTIC = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _ops(layer: nn.Module, x: torch.Tensor, w: torch.Tensor) -> int:
    """Connections evaluated by `layer` on input `x` with weights `w`, each counted by its
    product: with 0/1 tensors, the number of (weight, input) pairs that are both 1."""
    if isinstance(layer, nn.Linear):
        y = F.linear(x, w)
    else:
        y = layer._conv_forward(x, w, None)  # the layer's own stride, padding, groups
    return int(round(float(y.double().sum())))


def _layer_hook(row: dict):
    def count(m, inputs, _out):
        # float32 is exact here: each output of a 0/1 product sums at most fan-in ones
        x, w = inputs[0].detach().float(), m.weight.detach().float()
        binary = bool(torch.all((x == 0) | (x == 1)))
        dense = _ops(m, torch.ones_like(x), torch.ones_like(w))
        effective = _ops(m, (x != 0).float(), (w != 0).float())
        op = "acs" if binary else "macs"
        row["synops"] += dense
        row[op] += dense
        row["effective_synops"] += effective
        row[f"effective_{op}"] += effective
        row["inputs"] += x.numel()
        row["zero_inputs"] += int((x == 0).sum())
    return count


def _neuron_hook(tally: list):
    def count(_m, _inputs, z):
        tally[0] += int((z == 0).sum())
        tally[1] += z.numel()
    return count


def count(model: nn.Module, x: torch.Tensor, timesteps: int, *, pj_per_ac: float = PJ_PER_AC,
          pj_per_mac: float = PJ_PER_MAC) -> dict:
    """The cost of one inference of `model` (an edgeprune SNN), averaged over the batch `x`
    (images (B, C, H, W) for direct encoding, input spikes (T, B, ...) for poisson):
    {"layers": [...], "total": {...}, "energy": {constants and source}}."""
    batch = x.shape[1] if model.encoding == "poisson" else x.shape[0]
    rows, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, SYNAPTIC):
            rows[name] = dict.fromkeys(("synops", "acs", "macs", "effective_synops",
                                        "effective_acs", "effective_macs", "inputs",
                                        "zero_inputs"), 0)
            rows[name]["kind"] = type(m).__name__
            rows[name]["weights"] = m.weight.numel()
            rows[name]["zero_weights"] = int((m.weight == 0).sum())
            handles.append(m.register_forward_hook(_layer_hook(rows[name])))
    tally = [0, 0]  # zero spikes, all spikes
    handles += [m.register_forward_hook(_neuron_hook(tally))
                for m in spiking_layers(model).values()]
    try:
        with torch.no_grad():
            model.eval()
            model(x, timesteps) if model.encoding == "direct" else model.forward_spikes(x)
    finally:
        for h in handles:
            h.remove()
    layers = []
    for name, r in rows.items():
        if not r["inputs"]:
            continue  # a module the forward pass never called
        per = {k: r[k] / batch for k in ("synops", "acs", "macs", "effective_synops",
                                         "effective_acs", "effective_macs")}
        layers.append({"name": name, "kind": r["kind"],
                       "op": "MAC" if r["macs"] and not r["acs"] else
                             "AC" if r["acs"] and not r["macs"] else "AC+MAC",
                       **per, "input_sparsity": r["zero_inputs"] / r["inputs"],
                       "connection_sparsity": r["zero_weights"] / r["weights"]})
    weights = sum(r["weights"] for r in rows.values())
    total = {k: sum(l[k] for l in layers) for k in ("synops", "acs", "macs", "effective_synops",
                                                    "effective_acs", "effective_macs")}
    total["activation_sparsity"] = tally[0] / tally[1] if tally[1] else None
    total["connection_sparsity"] = (sum(r["zero_weights"] for r in rows.values()) / weights
                                    if weights else None)
    total["energy_pj"] = energy_pj(total, pj_per_ac, pj_per_mac)
    return {"layers": layers, "total": total, "timesteps": timesteps, "batch": batch,
            "energy": {"pj_per_ac": pj_per_ac, "pj_per_mac": pj_per_mac,
                       "source": ENERGY_SOURCE if (pj_per_ac, pj_per_mac) == (
                           PJ_PER_AC, PJ_PER_MAC) else "given"}}


def energy_pj(total: dict, pj_per_ac: float = PJ_PER_AC, pj_per_mac: float = PJ_PER_MAC) -> float:
    """The energy estimate of the effective operations, in picojoules per inference."""
    return total["effective_acs"] * pj_per_ac + total["effective_macs"] * pj_per_mac
