"""Run an exported model next to the PyTorch model it came from and measure the difference.

The reference is the original model (BatchNorm not folded, its own spike function), so a
comparison covers everything the export changed: folding, exact Heaviside, ONNX Runtime's kernels.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from edgeprune.models import SNN, over_time, spiking_layers


@torch.no_grad()
def torch_reference(model: SNN, x: torch.Tensor, timesteps: int) -> dict:
    """{"step_logits": (T,B,K), "logits": (B,K), "spikes.<layer>": (B,)} as numpy arrays.
    `x`: images (B,C,H,W) for direct encoding, input spikes (T,B,C,H,W) for poisson."""
    model = model.eval()
    counts: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(_m, _inp, out):
            counts[name] = out.transpose(0, 1).flatten(1).sum(1)
        return record

    lifs = spiking_layers(model)
    handles = [m.register_forward_hook(hook(n)) for n, m in lifs.items()]
    try:
        if model.encoding == "direct":
            steps = model(x, timesteps)
        else:
            steps = model.body(over_time(model.stem, x))
    finally:
        for h in handles:
            h.remove()
    out = {"step_logits": steps.numpy(), "logits": steps.sum(0).numpy()}
    out.update({f"spikes.{n}": counts[n].numpy() for n in lifs})
    return out


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


def compare(ref: dict, got: dict) -> dict:
    """Max abs logit difference, prediction agreement and spike-count mismatches (where both
    sides have spike counts)."""
    diff = float(np.abs(ref["logits"] - got["logits"]).max())
    if "step_logits" in got:
        diff = max(diff, float(np.abs(ref["step_logits"] - got["step_logits"]).max()))
    agree = float((ref["logits"].argmax(-1) == got["logits"].argmax(-1)).mean())
    spikes = {k: int(np.abs(ref[k] - got[k]).sum()) for k in ref
              if k.startswith("spikes.") and k in got}
    return {"max_abs_diff": diff, "prediction_agreement": agree,
            "spike_mismatches": sum(spikes.values()), "spike_mismatches_per_layer": spikes,
            "samples": int(ref["logits"].shape[0])}
