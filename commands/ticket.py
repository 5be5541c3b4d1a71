"""edgeprune search, retrain and compress: the ticket commands."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

import pipeline
from edgeprune.artifacts import Store
from edgeprune.config import (DataConfig, ExportConfig, ImportConfig, ModelConfig,
                              PackageConfig, RetrainConfig, RunConfig, SearchConfig,
                              TrainConfig, ValidateConfig)
from edgeprune.errors import GateFailed
from targets import report as report_mod

from . import render
from .options import Group, JsonOpt, OutOpt, configured

FromMaskOpt = typer.Option(None, "--from-mask", help="random/reinit: the imp ticket (search "
                           "artifact) to branch off \\[default: one searched first].")
DATA = Group("data", "run", DataConfig)
RUN = Group("run", "run", RunConfig)


@configured(DATA, RUN, Group("cfg", "search", SearchConfig))
def search(model: Path = typer.Argument(..., help="Dense model.pt (or its artifact folder)."),
           from_mask: Optional[Path] = FromMaskOpt, data: DataConfig = None,
           run: RunConfig = None, cfg: SearchConfig = None, out_dir: Path = OutOpt,
           as_json: bool = JsonOpt):
    """Search a winning ticket: writes a mask artifact (mask, rewind weights, log, plot)."""
    with render.progress(as_json) as report:
        art, cached = pipeline.search(Store(out_dir), model, cfg, data, run, from_mask, report)
    render.emit(as_json, {"stage": "search", "id": art.id, "cached": cached,
                          "mask": str(art.path), "metrics": art.metrics},
                search_table(art.metrics, cached), [f"mask: {art.path}"])


def search_table(m: dict, cached: bool):
    return render.columns(
        f"{m['method']} ticket search" + render.cached_mark(cached),
        ["sparsity", "T", "T'", "rewind epoch", "search time", "rounds / EB epoch"],
        [[render.pct(m["sparsity"]), str(m["timesteps"]), str(m["timesteps_search"]),
          str(m["rewind_epoch"]), f"{m['search_seconds']:.1f} s",
          str(m.get("rounds", m.get("eb_epoch", "-")))]])


@configured(DATA, RUN, Group("cfg", "retrain", RetrainConfig))
def retrain(model: Path = typer.Argument(..., help="Dense model.pt the mask was searched on."),
            mask: Path = typer.Option(..., help="Search artifact folder (from `edgeprune "
                                      "search`)."),
            data: DataConfig = None, run: RunConfig = None, cfg: RetrainConfig = None,
            out_dir: Path = OutOpt, as_json: bool = JsonOpt):
    """Retrain a ticket at the full T with its mask held fixed: writes the sparse model.pt."""
    with render.progress(as_json) as report:
        art, cached = pipeline.retrain(Store(out_dir), model, mask, cfg, data, run, report)
    render.emit(as_json, {"stage": "retrain", "id": art.id, "cached": cached,
                          "model": str(art.path / "model.pt"), "metrics": art.metrics},
                ticket_table(art.metrics, cached), [f"ticket: {art.path / 'model.pt'}"])


def ticket_table(m: dict, cached: bool = False):
    st = m.get("search_seconds")
    return render.columns(
        f"{m.get('method')} ticket" + render.cached_mark(cached),
        ["dense acc", "ticket acc", "sparsity", "T", "T'", "search time", "spike rate"],
        [[render.pct(m.get("dense_test_accuracy")), render.pct(m["test_accuracy"]),
          render.pct(m["sparsity"]), str(m["timesteps"]), str(m.get("timesteps_search")),
          "-" if st is None else f"{st:.1f} s", f"{m['mean_spike_rate']:.3f}"]])


def compression_table(rows: list[dict], report: dict):
    """Dense and ticket on two rows per target, one figure per cell: fits 80 columns."""
    def ms(v, emulated):
        if v is None:
            return "n/a"
        return (f"{v:,.0f}" if v >= 100 else f"{v:.3g}") + ("*" if emulated else "")

    def kib(v):
        return "n/a" if v is None else f"{v / 1024:,.1f}"

    out = []
    for r in rows:
        ratio, sp = r["size_ratio_vs_dense"], r["speedup_vs_dense"]
        out.append([r["target"], "dense", render.pct(r["dense_accuracy"]),
                    kib(r["dense_size_bytes"]), ms(r["dense_latency_p50_ms"], r["emulated"]), ""])
        out.append([f"({r['runtime']})", "ticket", render.pct(r["accuracy"]),
                    kib(r["size_bytes"]) + ("" if not ratio else f" (1/{1 / ratio:.1f})"),
                    ms(r["latency_p50_ms"], r["emulated"]), "n/a" if sp is None else f"{sp:.2f}x"])
    title = "dense vs ticket, same target, same run"
    if not any(r["dense_accuracy"] is not None for r in rows):
        title += f" (dense not measured: {report.get('dense_note')})"
    t = render.columns(title, ["target", "model", "acc", "size KiB", "p50 ms", "speed-up"],
                       out)
    if any(r["emulated"] for r in rows):
        t.caption = "* emulated: latency is not indicative"
    return t


RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "c": "C runtime"}


def deploy_table(vs: dict, cost: dict | None):
    """The headline: the ticket on each runtime of this CPU against the dense model on ONNX
    Runtime (the dense ONNX file a user starts from), measured in the same validation run,
    with the cost model's effective-SynOps ratio: fits 80 columns."""
    rows = [[r["model"], f"{RUNTIME_NAMES.get(r['runtime'], r['runtime'])} ({r['target']})",
             render.pct(r["accuracy"]), _ratio(r["size_ratio"]), f"{r['p50_ms']:.3g}",
             "n/a" if r["speedup"] is None else f"{r['speedup']:.2f}x"] for r in vs["rows"]]
    t = render.columns(f"speed-up vs dense ONNX Runtime ({vs['dense_target']}, p50 "
                       f"{vs['dense_p50_ms']:.3g} ms), same run",
                       ["model", "runtime (target)", "acc", "size", "p50 ms", "speed-up"], rows)
    synops = ((cost or {}).get("ratio_vs_dense") or {}).get("effective_synops")
    t.caption = ("effective SynOps: " + ("not counted" if synops is None else
                                         f"{_ratio(synops)} of dense")
                 + f"; batch {vs['batch_size']}")
    return t


