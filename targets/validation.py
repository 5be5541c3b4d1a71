"""Validation of one exported model on a list of targets: parity with the reference logits,
accuracy and its drop, latency percentiles, peak memory, deployable size, and the gates over
them. A target runs ONNX Runtime (the ONNX file) or the C runtime (the export's C sources).
With `Extras`, every target also runs the dense model the ticket came from (same inputs, same
run: speed-up, size ratio, accuracy drop in points, and their gates) and the int8 model.

Pure computation over numpy arrays; where the reference logits come from (PyTorch, a bundle) is
the caller's business, so this module stays torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgeprune.errors import UserError

from . import c_target, mcu_target, registry, runtime
from .modelfile import ModelInfo
from .profiles import Profile

EMULATED_NOTE = "emulated — not indicative"
PASS, FAIL, SKIP = "pass", "fail", "skipped"


@dataclass
class Validation:
    report: dict  # JSON-ready: model, data, reference, one entry per target, passed
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # target name -> logits
    int8_outputs: dict[str, np.ndarray] = field(default_factory=dict)  # the int8 model's


@dataclass
class Dense:
    """The dense model a ticket came from, as exported for the same targets."""

    artifact: str  # its export artifact id
    onnx: ModelInfo | None  # for onnxruntime targets
    c_sources: Path | None  # for c targets (None: the C runtime cannot express it)


@dataclass
class Extras:
    """What else a validation runs besides the model itself (all optional)."""

    c_sources: Path | None = None  # the ticket's C runtime, for c targets
    dense: Dense | None = None  # the dense model, measured on every target in the same run
    dense_note: str | None = None  # why there is none
    int8: ModelInfo | None = None  # the int8-weight model, tried on onnxruntime targets
    int8_required: bool = False  # a failing int8 model fails the validation (exit 1)
    keep: Path | None = None  # where c targets leave their validated runner and library
    scratch: Path | None = None  # where runs keep their temporary folders (None: system temp)


def batch_size(inputs: np.ndarray) -> int:
    return inputs.shape[1] if inputs.ndim == 5 else inputs.shape[0]


def take(inputs: np.ndarray, n: int) -> np.ndarray:
    """The first n inputs (along axis 1 for spike input (T, N, ...))."""
    return inputs[:, :n] if inputs.ndim == 5 else inputs[:n]


def _run(profile: Profile, platform, onnx: ModelInfo | None, c_sources: Path | None,
         what: str, inputs: np.ndarray, progress, scratch: Path | None,
         keep: Path | None = None) -> runtime.TargetRun:
    rt = registry.runtime_of(profile)
    return rt.run(rt.model(profile, onnx, c_sources, what), profile, platform, inputs,
                  keep=keep, progress=progress, scratch=scratch)


def validate(info: ModelInfo, profiles: list[Profile], inputs: np.ndarray,
             labels: np.ndarray | None = None, reference: np.ndarray | None = None,
             reference_source: str | None = None,
             progress: Callable[[str], None] = lambda m: None,
             extras: Extras | None = None) -> Validation:
    """Run `inputs` through the model on every target and gate the results; with `extras`,
    also the dense model (same target, same inputs) and the int8 model."""
    extras = extras or Extras()
    n_all = batch_size(inputs)
    if labels is not None and len(labels) != n_all:
        raise UserError(f"{len(labels)} labels for {n_all} inputs")
    if reference is not None and reference.shape[0] != n_all:
        raise UserError(f"the reference has logits for {reference.shape[0]} inputs, the data "
                        f"has {n_all}: they must come from the same inputs")
    shared: dict = {}  # what the targets' platforms set up once (the emulator)
    entries, outputs, int8_outputs = [], {}, {}
    for profile in profiles:
        rt, pf = registry.runtime_of(profile), registry.platform_for(profile, shared)
        most = pf.max_inputs(profile)
        n = min(n_all, most) if most else n_all
        # profile.name is a plain name (a Profile checks it): the folder stays inside keep
        keep = extras.keep / profile.name if extras.keep and rt.binaries else None
        run = _run(profile, pf, info, extras.c_sources, "model", take(inputs, n), progress,
                   extras.scratch, keep)
        outputs[profile.name] = run.outputs
        entry = _measure(profile, run, n, labels, reference, info)
        entry["runtime"] = rt.name
        entry["setup_seconds"] = rt.setup_seconds(pf)
        if extras.int8 is not None and rt.runs_onnx:
            progress(f"{profile.name}: the int8 model")
            q = rt.run(extras.int8.path, profile, pf, take(inputs, n), progress=progress,
                       scratch=extras.scratch)
            entry["int8"] = _int8(profile, q, n, labels, reference, extras)
            entry["gates"].append(entry["int8"].pop("gate"))
            int8_outputs[profile.name] = q.outputs
        _vs_dense(profile, pf, entry, run, n, labels, inputs, progress, extras)
        entry["passed"] = all(g["status"] != FAIL for g in entry["gates"])
        if entries:  # how far this target is from the first one (e.g. ARM64 vs x86-64 ORT)
            first = outputs[entries[0]["target"]]
            m = min(len(first), n)
            entry["vs_first_target"] = {"target": entries[0]["target"], "inputs": m,
                                        **parity(run.outputs[:m], first[:m])}
        entries.append(entry)
    report = {"model": info.to_dict(), "inputs": n_all,
              "reference": {"source": reference_source if reference is not None else None},
              "targets": entries, "passed": all(e["passed"] for e in entries)}
    return Validation(report, outputs, int8_outputs)


def parity(a: np.ndarray, b: np.ndarray, tol: float | None = None) -> dict:
    """How far logits `a` are from `b`: same-class share, the largest difference, how many
    inputs differ beyond float32 summation noise (a spike flipped), and (with `tol`) the share
    of inputs whose logits all lie within it."""
    d = np.abs(a.astype(np.float64) - b).reshape(len(a), -1).max(1) if a.size else np.zeros(0)
    out = {"agreement": float(np.mean(a.argmax(1) == b.argmax(1))) if len(a) else 1.0,
           "max_abs_diff": float(d.max()) if d.size else 0.0,
           "inputs_beyond_1e-4": int((d > 1e-4).sum())}
    if tol is not None:
        out["within_tolerance"] = float(np.mean(d <= tol)) if d.size else 1.0
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


def _int8(profile: Profile, q: runtime.TargetRun, n: int, labels, reference,
          extras: Extras) -> dict:
    """The int8 model on this target: kept where it agrees with the reference as the fp32
    model must (min_agreement) and loses no more accuracy than the profile allows. Its logits
    move by design (weights rounded, so near-threshold spikes flip): max |Δlogit| is reported,
    not gated."""
    out = {"file_bytes": extras.int8.bytes,
           "latency_p50_ms": float(np.percentile(q.result["latencies_ms"], 50)),
           "accuracy": _accuracy(q.outputs, labels[:n]) if labels is not None else None}
    problems = []
    if reference is not None:
        par = parity(q.outputs, reference[:n])
        out["parity"] = par
        if par["agreement"] < profile.parity.min_agreement:
            problems.append(f"agreement {par['agreement']:.2%} < "
                            f"{profile.parity.min_agreement:.2%}")
        bound = profile.parity.int8_max_abs_logit_diff
        if bound > 0 and par["max_abs_diff"] > bound:
            problems.append(f"max |Δlogit| {par['max_abs_diff']:.3g} > {bound:g}")
        if labels is not None:
            drop = _accuracy(reference[:n], labels[:n]) - out["accuracy"]
            out["accuracy_drop"] = drop
            if drop > profile.accuracy.max_drop + 1e-12:
                problems.append(f"accuracy drop {drop:.2%} > {profile.accuracy.max_drop:.2%}")
    else:
        problems.append("no reference logits to judge it by")
    out["kept"] = not problems
    detail = (f"int8 weights kept ({extras.int8.bytes:,} B)" if not problems else
              "int8 weights not kept, fp32 ships: " + "; ".join(problems))
    status = PASS if not problems else (FAIL if extras.int8_required else SKIP)
    out["gate"] = {"gate": "int8", "status": status, "detail": detail}
    return out


def _vs_dense(profile: Profile, platform, entry: dict, run: runtime.TargetRun, n: int, labels,
              inputs: np.ndarray, progress, extras: Extras) -> None:
    """Measure the dense model on the same target with the same inputs; add the comparison
    and its two gates (speed-up, accuracy drop in points) to `entry`."""
    d = extras.dense
    if d is None:
        why = extras.dense_note or "no dense model given"
        entry["dense"] = None
        entry["gates"] += [{"gate": "speedup", "status": SKIP, "detail": why},
                           {"gate": "accuracy vs dense", "status": SKIP, "detail": why}]
        return
    progress(f"{profile.name}: the dense model (export {d.artifact})")
    dr = _run(profile, platform, d.onnx, d.c_sources, "dense model", take(inputs, n), progress,
              extras.scratch)
    dense_p50 = float(np.percentile(dr.result["latencies_ms"], 50))
    p50 = entry["latency"]["p50_ms"]
    dense_bytes = dr.result.get("deploy_bytes", d.onnx.bytes if d.onnx else None)
    dense_acc = _accuracy(dr.outputs, labels[:n]) if labels is not None else None
    entry["dense"] = {"artifact": d.artifact, "latency_p50_ms": dense_p50,
                      "latency_p95_ms": float(np.percentile(dr.result["latencies_ms"], 95)),
                      "file_bytes": dense_bytes, "accuracy": dense_acc}
    entry["dense_latency_p50_ms"] = dense_p50
    entry["speedup_vs_dense"] = dense_p50 / p50 if p50 > 0 else None
    entry["size_ratio_vs_dense"] = entry["file_bytes"] / dense_bytes if dense_bytes else None
    entry["dense_accuracy"] = dense_acc
    gate = profile.dense
    sp = entry["speedup_vs_dense"]
    if entry["latency"]["emulated"]:
        entry["gates"].append({"gate": "speedup", "status": SKIP,
                               "detail": f"{sp:.2f}x vs dense {EMULATED_NOTE}"})
    elif gate.min_speedup <= 0:
        entry["gates"].append({"gate": "speedup", "status": SKIP,
                               "detail": f"{sp:.2f}x vs dense (p50 {p50:.3g} vs {dense_p50:.3g} "
                                         "ms); no minimum set"})
    else:
        ok = sp >= gate.min_speedup
        entry["gates"].append({"gate": "speedup", "status": PASS if ok else FAIL,
                               "detail": f"{sp:.2f}x vs dense (p50 {p50:.3g} vs {dense_p50:.3g} "
                                         f"ms; min {gate.min_speedup:g}x)"})
    if dense_acc is None or entry["accuracy"] is None:
        entry["accuracy_drop_vs_dense"] = None
        entry["gates"].append({"gate": "accuracy vs dense", "status": SKIP,
                               "detail": "no labels"})
        return
    drop = (dense_acc - entry["accuracy"]) * 100.0
    entry["accuracy_drop_vs_dense"] = drop
    ok = drop <= gate.max_accuracy_drop + 1e-9
    entry["gates"].append({"gate": "accuracy vs dense", "status": PASS if ok else FAIL,
                           "detail": f"ticket {entry['accuracy']:.2%} vs dense {dense_acc:.2%}: "
                                     f"{drop:.2f} points lost (max {gate.max_accuracy_drop:g})"})


def latency_of(profile: Profile, run: runtime.TargetRun) -> dict:
    """The latency percentiles of a target run against the profile's budget."""
    res = run.result
    emulated = run.mode == "emulated"
    lat = np.asarray(res["latencies_ms"], dtype=np.float64)
    pct = profile.latency.percentile
    # The C runner times single images; ONNX Runtime the profile's batch.
    batch = profile.latency.batch_size if res.get("onnxruntime") else 1
    return {"batch_size": batch, "runs": len(lat),
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean()),
            "percentile": pct, "at_percentile_ms": float(np.percentile(lat, pct)),
            "budget_ms": profile.latency.budget_ms, "emulated": emulated,
            "note": EMULATED_NOTE if emulated else run.mode,
            "session_load_ms": res.get("session_load_ms")}


