"""The validation report: report.json (everything measured) and report.md (for people), and
the small reference set (reference.npz) that a bundle later re-runs on a device."""
from __future__ import annotations

import io
import json

import numpy as np

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
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


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
             "| target | mode | onnxruntime | inputs | accuracy | drop | agreement | max abs diff "
             "| p50 ms | p95 ms | p99 ms | peak RSS MB | passed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in report["targets"]:
        par, lat = e.get("parity") or {}, e["latency"]
        note = f" ({EMULATED_NOTE})" if lat["emulated"] else ""
        lines.append(
            f"| {e['target']} | {e['mode']} | {e['onnxruntime']} ({e['machine']}) | {e['inputs']} "
            f"| {_pct(e['accuracy'])} | {_pct(e.get('accuracy_drop'))} "
            f"| {_pct(par.get('agreement'))} | {par.get('max_abs_diff', 'n/a')} "
            f"| {lat['p50_ms']:.3f}{note} | {lat['p95_ms']:.3f} | {lat['p99_ms']:.3f} "
            f"| {e['memory']['peak_rss_delta_mb']:.1f} | {'yes' if e['passed'] else 'NO'} |")
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
        out[f"{e['target']}.latency_p95_ms"] = e["latency"]["p95_ms"]
    return out
