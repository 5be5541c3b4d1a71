"""Run an exported model next to the PyTorch model it came from and measure the difference.

The reference is the original model (BatchNorm not folded, its own spike function), so a
comparison covers everything the export changed: folding, exact Heaviside, ONNX Runtime's kernels.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from edgeprune.models import SNN, spiking_layers


@torch.no_grad()
def torch_reference(model: SNN, x: torch.Tensor, timesteps: int, *,
                    near_eps: float | None = None) -> dict:
    """The model's outputs as numpy arrays: "step_logits" (T,B,K), "logits" (B,K),
    "spikes.<layer>" (B,) totals and "step_spikes.<layer>" (T,B) per-step counts.
    With `near_eps`, also "near.<layer>" (T,): how many membrane potentials land within
    near_eps of the threshold at each step. Only those can flip when a graph computes the same
    function with other rounding (BN folded, another summation order): the bound a spike
    mismatch count is checked against.
    `x`: images (B,C,H,W) for direct encoding, input spikes (T,B,C,H,W) for poisson."""
    model = model.eval()
    out: dict[str, np.ndarray] = {}

    def hook(name):
        def record(m, inp, z):
            out[f"step_spikes.{name}"] = z.flatten(2).sum(2).numpy()
            if near_eps is None:
                return
            if not hasattr(m, "margins"):  # stateless spikes (Threshold): nothing to trace
                return
            u = m.margins(inp[0])  # every neuron kind reports its potentials itself
            out[f"near.{name}"] = np.array([int((u[t].abs() < near_eps).sum())
                                            for t in range(u.shape[0])])
        return record

    lifs = spiking_layers(model)
    handles = [m.register_forward_hook(hook(n)) for n, m in lifs.items()]
    try:
        if model.encoding == "direct":
            steps = model(x, timesteps)
        else:
            steps = model.forward_spikes(x)
    finally:
        for h in handles:
            h.remove()
    out["step_logits"] = steps.numpy()
    return prefix(out, timesteps)


def prefix(ref: dict, t: int) -> dict:
    """A reference for the first t steps of a longer run (the SNN is causal from zero state, so
    a T-step run holds the results of every shorter run)."""
    res = {"step_logits": ref["step_logits"][:t], "logits": ref["step_logits"][:t].sum(0)}
    for k, v in ref.items():
        if k.startswith("step_spikes."):
            res[k] = v[:t]
            res["spikes." + k[len("step_spikes."):]] = v[:t].sum(0)
        elif k.startswith("near."):
            res[k] = v[:t]
    return res


def near_threshold(ref: dict) -> dict:
    """{"spikes.<layer>": count of near-threshold potentials} of a reference made with near_eps."""
    return {"spikes." + k[len("near."):]: int(v.sum()) for k, v in ref.items()
            if k.startswith("near.")}


def session(path, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_unrolled(sess: ort.InferenceSession, x: np.ndarray) -> dict:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"input": np.ascontiguousarray(x, np.float32)})))


def run_stream(sess: ort.InferenceSession, x: np.ndarray, timesteps: int, encoding: str,
               states: list[dict]) -> dict:
    """Feed the step model T times from zero state. `states` is the `edgeprune.states` metadata.
    Direct encoding feeds the image at every step, poisson the step's input spikes.
    Returns {"step_logits": (T,B,K), "logits": (B,K)}."""
    batch = x.shape[0] if encoding == "direct" else x.shape[1]
    feed = {s["input"]: np.full((batch, *s["shape"]), s["init"], np.float32) for s in states}
    outs = ["logits", *[s["output"] for s in states]]
    steps = []
    for t in range(timesteps):
        feed["input"] = np.ascontiguousarray(x if encoding == "direct" else x[t], np.float32)
        logits, *new = sess.run(outs, feed)
        steps.append(logits)
        feed.update({s["input"]: v for s, v in zip(states, new)})
    step_logits = np.stack(steps)
    return {"step_logits": step_logits, "logits": step_logits.sum(0)}


def compare(ref: dict, got: dict, near: dict | None = None) -> dict:
    """Max abs logit difference, prediction agreement and spike-count mismatches (where both
    sides have spike counts). With `near` (from near_threshold on the reference), also the
    mismatches that no near-threshold potential explains: those would be real errors."""
    diff = float(np.abs(ref["logits"] - got["logits"]).max())
    if "step_logits" in got:
        diff = max(diff, float(np.abs(ref["step_logits"] - got["step_logits"]).max()))
    agree = float((ref["logits"].argmax(-1) == got["logits"].argmax(-1)).mean())
    spikes = {k: int(np.abs(ref[k] - got[k]).sum()) for k in ref
              if k.startswith("spikes.") and k in got}
    out = {"max_abs_diff": diff, "prediction_agreement": agree,
           "spike_mismatches": sum(spikes.values()), "spike_mismatches_per_layer": spikes,
           "samples": int(ref["logits"].shape[0])}
    if near is not None:
        out["spike_mismatches_unexplained"] = sum(max(0, n - near.get(k, 0))
                                                  for k, n in spikes.items())
    return out


@torch.no_grad()
def reference_logits(model: SNN, timesteps: int, inputs: np.ndarray,
                     batch: int = 256) -> np.ndarray:
    """PyTorch logits summed over T for an ONNX model's inputs: images (N, C, H, W), or input
    spikes (T, N, C, H, W), which are fed through stem and body directly so both models see
    the same spikes."""
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(inputs))
    outs = []
    n = x.shape[1] if x.ndim == 5 else x.shape[0]
    for s in range(0, n, batch):
        if x.ndim == 5:
            per_step = model.forward_spikes(x[:, s:s + batch])
        else:
            per_step = model(x[s:s + batch], timesteps)
        outs.append(per_step.sum(0).numpy())
    return np.concatenate(outs).astype(np.float32)