def memory_of(profile: Profile, run: runtime.TargetRun) -> dict | None:
    """What the model occupies on the target against the profile's budget (None: the run
    measured nothing, as a prebuilt C runner does)."""
    res = run.result
    if "footprint" in res:  # firmware: the flash and RAM of its image, against [mcu]'s budgets
        fp = res["footprint"]
        return {"peak_rss_delta_mb": fp["ram_bytes"] / 2**20, "footprint": fp,
                "method": mcu_target.FOOTPRINT_METHOD, "budget_mb": profile.memory.budget_mb,
                "flash_kb": profile.mcu.flash_kb, "ram_kb": profile.mcu.ram_kb}
    if "static_bytes" in res:  # the C runtime: everything is static, nothing allocated
        return {"peak_rss_delta_mb": res["static_bytes"] / 2**20,
                "method": c_target.STATIC_METHOD, "budget_mb": profile.memory.budget_mb}
    if "rss_peak_bytes" not in res:
        return None
    return {"peak_rss_delta_mb": (res["rss_peak_bytes"] - res["rss_baseline_bytes"]) / 2**20,
            "method": "peak RSS growth of a fresh runner process, from after importing "
                      "onnxruntime and loading the inputs to after the last run ("
                      + res.get("rss_method", "?") + ")"
                      + (" (QEMU process: includes the emulator's code cache)"
                         if run.mode == "emulated" else ""),
            "budget_mb": profile.memory.budget_mb}


def footprint_gates(fp: dict, flash_kb: float, ram_kb: float) -> list[dict]:
    """The flash and RAM gates of a firmware image (mcu_build.footprint) against budgets in KB
    (1 KB = 1024 bytes; 0: not gated); a detail reads "31.2 KB > budget 16 KB (...)" after
    its gate's name. Exact even on an emulated board: the image is the
    device's."""
    gates = []
    for what, used, budget in (("flash", fp["flash_bytes"], flash_kb),
                               ("ram", fp["ram_bytes"], ram_kb)):
        parts = ("text + rodata + data" if what == "flash"
                 else f"data + bss + {fp['stack_bytes']:,} B stack")
        if budget <= 0:
            gates.append({"gate": what, "status": SKIP,
                          "detail": f"{used / 1024:.1f} KB ({used:,} B: {parts}); no budget "
                                    "set"})
            continue
        ok = used <= budget * 1024
        gates.append({"gate": what, "status": PASS if ok else FAIL,
                      "detail": f"{used / 1024:.1f} KB {'<=' if ok else '>'} budget "
                                f"{budget:g} KB ({used:,} B vs {int(budget * 1024):,} B; "
                                f"{parts})"})
    return gates


def budget_gates(profile: Profile, latency: dict, memory: dict | None) -> list[dict]:
    """The latency and memory gates; skipped under emulation, where neither figure is the
    device's, except a firmware image's flash and RAM, which are."""
    pct = latency["percentile"]
    if memory is not None and "footprint" in memory:
        return [{"gate": "latency", "status": SKIP,
                 "detail": f"p{pct:g} {latency['at_percentile_ms']:.3g} ms {EMULATED_NOTE}; "
                           "the budget applies on the device"},
                *footprint_gates(memory["footprint"], memory["flash_kb"], memory["ram_kb"])]
    if latency["emulated"]:
        return [{"gate": "latency", "status": SKIP,
                 "detail": f"p{pct:g} {latency['at_percentile_ms']:.3g} ms {EMULATED_NOTE}; "
                           "the budget applies on a real aarch64 host"},
                {"gate": "memory", "status": SKIP,
                 "detail": ("not measured" if memory is None else
                            f"{memory['peak_rss_delta_mb']:.1f} MB measured in the QEMU process "
                            "(emulator overhead included)") + "; applies natively"}]
    at, budget = latency["at_percentile_ms"], profile.latency.budget_ms
    gates = [{"gate": "latency", "status": PASS if at <= budget else FAIL,
              "detail": f"p{pct:g} {at:.3g} ms {'<=' if at <= budget else '>'} budget "
                        f"{budget:g} ms at batch {latency['batch_size']}"}]
    if memory is None:
        gates.append({"gate": "memory", "status": SKIP,
                      "detail": "not measured for a prebuilt runner (--rebuild-c measures it)"})
    else:
        mb, most = memory["peak_rss_delta_mb"], profile.memory.budget_mb
        gates.append({"gate": "memory", "status": PASS if mb <= most else FAIL,
                      "detail": f"{mb:.1f} MB {'<=' if mb <= most else '>'} budget {most:g} MB"})
    return gates


