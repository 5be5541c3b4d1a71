"""MODEL_CARD.md for a bundle: Hugging Face-style YAML front matter plus the SNN facts.

Every value comes from the lineage (artifact configs and metrics), the ONNX metadata or the
validation reports; whatever none of them records (e.g. no search stage yet) is "n/a", never a
default guessed here. YAML is written as JSON scalars, which YAML reads unchanged.
"""
from __future__ import annotations

import json

from .report import cost_markdown

NA = "n/a"


def _dig(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _first(lineage: list[dict], stage: str, *paths: tuple) -> object:
    """The first value found at any of `paths` in the config or metrics of a `stage` entry."""
    for entry in lineage:
        if entry["stage"] != stage:
            continue
        for path in paths:
            for section in ("config", "metrics"):
                v = _dig(entry.get(section, {}), *path)
                if v is not None:
                    return v
    return None


NEURON_NAMES = {"lif": "LIF (Norse LIFBox, no synaptic current)",
                "cuba_lif": "current-based LIF (Norse LIFCell)",
                "decay_lif": "decay-form LIF (snnTorch Leaky/Synaptic)",
                "li": "leaky integrator readout", "integrator": "integrator"}


def _neuron_model(neuron) -> str | None:
    if not isinstance(neuron, dict):
        return None
    if neuron.get("layers"):  # an imported model: each neuron layer's kind and parameters
        parts = []
        for d in neuron["layers"]:
            p = d.get("neuron", {k: v for k, v in d.items() if k != "type"})
            parts.append(f"{NEURON_NAMES.get(d.get('type'), d.get('type'))}: " + ", ".join(
                f"{k}={v}" for k, v in p.items() if k not in ("surrogate", "alpha")))
        return "; ".join(parts)
    if neuron.get("tau_syn_inv") is not None:
        return (f"{NEURON_NAMES['cuba_lif']}: " + ", ".join(
            f"{k}={neuron[k]}" for k in ("tau_mem_inv", "tau_syn_inv", "v_th", "v_reset",
                                         "surrogate") if k in neuron))
    return (f"{NEURON_NAMES['lif']}: " + ", ".join(
        f"{k}={neuron[k]}" for k in ("tau_mem_inv", "v_th", "v_reset", "surrogate")
        if k in neuron))


def facts(lineage: list[dict], meta: dict, validations: list[dict]) -> dict:
    """The SNN fields of the card, each a value or "n/a"."""
    model_cfg = _first(lineage, "train", ("model",)) or {}
    neuron = meta.get("neuron") or model_cfg.get("neuron")
    sparsity = _dig(meta, "sparsity", "total")
    if sparsity is None:
        sparsity = _first(lineage, "retrain", ("sparsity",)) or _first(lineage, "search", ("sparsity",))
    targets = []
    for v in validations:
        for e in v["report"]["targets"]:
            targets.append({"target": e["target"], "isa": e["isa"], "mode": e["mode"],
                            "onnxruntime": e["onnxruntime"], "passed": e["passed"],
                            "accuracy": e["accuracy"], "inputs": e["inputs"],
                            "validate_id": v["id"]})
    tolerances = {}
    for v in validations:
        for e in v["report"]["targets"]:
            tolerances[e["target"]] = e["profile"]["parity"]
    f = {
        "timesteps": meta.get("timesteps") or model_cfg.get("timesteps"),
        "neuron_model": _neuron_model(neuron),
        "reset": neuron.get("reset") if isinstance(neuron, dict) else None,
        "encoding": meta.get("encoding") or model_cfg.get("encoding"),
        "architecture": model_cfg.get("arch"),
        "dataset": _first(lineage, "train", ("data", "name")),
        "ticket_method": _first(lineage, "search", ("method",), ("search", "method")),
        "search_timesteps": _first(lineage, "search", ("timesteps_search",), ("t_prime",),
                                   ("search", "timesteps")),
        "rewind_point": _first(lineage, "search", ("rewind_epoch",), ("rewind",),
                               ("search", "rewind_epoch")),
        "sparsity": sparsity,
        "parity_tolerance": tolerances or None,
        "targets_validated": targets or None,
        "cost": _cost(validations),
    }
    return {k: (NA if v is None else v) for k, v in f.items()}


def _report_cost(validations: list[dict]) -> dict | None:
    """The cost model of the first validation that counted one (all count the same export)."""
    return next((v["report"]["cost"] for v in validations if v["report"].get("cost")), None)


def _cost(validations: list[dict]) -> dict | None:
    """The cost model's totals per inference and their ratio to the dense model."""
    c = _report_cost(validations)
    if not c:
        return None
    m, r = c["model"], c.get("ratio_vs_dense") or {}
    return {"effective_synops": m["effective_synops"], "effective_acs": m["effective_acs"],
            "effective_macs": m["effective_macs"], "energy_pj": m["energy_pj"],
            "activation_sparsity": m["activation_sparsity"],
            "effective_synops_vs_dense": r.get("effective_synops"),
            "energy_vs_dense": r.get("energy_pj"), "energy_constants": c["energy"]}


def render(name: str, lineage: list[dict], meta: dict, validations: list[dict],
           files: list[str]) -> str:
    f = facts(lineage, meta, validations)
    y = json.dumps
    lines = ["---", "library_name: onnx", "pipeline_tag: image-classification", "tags:"]
    lines += [f"- {t}" for t in ("spiking-neural-network", "snn", "lottery-ticket", "pruning",
                                 "onnx", "edgeprune")]
    if f["dataset"] != NA:
        lines += ["datasets:", f"- {y(f['dataset'])}"]
    lines += ["metrics:", "- accuracy", "model-index:", f"- name: {y(name)}", "  results:"]
    for t in f["targets_validated"] if f["targets_validated"] != NA else []:
        if t["accuracy"] is None or not t["passed"]:
            continue  # a failed validation is listed below, not advertised as a result
        label = (f"accuracy, onnxruntime {t['onnxruntime']} {t['target']}, "
                 f"{t['inputs']} test inputs")
        lines += ["  - task: {type: image-classification}",
                  f"    dataset: {{name: {y(f['dataset'])}, type: {y(f['dataset'])}}}",
                  "    metrics:",
                  f"    - {{type: accuracy, value: {t['accuracy']:.6f}, "
                  f"name: {y(label)}}}"]
    lines.append("edgeprune:")
    for key in ("timesteps", "neuron_model", "reset", "encoding", "architecture",
                "ticket_method", "search_timesteps", "rewind_point", "sparsity",
                "parity_tolerance", "targets_validated", "cost"):
        lines.append(f"  {key}: {y(f[key], sort_keys=True)}")
    lines += ["---", "", f"# {name}", "",
              "A spiking neural network compressed by edgeprune and exported to ONNX with its "
              "timesteps unrolled. Feed raw [0, 1] pixels (normalization is inside the graph); "
              "the output `logits` are summed over T, the prediction is their argmax.", "",
              "| field | value |", "|---|---|"]
    labels = {"timesteps": "timesteps T", "neuron_model": "neuron model", "reset": "reset",
              "encoding": "input encoding", "architecture": "architecture", "dataset": "dataset",
              "ticket_method": "ticket method", "search_timesteps": "search timesteps T′",
              "rewind_point": "rewind point", "sparsity": "sparsity"}
    for key, label in labels.items():
        v = f[key]
        lines.append(f"| {label} | {v:.2%} |" if key == "sparsity" and isinstance(v, float)
                     else f"| {label} | {v} |")
    lines += ["", "## Validated targets", "",
              "| target | mode | onnxruntime | accuracy | parity tolerance | passed |",
              "|---|---|---|---|---|---|"]
    for t in f["targets_validated"] if f["targets_validated"] != NA else []:
        tol = f["parity_tolerance"].get(t["target"], {}) if f["parity_tolerance"] != NA else {}
        acc = NA if t["accuracy"] is None else f"{t['accuracy']:.2%}"
        lines.append(f"| {t['target']} | {t['mode']} | {t['onnxruntime']} | {acc} | "
                     f"logits within {tol.get('max_abs_logit_diff', NA)} on ≥ "
                     f"{tol.get('min_within_tolerance', NA)} of inputs, same class on ≥ "
                     f"{tol.get('min_agreement', NA)} | {'yes' if t['passed'] else 'no'} |")
    lines += ["", "Emulated targets ran under QEMU (the aarch64 ONNX Runtime, or the C runtime "
              "cross-compiled for aarch64): their parity is real, their latency is not "
              "indicative.", ""]
    lines += compression_section(validations)
    # [1:]: the section above ends with a blank line already
    lines += cost_markdown(_report_cost(validations))[1:] + [""]
    lines += ["## Lineage", ""]
    for e in lineage:
        lines.append(f"- {e['stage']} `{e['id']}`" + (" (not in the run directory)"
                                                     if e.get("missing") else ""))
    lines += ["", "## Files", ""] + [f"- `{n}`" for n in files] + [
        "", "Check them with `edgeprune verify BUNDLE.tar.gz` (sha256 of every file, then the "
        "reference inputs re-run on the target).", ""]
    return "\n".join(lines)


def compression_section(validations: list[dict]) -> list[str]:
    """Dense model vs this ticket on each target, measured in the same validation run."""
    rows = []
    for v in validations:
        for e in v["report"]["targets"]:
            d = e.get("dense")
            if not d:
                continue
            emu = " (emulated)" if e["latency"]["emulated"] else ""
            sp, ratio = e.get("speedup_vs_dense"), e.get("size_ratio_vs_dense")
            drop = e.get("accuracy_drop_vs_dense")
            pct = lambda a: NA if a is None else f"{a:.2%}"  # noqa: E731
            rows.append(f"| {e['target']} | {e.get('runtime', 'onnxruntime')} "
                        f"| {pct(e['accuracy'])} | {pct(d['accuracy'])} "
                        f"| {NA if drop is None else f'{drop:.2f}'} "
                        f"| {e['file_bytes']:,} | {d['file_bytes']:,} "
                        f"| {NA if not ratio else f'1/{1 / ratio:.1f}'} "
                        f"| {e['latency']['p50_ms']:.4f}{emu} | {d['latency_p50_ms']:.4f} "
                        f"| {NA if sp is None else f'{sp:.2f}x'} |")
    if not rows:
        notes = {v["report"].get("dense_note") for v in validations} - {None}
        return ["## What the compression bought", "",
                f"Not measured: {'; '.join(sorted(notes)) or 'no dense model'}.", ""]
    return ["## What the compression bought", "",
            "The dense model this ticket came from, measured on the same target in the same "
            "validation run. Size: model.onnx for ONNX Runtime; for the C runtime the loaded "
            "code and const weights of its objects.", "",
            "| target | runtime | accuracy | dense accuracy | points lost | size B | dense size B "
            "| size ratio | p50 ms | dense p50 ms | speed-up |",
            "|---|---|---|---|---|---|---|---|---|---|---|", *rows, ""]