def cost_table(cost: dict):
    """The cost model per inference (export/cost.py): dense, ticket, and their ratio."""
    cols = ("effective_synops", "effective_acs", "effective_macs")

    def row(name, t):
        return [name, *(render.count(t[k]) for k in cols), render.pct(t["activation_sparsity"]),
                f"{t['energy_pj'] / 1e3:.3g}"]

    rows = [row("dense", cost["dense"])] if cost.get("dense") else []
    rows.append(row("ticket", cost["model"]))
    r = cost.get("ratio_vs_dense")
    if r:
        rows.append(["ticket/dense", *(_ratio(r.get(k)) for k in cols[:1]), "", "", "",
                     _ratio(r.get("energy_pj"))])
    e = cost["energy"]
    t = render.columns("cost per inference (probe inputs, NeuroBench definitions)",
                       ["model", "eff. SynOps", "eff. ACs", "eff. MACs", "zero spikes",
                        "energy nJ"], rows)
    where = " (45 nm, Horowitz 2014)" if e["source"] != "given" else ""
    t.caption = f"energy: {e['pj_per_ac']:g} pJ/AC, {e['pj_per_mac']:g} pJ/MAC{where}"
    return t


def _ratio(v) -> str:
    return "n/a" if v is None else "0" if v == 0 else f"1/{1 / v:.1f}" if v < 1 else f"{v:.2f}x"


@configured(DATA, RUN, Group("imports", "import", ImportConfig, exclude=("input_shape",
                                                                            "num_classes")),
            Group("model_cfg", "train", ModelConfig), Group("optim", "train", TrainConfig),
            Group("search_cfg", "search", SearchConfig),
            Group("retrain_cfg", "retrain", RetrainConfig),
            Group("export_cfg", "export", ExportConfig, exclude=("timesteps",)),
            Group("validate_cfg", "validate", ValidateConfig),
            Group("package_cfg", "package", PackageConfig))