def _measure(profile: Profile, run: runtime.TargetRun, n: int, labels, reference,
             info: ModelInfo) -> dict:
    out, res = run.outputs, run.result
    latency, memory = latency_of(profile, run), memory_of(profile, run)
    entry = {"target": profile.name, "description": profile.description, "isa": profile.isa,
             "mode": run.mode, "command": run.command, "profile": profile.to_dict(),
             "onnxruntime": res["onnxruntime"], "machine": res["machine"],
             "python": res["python"], "providers": res["providers"], "inputs": n,
             "file_bytes": res.get("deploy_bytes", info.bytes),
             "file_bytes_note": ("loaded sections (text+rodata+data) of model.o + "
                                 "model_weights.o" if "deploy_bytes" in res else "model.onnx"),
             "latency": latency, "memory": memory,
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
    if "compiler" in res:
        entry["c"] = {k: res[k] for k in ("compiler", "flags", "static_link", "object_sizes",
                                          "context_bytes", "weight_bytes")}
        entry["c"]["layer_profile"] = res.get("layer_profile")
    if "icount_instructions" in res:  # an emulated board: what it executed, named as such
        entry["icount_instructions"] = res["icount_instructions"]
    gates += budget_gates(profile, latency, memory)
    entry["gates"] = gates
    entry["passed"] = all(g["status"] != FAIL for g in gates)
    return entry


def failures(report: dict) -> list[str]:
    """One phrase per failed gate, naming the target, the gate and the numbers."""
    return [f"target {e['target']}: {g['gate']} gate failed: {g['detail']}"
            for e in report["targets"] for g in e["gates"] if g["status"] == FAIL]
