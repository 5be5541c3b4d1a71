"""edgeprune show and ls: reading the artifact store."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeprune.artifacts import Store, open_artifact
from edgeprune.errors import UserError

from . import render
from .options import JsonOpt

KEY_METRICS = ("test_accuracy", "sparsity", "search_seconds", "timesteps_search",
               "max_abs_diff", "latency_p50_ms")
# `ls` shows the first two of these an artifact has, with short labels (--wide: KEY_METRICS)
FIGURES = (("test_accuracy", "acc", lambda v: render.pct(v, 1)),
           ("test_acc", "acc", lambda v: render.pct(v, 1)),
           ("sparsity", "sparsity", lambda v: render.pct(v, 1)),
           ("latency_p50_ms", "p50", lambda v: f"{v:.3g} ms"),
           ("search_seconds", "search", lambda v: f"{v:.0f} s" if v >= 10 else f"{v:.2g} s"),
           ("max_abs_diff", "|Δ|", lambda v: f"{v:.1g}"),
           ("bytes", "size", lambda v: f"{v / 2 ** 20:.1f} MiB"))


def show(artifact: Path = typer.Argument(..., help="An artifact folder or a file inside one."),
         as_json: bool = JsonOpt):
    """Show an artifact's manifest: stage, id, inputs, config, metrics, files, environment."""
    art = open_artifact(artifact)
    if as_json:
        with render.stdout():
            print(json.dumps(art.manifest, default=str))
        return
    man = art.manifest
    rows = {"path": str(art.path), "created": man.get("created", ""),
            "inputs": ", ".join(man.get("inputs", [])) or "-"}
    for section in ("metrics", "config", "env"):
        rows.update({f"{section}.{k}": v for k, v in _flatten(man.get(section, {})).items()})
    rows.update({f"files.{name}": f"{f['bytes']:,} B  sha256 {f['sha256'][:16]}…"
                 for name, f in man.get("files", {}).items()})
    with render.stdout():
        render.out.print(render.kv_table(f"{art.stage} {art.id}", rows))


def ls(run_dir: Path = typer.Argument(Path("runs"), help="Run directory."),
       wide: bool = typer.Option(False, "--wide", help="Every key metric, full names and "
                                 "times (the short view fits 80 columns)."),
       as_json: bool = JsonOpt):
    """List the artifacts of a run directory with stage, id, age, key figures and lineage."""
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    arts = list(Store(run_dir).artifacts())
    rows = [{"stage": a.stage, "id": a.id, "path": str(a.path), "inputs": a.manifest["inputs"],
             "created": a.manifest.get("created"),
             "metrics": {k: a.metrics[k] for k in KEY_METRICS if k in a.metrics}}
            for a in arts]
    if wide:
        t = render.columns(str(run_dir), ["stage", "id", "created", "key metrics", "inputs"],
                           [[r["stage"], r["id"], r["created"] or "",
                             "  ".join(f"{k}={render.fmt(v)}" for k, v in r["metrics"].items()),
                             ", ".join(r["inputs"]) or "-"] for r in rows])
    else:
        t = render.columns(str(run_dir), ["stage", "id", "created", "figures", "inputs"],
                           [[r["stage"], r["id"], render.age(r["created"]),
                             "\n".join(_figures(a.metrics)), "\n".join(r["inputs"]) or "-"]
                            for r, a in zip(rows, arts)])
    render.emit(as_json, {"run_dir": str(run_dir), "artifacts": rows}, t)


def _figures(metrics: dict) -> list[str]:
    """An artifact's one or two key figures, labelled short ("acc 98.9%", "p50 0.12 ms")."""
    shown, labels = [], set()
    for key, label, form in FIGURES:
        v = metrics.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and label not in labels:
            shown.append(f"{label} {form(v)}")
            labels.add(label)
    return shown[:2] or ["-"]


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat
