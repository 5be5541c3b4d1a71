"""Validation of one ONNX model on a list of targets: parity with the reference logits, accuracy
and its drop, latency percentiles, peak memory, file size, and the gates over them.

Pure computation over numpy arrays; where the reference logits come from (PyTorch, a bundle) is
the caller's business, so this module stays torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgeprune.errors import UserError

from . import emulation, runtime
from .modelfile import ModelInfo
from .profiles import Profile

EMULATED_NOTE = "emulated — not indicative"
PASS, FAIL, SKIP = "pass", "fail", "skipped"


@dataclass
class Validation:
    report: dict  # JSON-ready: model, data, reference, one entry per target, passed
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # target name -> logits


def batch_size(inputs: np.ndarray) -> int:
    return inputs.shape[1] if inputs.ndim == 5 else inputs.shape[0]


def take(inputs: np.ndarray, n: int) -> np.ndarray:
    """The first n inputs (along axis 1 for spike input (T, N, ...))."""
    return inputs[:, :n] if inputs.ndim == 5 else inputs[:n]


def validate(info: ModelInfo, profiles: list[Profile], inputs: np.ndarray,
             labels: np.ndarray | None = None, reference: np.ndarray | None = None,
             reference_source: str | None = None,
             progress: Callable[[str], None] = lambda m: None) -> Validation:
    """Run `inputs` through the model on every target and gate the results."""
    n_all = batch_size(inputs)
    if labels is not None and len(labels) != n_all:
        raise UserError(f"{len(labels)} labels for {n_all} inputs")
    if reference is not None and reference.shape[0] != n_all:
        raise UserError(f"the reference has logits for {reference.shape[0]} inputs, the data "
                        f"has {n_all}: they must come from the same inputs")
    emulator = None
    entries, outputs = [], {}
    for profile in profiles:
        how = runtime.mode(profile)
        n = min(n_all, profile.emulation.max_inputs) if how == "emulated" else n_all
        if how == "emulated" and emulator is None:
            emulator = emulation.setup(progress)
        run = runtime.run(info.path, profile, take(inputs, n), emulator=emulator, progress=progress)
        outputs[profile.name] = run.outputs
        entry = _measure(profile, run, n, labels, reference, info)
        entry["setup_seconds"] = emulator.setup_seconds if how == "emulated" else 0.0
        if entries:  # how far this target is from the first one (e.g. ARM64 vs x86-64 ORT)
            first = outputs[entries[0]["target"]]
            m = min(len(first), n)
            entry["vs_first_target"] = {"target": entries[0]["target"], "inputs": m,
                                        **parity(run.outputs[:m], first[:m])}
        entries.append(entry)
    report = {"model": info.to_dict(), "inputs": n_all,
              "reference": {"source": reference_source if reference is not None else None},
              "targets": entries, "passed": all(e["passed"] for e in entries)}
    return Validation(report, outputs)


def parity(a: np.ndarray, b: np.ndarray, tol: float | None = None) -> dict:
    """How far logits `a` are from `b`: same-class share, the largest difference, and (with
    `tol`) the share of inputs whose logits all lie within it."""
    diff = np.abs(a.astype(np.float64) - b).reshape(len(a), -1) if a.size else np.zeros((0, 1))
    out = {"agreement": float(np.mean(a.argmax(1) == b.argmax(1))) if len(a) else 1.0,
           "max_abs_diff": float(diff.max()) if diff.size else 0.0}
    if tol is not None:
        out["within_tolerance"] = float(np.mean(diff.max(axis=1) <= tol)) if len(a) else 1.0
    return out


def parity_ok(par: dict, tol) -> bool:
    """The parity gate. A spiking network's logits jump when a membrane potential that sits
    within rounding of the threshold fires in one runtime and not the other, so the gate asks
    for the same class and logits within tolerance on nearly every input (the profile's
    shares), not a bound on the single worst input; the worst difference is still reported."""
    return (par["agreement"] >= tol.min_agreement
            and par["within_tolerance"] >= tol.min_within_tolerance)


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(1) == labels))


def _measure(profile: Profile, run: runtime.TargetRun, n: int, labels, reference,
             info: ModelInfo) -> dict:
    out, res = run.outputs, run.result
    emulated = run.mode == "emulated"
    lat = np.asarray(res["latencies_ms"], dtype=np.float64)
    pct = profile.latency.percentile
    latency = {"batch_size": profile.latency.batch_size, "runs": len(lat),
               "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
               "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean()),
               "percentile": pct, "at_percentile_ms": float(np.percentile(lat, pct)),
               "budget_ms": profile.latency.budget_ms, "emulated": emulated,
               "note": EMULATED_NOTE if emulated else "native",
               "session_load_ms": res.get("session_load_ms")}
    memory = {"peak_rss_delta_mb": (res["rss_peak_bytes"] - res["rss_baseline_bytes"]) / 2**20,
              "method": "peak RSS growth of a fresh runner process, from after importing "
                        "onnxruntime and loading the inputs to after the last run ("
                        + res.get("rss_method", "?") + ")"
                        + (" (QEMU process: includes the emulator's code cache)" if emulated else ""),
              "budget_mb": profile.memory.budget_mb}
    entry = {"target": profile.name, "description": profile.description, "isa": profile.isa,
             "mode": run.mode, "command": run.command, "profile": profile.to_dict(),
             "onnxruntime": res["onnxruntime"], "machine": res["machine"],
             "python": res["python"], "providers": res["providers"], "inputs": n,
             "file_bytes": info.bytes, "latency": latency, "memory": memory,
             "accuracy": _accuracy(out, labels[:n]) if labels is not None else None}
    gates = []
    if reference is not None:
        ref = reference[:n]
        tol = profile.parity
        par = parity(out, ref, tol.max_abs_logit_diff)
        entry["parity"] = par
        gates.append({"gate": "parity", "status": PASS if parity_ok(par, tol) else FAIL,
                      "detail": f"agreement {par['agreement']:.2%} (min {tol.min_agreement:.2%}), "
                                f"logits within {tol.max_abs_logit_diff:.3g} on "
                                f"{par['within_tolerance']:.2%} (min "
                                f"{tol.min_within_tolerance:.2%}), max |Δlogit| "
                                f"{par['max_abs_diff']:.3g}"})
        if labels is not None:
            ref_acc = _accuracy(ref, labels[:n])
            drop = ref_acc - entry["accuracy"]
            entry["reference_accuracy"], entry["accuracy_drop"] = ref_acc, drop
            ok = drop <= profile.accuracy.max_drop + 1e-12
            gates.append({"gate": "accuracy", "status": PASS if ok else FAIL,
                          "detail": f"accuracy {entry['accuracy']:.2%} vs reference "
                                    f"{ref_acc:.2%}: drop {drop:.2%} (max "
                                    f"{profile.accuracy.max_drop:.2%})"})
        else:
            gates.append({"gate": "accuracy", "status": SKIP, "detail": "no labels"})
    else:
        entry["parity"] = None
        gates.append({"gate": "parity", "status": SKIP,
                      "detail": "no reference logits (give --against model.pt or --reference)"})
        gates.append({"gate": "accuracy", "status": SKIP, "detail": "no reference logits"})
    if emulated:
        gates.append({"gate": "latency", "status": SKIP,
                      "detail": f"p{pct:g} {latency['at_percentile_ms']:.3g} ms {EMULATED_NOTE}; "
                                "the budget applies on a real aarch64 host"})
        gates.append({"gate": "memory", "status": SKIP,
                      "detail": f"{memory['peak_rss_delta_mb']:.1f} MB measured in the QEMU "
                                "process (emulator overhead included); applies natively"})
    else:
        ok = latency["at_percentile_ms"] <= profile.latency.budget_ms
        gates.append({"gate": "latency", "status": PASS if ok else FAIL,
                      "detail": f"p{pct:g} {latency['at_percentile_ms']:.3g} ms at batch "
                                f"{profile.latency.batch_size} (budget "
                                f"{profile.latency.budget_ms:g} ms)"})
        ok = memory["peak_rss_delta_mb"] <= profile.memory.budget_mb
        gates.append({"gate": "memory", "status": PASS if ok else FAIL,
                      "detail": f"peak RSS +{memory['peak_rss_delta_mb']:.1f} MB (budget "
                                f"{profile.memory.budget_mb:g} MB)"})
    entry["gates"] = gates
    entry["passed"] = all(g["status"] != FAIL for g in gates)
    return entry


def failures(report: dict) -> list[str]:
    """One phrase per failed gate, naming the target, the gate and the numbers."""
    return [f"target {e['target']}: {g['gate']} gate failed: {g['detail']}"
            for e in report["targets"] for g in e["gates"] if g["status"] == FAIL]
