"""The validation report: report.json (everything measured) and report.md (for people), and
the small reference set (reference.npz) that a bundle later re-runs on a device."""
from __future__ import annotations

import io
import json

import numpy as np

from . import c_profile
from .validation import EMULATED_NOTE, FAIL, Validation, take

REFERENCE_INPUTS = 16  # enough to catch a wrong kernel, small enough to re-run under QEMU


def reference_npz(v: Validation, inputs: np.ndarray, labels: np.ndarray | None,
                  reference: np.ndarray | None, reference_source: str | None) -> bytes:
    """inputs/labels/expected logits for the first few inputs, plus each target's ORT logits.

    The expected logits are the reference's (PyTorch) when there is one, else the first
    target's ONNX Runtime logits, and `source` says which."""
    k = min([REFERENCE_INPUTS] + [len(o) for o in v.outputs.values()])
    first = v.report["targets"][0]["target"]
    arrays = {"inputs": take(inputs, k).astype(np.float32),
              "logits": (reference if reference is not None else v.outputs[first])[:k]
              .astype(np.float32),
              "source": np.array(reference_source if reference is not None
                                 else f"onnxruntime:{first}")}
    if labels is not None:
        arrays["labels"] = np.asarray(labels[:k], dtype=np.int64)
    for name, out in v.outputs.items():
        arrays[f"onnxruntime:{name}"] = out[:k].astype(np.float32)
    for name, out in v.int8_outputs.items():  # what a device must reproduce with int8 weights
        arrays[f"int8:{name}"] = out[:k].astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


COST_RATIOS = ("effective_synops", "synops", "energy_pj")


def cost(ticket, dense) -> dict | None:
    """The cost model's totals (export/cost.py, recorded by each export) of the model and of the
    dense model, and their ratios; None for a loose file or an export made before the cost
    pass. Artifacts are duck-typed (anything with `.metrics`): this module stays torch-free."""
    t = (ticket.metrics.get("cost") or {}) if ticket else {}
    if not t:
        return None
    d = (dense.metrics.get("cost") or {}) if dense else {}
    out = {"model": t["total"], "energy": t["energy"], "dense": d.get("total")}
    if out["dense"]:
        out["ratio_vs_dense"] = {k: (t["total"][k] / d["total"][k] if d["total"][k] else None)
                                 for k in COST_RATIOS}
    return out


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=True, default=str) + "\n"


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.2%}"


def to_markdown(report: dict) -> str:
    m = report["model"]
    meta = m.get("metadata", {})
    lines = ["# Validation report", "",
             f"- model: `{m['path']}` ({m['bytes']:,} bytes, sha256 `{m['sha256'][:16]}…`)",
             f"- T: {meta.get('timesteps', 'n/a')}, encoding: {meta.get('encoding', 'n/a')}, "
             f"sparsity: {_sparsity(meta)}",
             f"- inputs: {report['inputs']}; reference logits: "
             f"{report['reference']['source'] or 'none (parity and accuracy gates skipped)'}",
             f"- result: **{'PASS' if report['passed'] else 'FAIL'}**", "",
             "| target | mode | runtime | inputs | accuracy | drop | agreement | max abs diff "
             "| p50 ms | p95 ms | p99 ms | peak RSS MB | passed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in report["targets"]:
        par, lat = e.get("parity") or {}, e["latency"]
        note = f" ({EMULATED_NOTE})" if lat["emulated"] else ""
        lines.append(
            f"| {e['target']} | {e['mode']} | {_runtime(e)} ({e['machine']}) | {e['inputs']} "
            f"| {_pct(e['accuracy'])} | {_pct(e.get('accuracy_drop'))} "
            f"| {_pct(par.get('agreement'))} | {par.get('max_abs_diff', 'n/a')} "
            f"| {lat['p50_ms']:.3f}{note} | {lat['p95_ms']:.3f} | {lat['p99_ms']:.3f} "
            f"| {e['memory']['peak_rss_delta_mb']:.1f} | {'yes' if e['passed'] else 'NO'} |")
    lines += ["", "## What the compression bought (vs the dense model, same target, same run)",
              ""]
    if any(e.get("dense") for e in report["targets"]):
        lines += ["| target | runtime | size B | dense size B | size ratio | p50 ms | dense p50 ms "
                  "| speed-up | accuracy | dense accuracy | drop (points) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in report["targets"]:
            d = e.get("dense")
            if not d:
                continue
            emu = " (emulated)" if e["latency"]["emulated"] else ""
            lines.append(
                f"| {e['target']} | {e.get('runtime', 'onnxruntime')} | {e['file_bytes']:,} "
                f"| {d['file_bytes']:,} | {_ratio(e.get('size_ratio_vs_dense'))} "
                f"| {e['latency']['p50_ms']:.4f}{emu} | {d['latency_p50_ms']:.4f} "
                f"| {_x(e.get('speedup_vs_dense'))} | {_pct(e['accuracy'])} "
                f"| {_pct(d['accuracy'])} | {_pts(e.get('accuracy_drop_vs_dense'))} |")
        lines += ["", "Size: model.onnx for ONNX Runtime; for the C runtime the loaded sections "
                  "(code + const weights) of model.o + model_weights.o."]
    else:
        lines.append(f"- not measured: {report.get('dense_note') or 'no dense model'}")
    int8 = [e for e in report["targets"] if e.get("int8")]
    if int8:
        lines += ["", "## int8 weights", ""]
        for e in int8:
            q = e["int8"]
            par = q.get("parity") or {}
            lines.append(f"- {e['target']}: {'kept' if q['kept'] else 'not kept'} — "
                         f"{q['file_bytes']:,} B, accuracy {_pct(q['accuracy'])}, agreement "
                         f"{_pct(par.get('agreement'))}, max |Δlogit| "
                         f"{par.get('max_abs_diff', float('nan')):.3g}, p50 "
                         f"{q['latency_p50_ms']:.4f} ms")
    lines += cost_markdown(report.get("cost"))
    for e in report["targets"]:
        lines += c_profile.markdown((e.get("c") or {}).get("layer_profile"), e["target"])
    lines += ["", "## Gates", ""]
    for e in report["targets"]:
        for g in e["gates"]:
            mark = {"pass": "pass", "fail": "**FAIL**", "skipped": "skipped"}[g["status"]]
            lines.append(f"- {e['target']} / {g['gate']}: {mark} — {g['detail']}")
    cross = [e for e in report["targets"] if "vs_first_target" in e]
    if cross:
        lines += ["", "## Between targets", ""]
        for e in cross:
            c = e["vs_first_target"]
            lines.append(f"- {e['target']} vs {c['target']} on {c['inputs']} inputs: agreement "
                         f"{c['agreement']:.2%}, max |Δlogit| {c['max_abs_diff']:.3g}")
    lines += ["", "Latency: warm-up runs first, then percentiles over the timed runs at the "
              "profile's batch size. Memory: " + report["targets"][0]["memory"]["method"] + ".",
              ""]
    return "\n".join(lines)


COST_COLUMNS = (("SynOps", "synops"), ("ACs", "acs"), ("MACs", "macs"),
                ("effective SynOps", "effective_synops"), ("effective ACs", "effective_acs"),
                ("effective MACs", "effective_macs"))


def cost_markdown(c: dict | None) -> list[str]:
    """The cost model's section: totals per inference of the model and the dense model, and
    the ratio."""
    lines = ["", "## Cost model (per inference, on the export's probe inputs)", ""]
    if not c:
        return lines + ["- not counted: a loose model file, or an export made before the cost "
                        "model (export again)"]
    lines += ["| model | " + " | ".join(h for h, _ in COST_COLUMNS)
              + " | activation sparsity | connection sparsity | energy nJ |",
              "|---" * (len(COST_COLUMNS) + 4) + "|"]
    for who, t in (("this model", c["model"]), ("dense", c.get("dense"))):
        if t:
            lines.append(f"| {who} | " + " | ".join(f"{t[k]:,.0f}" for _, k in COST_COLUMNS)
                         + f" | {_pct(t['activation_sparsity'])} "
                         f"| {_pct(t['connection_sparsity'])} | {t['energy_pj'] / 1e3:,.2f} |")
    r = c.get("ratio_vs_dense")
    if r:
        lines += ["", f"- vs dense: effective SynOps {_ratio(r['effective_synops'])}, "
                      f"energy {_ratio(r['energy_pj'])}"]
    e = c["energy"]
    lines += [f"- energy: effective ACs x {e['pj_per_ac']:g} pJ + effective MACs x "
              f"{e['pj_per_mac']:g} pJ ({e['source']}); memory traffic not included",
              "- definitions: NeuroBench's (SynOps, effective SynOps, activation and connection "
              "sparsity); per-layer counts in the export's cost.json"]
    return lines


def _runtime(e: dict) -> str:
    return f"onnxruntime {e['onnxruntime']}" if e.get("runtime", "onnxruntime") == "onnxruntime" \
        else "C runtime, " + (e.get("c") or {}).get("compiler", "cc")


def _ratio(v) -> str:
    return "n/a" if v is None else f"{v:.3f} (1/{1 / v:.1f})" if v > 0 else "0"


def _x(v) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def _pts(v) -> str:
    return "n/a" if v is None else f"{v:+.2f}"


def _sparsity(meta: dict) -> str:
    s = meta.get("sparsity")
    if isinstance(s, dict) and isinstance(s.get("total"), (int, float)):
        return f"{s['total']:.2%}"
    return "n/a"


def metrics(report: dict) -> dict:
    """The manifest's metrics: flat numbers `edgeprune ls` can show."""
    first = report["targets"][0]
    out = {"passed": report["passed"], "inputs": report["inputs"],
           "targets": [e["target"] for e in report["targets"]],
           "failed_gates": sum(g["status"] == FAIL for e in report["targets"] for g in e["gates"]),
           "latency_p50_ms": first["latency"]["p50_ms"], "file_bytes": first["file_bytes"]}
    if first.get("parity"):
        out["max_abs_diff"] = max(e["parity"]["max_abs_diff"] for e in report["targets"])
        out["agreement"] = min(e["parity"]["agreement"] for e in report["targets"])
    for e in report["targets"]:
        out[f"{e['target']}.accuracy"] = e["accuracy"]
        out[f"{e['target']}.latency_p50_ms"] = e["latency"]["p50_ms"]
        out[f"{e['target']}.latency_p95_ms"] = e["latency"]["p95_ms"]
        out[f"{e['target']}.file_bytes"] = e["file_bytes"]
        if e.get("dense"):
            for k in ("dense_latency_p50_ms", "speedup_vs_dense", "size_ratio_vs_dense",
                      "dense_accuracy", "accuracy_drop_vs_dense"):
                out[f"{e['target']}.{k}"] = e.get(k)
            out[f"{e['target']}.dense_file_bytes"] = e["dense"]["file_bytes"]
        if e.get("int8"):
            out[f"{e['target']}.int8_kept"] = e["int8"]["kept"]
    out["dense"] = next((e["dense"]["artifact"] for e in report["targets"] if e.get("dense")),
                        None)
    c = report.get("cost")
    if c:
        out["effective_synops"] = c["model"]["effective_synops"]
        out["energy_pj"] = c["model"]["energy_pj"]
        for k in ("effective_synops", "energy_pj"):
            out[f"{k}_ratio_vs_dense"] = (c.get("ratio_vs_dense") or {}).get(k)
    return out


def dense_vs_ticket(report: dict) -> list[dict]:
    """Per target: dense model vs ticket, measured side by side in the validation run."""
    rows = []
    for e in report["targets"]:
        d = e.get("dense") or {}
        rows.append({"target": e["target"], "runtime": e.get("runtime", "onnxruntime"),
                     "emulated": e["latency"]["emulated"],
                     "accuracy": e["accuracy"], "dense_accuracy": d.get("accuracy"),
                     "accuracy_drop_vs_dense": e.get("accuracy_drop_vs_dense"),
                     "size_bytes": e["file_bytes"], "dense_size_bytes": d.get("file_bytes"),
                     "size_ratio_vs_dense": e.get("size_ratio_vs_dense"),
                     "latency_p50_ms": e["latency"]["p50_ms"],
                     "dense_latency_p50_ms": d.get("latency_p50_ms"),
                     "speedup_vs_dense": e.get("speedup_vs_dense")})
    return rows


def vs_dense_onnxruntime(report: dict) -> dict | None:
    """What deploying the ticket gains over the dense model on ONNX Runtime (the dense ONNX file
    a user starts from): each natively timed target of the same ISA and batch size, ticket and
    dense p50 against the first native ONNX Runtime target's dense p50, all measured in this
    validation run. None where no dense model ran natively on ONNX Runtime."""
    def native(e):
        return not e["latency"]["emulated"] and e.get("dense")

    base = next((e for e in report["targets"]
                 if native(e) and e.get("runtime", "onnxruntime") == "onnxruntime"), None)
    if base is None:
        return None
    d = base["dense"]
    ref, batch = d["latency_p50_ms"], base["latency"]["batch_size"]

    def row(e, model, m):  # m: the ticket's entry or its dense part
        p50 = m["latency"]["p50_ms"] if model == "ticket" else m["latency_p50_ms"]
        return {"model": model, "target": e["target"],
                "runtime": e.get("runtime", "onnxruntime"), "accuracy": m["accuracy"],
                "size_ratio": m["file_bytes"] / d["file_bytes"] if d["file_bytes"] else None,
                "p50_ms": p50, "speedup": ref / p50 if p50 else None}

    same = [e for e in report["targets"]
            if native(e) and e["isa"] == base["isa"] and e["latency"]["batch_size"] == batch]
    return {"dense_target": base["target"], "dense_p50_ms": ref, "batch_size": batch,
            "rows": [row(e, "ticket", e) for e in same]
            + [row(e, "dense", e["dense"]) for e in same if e is not base]}