def compress(
    model: Optional[Path] = typer.Argument(None, help="Dense model.pt, or a NIR file "
                                           "(imported first); without it a dense model is "
                                           "trained first on --data. With --model-def: your "
                                           "state_dict file."),
    package: bool = typer.Option(False, "--package", help="End with a release bundle."),
    model_def: Optional[str] = typer.Option(None, "--model-def", help="Your own Norse or "
                                            "snnTorch model: FILE.py:FUNCTION (its state_dict "
                                            "as MODEL or --state-dict), imported first as by `edgeprune "
                                            "import-model`."),
    state_dict: Optional[Path] = typer.Option(None, "--state-dict", help="Weights for "
                                              "--model-def (loaded without unpickling code)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept a pickled "
                                      "nn.Module as --state-dict (runs code from the file)."),
    from_mask: Optional[Path] = FromMaskOpt,
    data: DataConfig = None, run: RunConfig = None, imports: ImportConfig = None,
    model_cfg: ModelConfig = None, optim: TrainConfig = None, search_cfg: SearchConfig = None,
    retrain_cfg: RetrainConfig = None, export_cfg: ExportConfig = None,
    validate_cfg: ValidateConfig = None, package_cfg: PackageConfig = None,
    out_dir: Path = OutOpt, as_json: bool = JsonOpt,
):
    """Search a winning ticket, retrain it at full T, export it to ONNX (and NIR), validate it
    on each target (exit 1 if a gate fails) and, with --package, bundle it. Trains the dense
    model first when no MODEL is given. Every option of every stage can also come from a
    recipe (--config) table."""
    if model_def and state_dict is None and model is not None:
        model, state_dict = None, model  # `compress w.pt --model-def net.py:build`
    plan = pipeline.Plan(data, run, model_cfg, optim, search_cfg, retrain_cfg, export_cfg,
                         validate_cfg, imports, package_cfg if package else None)
    failed = None
    with render.progress(as_json) as report:
        try:
            result = pipeline.compress(Store(out_dir), plan, model, model_def=model_def,
                                       state_dict=state_dict, allow_pickle=allow_pickle,
                                       from_mask=from_mask, report=report)
        except GateFailed as e:
            failed, result = e, getattr(e, "compressed", None)
            if result is None or "validate" not in result.artifacts:
                raise
    arts = result.artifacts
    paths = {"imported": arts.get("imported") and arts["imported"].path / "model.pt",
             "dense": arts.get("dense") and arts["dense"].path / "model.pt",
             "mask": arts["search"].path, "ticket": arts["retrain"].path / "model.pt",
             "onnx": arts["export"].path / "model.onnx", "validation": arts["validate"].path}
    if "package" in arts:
        paths["bundle"] = arts["package"].path / arts["package"].metrics["bundle"]
    paths = {k: str(v) for k, v in paths.items() if v}
    m, e = arts["retrain"].metrics, arts["export"].metrics
    summary = {"dense_accuracy": m["dense_test_accuracy"], "ticket_accuracy": m["test_accuracy"],
               "sparsity": m["sparsity"], "method": search_cfg.method,
               "search_seconds": arts["search"].metrics["search_seconds"],
               "timesteps": m["timesteps"], "timesteps_search": m["timesteps_search"],
               "onnx_max_abs_diff": e.get("max_abs_diff"),
               "onnx_bytes": e.get("bytes", {}).get("model.onnx"), "nir": e.get("nir"),
               "validation": arts["validate"].metrics, "passed": failed is None}
    report_ = json.loads(arts["validate"].file("report.json").read_text())
    summary["dense_vs_ticket"] = report_mod.dense_vs_ticket(report_)
    summary["cost"] = report_.get("cost")  # None: a loose model file or an older export
    summary["vs_dense_onnxruntime"] = report_mod.vs_dense_onnxruntime(report_)
    summary["notes"] = result.notes
    render.emit(as_json, {"stage": "compress", "summary": summary, "artifacts": paths,
                          "ids": {k: a.id for k, a in arts.items()},
                          "cached": result.cached},
                ticket_table(m), [])
    if not as_json:
        render.out.print(compression_table(summary["dense_vs_ticket"], report_))
        if summary["cost"]:
            render.out.print(cost_table(summary["cost"]))
        if summary["vs_dense_onnxruntime"]:
            render.out.print(deploy_table(summary["vs_dense_onnxruntime"], summary["cost"]))
        for k, v in paths.items():
            render.out.print(f"{k}: {v}")
    if failed is not None:
        raise failed
