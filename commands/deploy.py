"""edgeprune export, validate, package and verify: the deployment commands."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

import pipeline
from edgeprune.artifacts import Store
from edgeprune.config import DataConfig, ExportConfig, PackageConfig, ValidateConfig
from edgeprune.errors import GateFailed

from . import render
from .options import Group, JsonOpt, OutOpt, configured


@configured(Group("cfg", "export", ExportConfig))
def export(model: Path = typer.Argument(..., help="A model.pt inside a train/retrain artifact "
                                        "folder."),
           cfg: ExportConfig = None, out_dir: Path = OutOpt, as_json: bool = JsonOpt):
    """Export a model to ONNX (model.onnx: T unrolled; model.step.onnx: one step with the neuron
    state as inputs/outputs) and NIR (model.nir), checked against PyTorch on a probe batch."""
    with render.progress(as_json) as report:
        art, cached = pipeline.export(Store(out_dir), model, cfg, report)
    m = art.metrics
    rows = []
    for name in m["bytes"]:
        p = m["parity"].get(name, {})
        rows.append([name, f"{m['bytes'][name]:,} B",
                     f"{m['bytes_dense'][name]:,} B" if name in m["bytes_dense"] else "-",
                     "-" if m["nodes"][name] is None else str(m["nodes"][name]),
                     f"{m['export_seconds'][name]:.2f} s",
                     f"{p['max_abs_diff']:.2e}" if p else "-",
                     f"{p['prediction_agreement']:.1%}" if p else "-",
                     str(p["spike_mismatches"]) if p else "-"])
    t = render.columns(f"export {art.id} of {art.manifest['inputs'][0]}, T={m['timesteps']}"
                       + render.cached_mark(cached),
                       ["file", "size", "dense size", "nodes", "export time",
                        "max |Δ| vs PyTorch", "same class", "spike mismatches"], rows)
    render.emit(as_json, {"stage": "export", "id": art.id, "cached": cached,
                          "path": str(art.path),
                          "files": {n: str(art.path / n) for n in m["bytes"]}, "metrics": m}, t,
                [f"probe: {m['probe']};  NIR: {m['nir']};  sparsity {m['sparsity']:.1%}",
                 _compaction_line(m.get("compaction")),
                 f"C runtime: {m.get('c_runtime')}"
                 + (f" ({m['c']['weight_bytes']:,} B of weights)" if m.get("c") else ""),
                 f"exported: {art.path}"])


def _compaction_line(c: dict | None) -> str:
    if not c:
        return "compaction: not asked (--no-compact)"
    if not c["applied"]:
        return f"compaction: not applied ({c['reason']})"
    changed = [f"{l['name']} {l['shape_before']}→{l['shape_after']}" for l in c["layers"]
               if l["shape_before"] != l["shape_after"] or l["step_bias"]]
    return (f"compaction: {len(changed)} layer(s) smaller" + (": " + ", ".join(changed)
                                                             if changed else "") +
            f"; exact on the probe ({c['check']['spike_mismatches']} spike mismatches)")


@configured(Group("data", "run", DataConfig, exclude=("train_subset",)),
            Group("cfg", "validate", ValidateConfig))
def validate(model: Path = typer.Argument(..., help="model.onnx (from an export artifact, or "
                                          "any .onnx with input (batch, C, H, W) and output "
                                          "logits)."),
             against: Optional[Path] = typer.Option(None, "--against", help="The model.pt it "
                                                    "was exported from: parity and accuracy "
                                                    "drop vs PyTorch."),
             reference: Optional[Path] = typer.Option(None, "--reference", help="A "
                                                      "reference.npz (inputs, logits[, labels]) "
                                                      "as stored in bundles, instead of "
                                                      "--data/--against."),
             data: DataConfig = None, cfg: ValidateConfig = None, out_dir: Path = OutOpt,
             as_json: bool = JsonOpt):
    """Validate an ONNX model on target profiles: parity, accuracy, latency, memory; stores a
    validate artifact (report.json, report.md) and exits 1 when a gate fails."""
    failed = None
    with render.progress(as_json) as report:
        try:
            art, cached = pipeline.validate(Store(out_dir), model, cfg, against=against,
                                            reference=reference, data=data, report=report)
        except GateFailed as e:  # the report is stored: show it, then exit 1
            if getattr(e, "artifact", None) is None:
                raise
            failed, art, cached = e, e.artifact, False
    report_ = json.loads(art.file("report.json").read_text())
    render.emit(as_json, {"stage": "validate", "id": art.id, "cached": cached,
                          "path": str(art.path), "passed": report_["passed"],
                          "metrics": art.metrics, "report": report_},
                target_table(report_, f"validate {art.id}" + render.cached_mark(cached)),
                [*gate_lines(report_), f"report: {art.path / 'report.md'}"])
    if failed is not None:
        raise failed


def target_table(report: dict, title: str):
    """One row per target; narrow enough for an 80-column CI log."""
    mark = {"pass": "[green]ok[/]", "fail": "[red]FAIL[/]", "skipped": "–"}
    pct = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
    rows = []
    for e in report["targets"]:
        par, lat = e.get("parity") or {}, e["latency"]
        how = (f"ORT {e['onnxruntime']}" if e.get("runtime", "onnxruntime") == "onnxruntime"
               else "C runtime")
        d = e.get("dense")
        ratio = e.get("size_ratio_vs_dense")
        vs = ("n/a" if not d else
              f"{e['speedup_vs_dense']:.2f}x\n"
              + (f"1/{1 / ratio:.1f} size\n" if ratio else "")
              + ("" if e.get("accuracy_drop_vs_dense") is None
                 else f"{-e['accuracy_drop_vs_dense']:+.1f} pts"))
        rows.append([e["target"], f"{e['mode']}\n{how}\n{e['inputs']} inputs",
                     f"{pct(e['accuracy'])} ({pct(e.get('accuracy_drop'))})",
                     "n/a" if not par else f"{par['agreement']:.1%}\n|Δ|≤{par['max_abs_diff']:.1g}",
                     _latency_cell(lat),
                     vs,
                     "\n".join(f"{g['gate']} {mark[g['status']]}" for g in e["gates"])])
    return render.columns(title, ["target", "run", "accuracy (drop)", "parity",
                                  "latency ms p50/p95/p99", "vs dense", "gates"], rows)


def gate_lines(report: dict) -> list[str]:
    return [f"[red]{e['target']} {g['gate']}:[/] {g['detail']}" for e in report["targets"]
            for g in e["gates"] if g["status"] == "fail"]


@configured(Group("cfg", "package", PackageConfig))
def package(source: Path = typer.Argument(..., help="A run directory, a validate artifact, or "
                                          "an export artifact that has been validated."),
            cfg: PackageConfig = None,
            out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory for the "
                                                   "package artifact [default: the source's]."),
            as_json: bool = JsonOpt):
    """Build a release bundle (.tar.gz): ONNX models, manifest with lineage and sha256 of every
    file, validation reports, reference inputs/outputs and MODEL_CARD.md; --sign KEY signs its
    manifest (the member manifest.json.sig)."""
    with render.progress(as_json) as report:
        art, cached = pipeline.package(source, cfg, out_dir, report)
    m = art.metrics
    t = render.kv_table(f"package {art.id}" + render.cached_mark(cached),
                        {k: m.get(k) for k in ("bundle", "bytes", "files", "validated_targets",
                                               "lineage", "signed_by")})
    render.emit(as_json, {"stage": "package", "id": art.id, "cached": cached,
                          "bundle": str(art.path / m["bundle"]), "metrics": m}, t,
                [f"bundle: {art.path / m['bundle']}"])


def verify(bundle_path: Path = typer.Argument(..., help="A bundle .tar.gz made by `edgeprune "
                                              "package`."),
           target: Optional[str] = typer.Option(None, "--target", help="Profiles to re-run the "
                                                "reference inputs on [default: the bundle's "
                                                "validated targets that run natively here]."),
           trust: Optional[Path] = typer.Option(None, "--trust", help="The packager's OpenSSH "
                                                "public key (KEY.pub): the bundle must carry "
                                                "its signature (`package --sign`); then the "
                                                "bundle's C runners may run here.",
                                                dir_okay=False),
           rebuild_c: bool = typer.Option(False, "--rebuild-c", help="Compile the bundle's C "
                                          "sources with this host's compiler and run that "
                                          "instead of the bundled runner (the sources come "
                                          "from the bundle: read them if you do not know "
                                          "where it came from)."),
           latency_budget_ms: Optional[float] = typer.Option(
               None, "--latency-budget-ms", help="Override every profile's latency budget "
               "[default: the bundle's recorded profiles', or the --target profiles']."),
           remote: Optional[str] = typer.Option(
               None, "--remote", help="Run on a board over SSH: USER@HOST[:PORT] or a Host "
               "alias of the ssh config (the system OpenSSH client, your keys, BatchMode); the "
               "bundle's targets of the board's ISA run there, and their budgets are gated."),
           ssh_config: Optional[Path] = typer.Option(
               None, "--ssh-config", help="The ssh config file for --remote (ssh -F FILE).",
               dir_okay=False),
           remote_python: Optional[str] = typer.Option(
               None, "--remote-python", help="The board's Python with numpy and onnxruntime "
               "[default: python3]."),
           as_json: bool = JsonOpt):
    """Check a bundle: bounded, safe extraction, its signature (--trust), every sha256, the
    reference inputs re-run on the target against the stored outputs, and the model timed there
    against the profile's latency and memory budgets (not gated under emulation). Runs no native
    code from the bundle without a trusted signature. Needs only numpy and onnxruntime. Exit 1
    on a mismatch or a missed budget."""
    from targets import bundle

    failed = None
    try:
        result = bundle.verify(bundle_path, target, trust=trust, rebuild_c=rebuild_c,
                               latency_budget_ms=latency_budget_ms, remote=remote,
                               ssh_config=str(ssh_config) if ssh_config else None,
                               remote_python=remote_python,
                               progress=lambda text: render.err.print(f"[dim]{text}[/dim]",
                                                                      highlight=False))
    except GateFailed as e:  # the runs were made: show them, then exit 1
        if getattr(e, "result", None) is None:
            raise
        failed, result = e, e.result
    rows = [[f"{r['target']}\n{r['mode']}", f"{r['file']}\n{r['inputs']} inputs",
             f"{r['agreement']:.1%}", f"{r['max_abs_diff']:.2g}", _latency_cell(r["latency"]),
             "yes" if r["passed"] else "NO"] for r in result["runs"]]
    render.emit(as_json, result, render.columns(
        f"verify {bundle_path.name}", ["target", "file", "same class", "max |Δ|",
                                       "latency ms p50/p95/p99", "ok"], rows),
                [f"{result['files_checked']} files match their sha256"
                 + (f"; signed by trusted key {result['signed_by']}" if result["signed_by"]
                    else ""),
                 *(f"{r['target']} {g['gate']}: {g['detail']}" for r in result["runs"]
                   for g in r["gates"]),
                 *(f"left out {s['target']}: {s['reason']}" for s in result["skipped"])])
    if failed is not None:
        raise failed


def _latency_cell(lat: dict | None) -> str:
    if lat is None:
        return "-"  # a file checked for its outputs only
    return (f"{lat['p50_ms']:.3g}/{lat['p95_ms']:.3g}/{lat['p99_ms']:.3g}"
            + ("\n[yellow]emulated — not indicative[/]" if lat["emulated"] else ""))
