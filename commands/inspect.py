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
       as_json: bool = JsonOpt):
    """List the artifacts of a run directory with stage, id, key metrics and lineage."""
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    rows = [{"stage": a.stage, "id": a.id, "path": str(a.path), "inputs": a.manifest["inputs"],
             "created": a.manifest.get("created"),
             "metrics": {k: a.metrics[k] for k in KEY_METRICS if k in a.metrics}}
            for a in Store(run_dir).artifacts()]
    t = render.columns(str(run_dir), ["stage", "id", "created", "key metrics", "inputs"],
                       [[r["stage"], r["id"], r["created"] or "",
                         "  ".join(f"{k}={render.fmt(v)}" for k, v in r["metrics"].items()),
                         ", ".join(r["inputs"]) or "-"] for r in rows])
    render.emit(as_json, {"run_dir": str(run_dir), "artifacts": rows}, t)


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat
