"""Table 1 of Kim et al. (ECCV 2022) on this machine: ticket accuracy and search time per method
and sparsity level, with plots.

    python benchmarks/paper_table.py --quick      # digits, a few minutes per seed
    python benchmarks/paper_table.py              # Fashion-MNIST
    python benchmarks/paper_table.py --report-only --out benchmarks/results/quick   # re-render
    python benchmarks/paper_table.py --merge RUN_A RUN_B --out DIR   # cells of parallel runs

For each seed: train the dense SNN, then for each level s_r = 1 - 0.75^r (r in --levels, in
increasing order so IMP rounds are shared) and each method search a ticket and retrain it at the
full T. Every finished cell is appended to results.json and the report (report.md + PNGs) is
re-rendered, so a killed run keeps what it had; rerunning the same command resumes from the
artifact store (cached artifacts are reused, their recorded search seconds still count).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edgeprune  # noqa: E402,F401  (quiets Norse's import warnings)
import torch  # noqa: E402

from edgeprune import stage_inputs  # noqa: E402

import pipeline  # noqa: E402
from edgeprune.artifacts import Store  # noqa: E402
from edgeprune.config import (DataConfig, EarlyTimeSettings, ModelConfig,  # noqa: E402
                              RetrainConfig, RunConfig,
                              SearchConfig, TrainConfig)
from machine import describe  # noqa: E402

METHODS = ("imp", "et-imp", "eb", "et-eb", "random", "reinit")
# The paper's choices where the library's defaults differ (edgeprune ranks LAMP scores).
PAPER_SEARCH = dict(scope="global")
PAPER_LABEL = {4: "68.3", 8: "89.9", 11: "95.7", 14: "98.1"}  # how the paper names s_r

QUICK = dict(data="digits", seeds="0,1,2", train_subset=None, test_subset=None, epochs=30,
             round_epochs=5, eb_epochs=10, retrain_epochs=15)
# Sized for a shared 2-core CPU and a ~1 h budget (the committed results/full); raise
# --train-subset/--test-subset/--epochs/--retrain-epochs on a bigger machine.
FULL = dict(data="fashion-mnist", seeds="0", train_subset=2000, test_subset=1000, epochs=6,
            round_epochs=1, eb_epochs=5, retrain_epochs=2)


def level_sparsity(r: int) -> float:
    return 1.0 - 0.75 ** r


def level_label(r: int) -> str:
    return PAPER_LABEL.get(r, f"{100 * level_sparsity(r):.1f}")


# -- running --------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


SELECTS = ("methods", "methods_run", "levels", "seeds")  # config keys that only pick cells
RUN_DEFAULT = {"device": "cpu", "precision": "fp32", "compile": False}  # runs before "run" existed


def _experiment(cfg: dict) -> dict:
    """The config without what only selects cells (methods, levels, seeds)."""
    return {"run": RUN_DEFAULT, **{k: v for k, v in cfg.items() if k not in SELECTS}}


def expected_cells(cfg: dict) -> int:
    return len(cfg["seeds"]) * len(cfg["levels"]) * len(cfg["methods"])


def finished(data: dict) -> str:
    return "complete" if len(data["cells"]) >= expected_cells(data["meta"]["config"]) \
        else "incomplete"


def merge(sources: list[Path], out: Path) -> dict:
    """One results.json from runs of the same experiment that measured different cells
    (seeds in parallel processes, methods added later): dense rows by seed, cells by
    (seed, level, method), the later source winning; the config's selections become the
    union, so the report counts every cell still missing."""
    runs = [json.loads((d / "results.json").read_text()) for d in sources]
    base = runs[0]
    for d, r in zip(sources[1:], runs[1:]):
        if _experiment(r["meta"]["config"]) != _experiment(base["meta"]["config"]):
            raise SystemExit(f"{d}: another experiment (config differs beyond {SELECTS})")
    dense = {row["seed"]: row for r in runs for row in r["dense"]}
    cells = {(c["seed"], c["level"], c["method"]): c for r in runs for c in r["cells"]}
    cfg = dict(base["meta"]["config"])
    for k in ("seeds", "levels"):
        cfg[k] = sorted({v for r in runs for v in r["meta"]["config"][k]})
    for k in ("methods", "methods_run"):
        cfg[k] = [m for m in METHODS if any(m in r["meta"]["config"][k] for r in runs)]
    meta = {**base["meta"], "config": cfg,
            "merged_from": [{"dir": str(d), "run": r["meta"]["run"], "status": r["status"]}
                            for d, r in zip(sources, runs)]}
    data = {"meta": meta, "dense": [dense[k] for k in sorted(dense)],
            "cells": [cells[k] for k in sorted(cells, key=lambda k: (k[0], k[1],
                                                                     METHODS.index(k[2])))]}
    data["status"] = finished(data)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    return data


class Results:
    """results.json, rewritten after every cell (atomically), and the report re-rendered."""

    def __init__(self, out: Path, meta: dict):
        self.out, self.path = out, out / "results.json"
        out.mkdir(parents=True, exist_ok=True)
        self.data = {"meta": meta, "status": "running", "dense": [], "cells": []}
        if self.path.exists():  # resume: keep earlier cells of the same config
            old = json.loads(self.path.read_text())
            # cells are keyed by (seed, level, method): a rerun that asks for other methods,
            # levels or seeds of the same experiment keeps the cells already measured
            if _experiment(old.get("meta", {}).get("config", {})) == _experiment(meta["config"]):
                self.data["dense"], self.data["cells"] = old["dense"], old["cells"]
                self.data["meta"]["previous_runs"] = (old["meta"].get("previous_runs", [])
                                                      + [old["meta"].get("run")])

    def has(self, kind: str, **key) -> bool:
        rows = self.data["dense" if kind == "dense" else "cells"]
        return any(all(r.get(k) == v for k, v in key.items()) for r in rows)

    def add(self, kind: str, row: dict) -> None:
        rows = self.data["dense" if kind == "dense" else "cells"]
        rows.append(row)
        self.save()

    def save(self, status: str | None = None) -> None:
        if status:
            self.data["status"] = status
        self.data["meta"]["run"]["wall_seconds"] = time.time() - self.data["meta"]["run"]["t0"]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        tmp.replace(self.path)
        try:
            render(self.data, self.out)
        except Exception as e:  # noqa: BLE001  a report bug must not kill a long run
            log(f"report rendering failed: {e!r}")


def run(args, res: Results) -> None:
    cfg = res.data["meta"]["config"]
    store = Store(Path(args.store))
    data_cfg = DataConfig(cfg["data"], cfg["train_subset"], cfg["test_subset"])
    ds = stage_inputs.load_data(data_cfg)
    log(f"data {cfg['data']}: {len(ds.y_train)} train, {len(ds.y_test)} test images")
    bs, lr = cfg["batch_size"], cfg["lr"]
    cpu_cum: dict = {}
    cpu_ok: dict = {}
    levels_run = cfg["levels"]
    resumed = bool(res.data["meta"].get("previous_runs"))
    for seed in cfg["seeds"]:
        t0 = time.perf_counter()
        execution = RunConfig(seed=seed, **cfg.get("run", {}))
        art, cached = pipeline.train(store, data_cfg, ModelConfig(arch=cfg["arch"],
                                                                  width=cfg["width"],
                                                                  timesteps=cfg["timesteps"]),
                                     TrainConfig(epochs=cfg["epochs"], batch_size=bs, lr=lr),
                                     execution)
        m = art.metrics
        if not res.has("dense", seed=seed):
            res.add("dense", {"seed": seed, "artifact": art.id, "test_accuracy": m["test_accuracy"],
                              "train_seconds": m["train_seconds"], "mean_spike_rate":
                              m["mean_spike_rate"], "rewind_epoch": m["rewind_epoch"],
                              "prunable_weights": m["prunable_weights"],
                              "wall_this_run": time.perf_counter() - t0, "cached": cached})
        log(f"seed {seed} dense {m['test_accuracy']:.2%} ({'cached' if cached else 'trained'})")
        dense = art.path / "model.pt"
        for r in cfg["levels"]:
            s = level_sparsity(r)
            imp_art = None
            for method in cfg["methods_run"]:
                if method in ("random", "reinit") and imp_art is None:
                    continue
                done = res.has("cell", seed=seed, level=r, method=method)
                if done and method != "imp":
                    continue
                epochs = cfg["eb_epochs"] if method in ("eb", "et-eb") else cfg["round_epochs"]
                sc = SearchConfig(method=method, sparsity=s, round_epochs=epochs, batch_size=bs,
                                  scope=cfg["search_defaults"]["scope"],
                                  lr=lr, et=EarlyTimeSettings(candidates=tuple(
                                      cfg.get("et_candidates") or ())
                                      if method.startswith("et-") else ()))
                rounds_before = _count_rounds(store)
                t1, c1 = time.perf_counter(), time.process_time()
                sart, scached = pipeline.search(store, dense, sc, data_cfg, execution,
                                                from_mask=imp_art.path
                                                if method in ("random", "reinit") else None)
                t_search, c_search = time.perf_counter() - t1, time.process_time() - c1
                # Process CPU seconds: robust to other jobs on a shared machine. IMP rounds are
                # shared between levels, so imp/et-imp accumulate over the levels of this seed
                # (valid only when every level's search ran in this process, not from cache).
                # A resumed run may find rounds or EB epochs done by an earlier process: no CPU
                # figure then.
                key = (seed, method)
                if method in ("imp", "et-imp"):
                    # every round this level adds must have been trained in this call, not
                    # found in the store (another search with the same rounds made them)
                    prev_r = max([q for q in levels_run if q < r], default=1)
                    fresh = _count_rounds(store) - rounds_before >= r - prev_r
                    if key not in cpu_ok:
                        cpu_ok[key] = r == levels_run[0] and not resumed
                    cpu_ok[key] = cpu_ok[key] and not scached and fresh
                    cpu_cum[key] = cpu_cum.get(key, 0.0) + c_search
                    cpu_search = cpu_cum[key] if cpu_ok[key] else None
                else:
                    cpu_search = None if scached or resumed else c_search
                if method == "imp":
                    imp_art = sart
                if done or method not in cfg["methods"]:
                    continue  # imp run only as the template of random/reinit
                t2 = time.perf_counter()
                rart, rcached = pipeline.retrain(store, dense, sart.path, RetrainConfig(
                    epochs=cfg["retrain_epochs"], batch_size=bs, lr=lr), data_cfg,
                    execution)
                t_retrain = time.perf_counter() - t2
                sm, rm = sart.metrics, rart.metrics
                et = sm.get("early_time") or {}
                row = {"seed": seed, "method": method, "level": r, "target_sparsity": s,
                       "sparsity": rm["sparsity"], "test_accuracy": rm["test_accuracy"],
                       "dense_test_accuracy": rm["dense_test_accuracy"],
                       "search_seconds": (None if method in ("random", "reinit")
                                          else sm["search_seconds"]),
                       "search_cpu_seconds": (None if method in ("random", "reinit")
                                              else cpu_search),
                       "timesteps": sm["timesteps"], "timesteps_search": sm["timesteps_search"],
                       "early_time": {k: et.get(k) for k in ("candidates", "kl",
                                                             "normalized_kl", "pick")} or None,
                       "eb_epoch": sm.get("eb_epoch"), "eb_converged": sm.get("eb_converged"),
                       "eb_final_distance": sm.get("eb_final_distance"),
                       "rounds": sm.get("rounds"),
                       "mean_spike_rate": rm["mean_spike_rate"], "spike_rate": rm["spike_rate"],
                       "per_layer": rm["per_layer"], "retrain_seconds": rm["train_seconds"],
                       "search_artifact": sart.id, "retrain_artifact": rart.id,
                       "search_cached": scached, "retrain_cached": rcached,
                       "wall_search_this_run": t_search, "wall_retrain_this_run": t_retrain}
                res.add("cell", row)
                ss = row["search_seconds"]
                log(f"seed {seed} {level_label(r)}% {method:7s} acc {row['test_accuracy']:.2%} "
                    f"sparsity {row['sparsity']:.2%} search "
                    f"{'n/a' if ss is None else f'{ss:.0f}s'} T'={row['timesteps_search']}"
                    + (f" eb_epoch={row['eb_epoch']}" if row["eb_epoch"] is not None else ""))


def _count_rounds(store: Store) -> int:
    return sum(1 for p in Path(store.root).glob("round-*"))


# -- report ---------------------------------------------------------------------------------

def _cells(data: dict, method: str, r: int) -> list[dict]:
    return [c for c in data["cells"] if c["method"] == method and c["level"] == r]


def _mean_std(vals: list[float]) -> tuple[float, float | None] | None:
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def _fmt(ms, scale=100.0, digits=2, unit="") -> str:
    if ms is None:
        return "—"
    m, s = ms
    if s is None:
        return f"{m * scale:.{digits}f}{unit}"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}{unit}"


def _n(cells) -> str:
    return f" (n={len(cells)})" if cells else ""


def summary(data: dict) -> dict:
    """Per (method, level): mean/std of accuracy, search seconds, spike rate; n; T'; EB epochs."""
    cfg = data["meta"]["config"]
    out = {}
    for method in cfg["methods"]:
        for r in cfg["levels"]:
            cs = _cells(data, method, r)
            out[(method, r)] = {
                "n": len(cs),
                "acc": _mean_std([c["test_accuracy"] for c in cs]),
                "search": _mean_std([c["search_seconds"] for c in cs]),
                "cpu": _mean_std([c.get("search_cpu_seconds") for c in cs]),
                "spike": _mean_std([c["mean_spike_rate"] for c in cs]),
                "sparsity": _mean_std([c["sparsity"] for c in cs]),
                "tprime": sorted({c["timesteps_search"] for c in cs}),
                "eb_epoch": [(c["eb_epoch"], c["eb_converged"]) for c in cs],
            }
    return out


def render(data: dict, out: Path) -> None:
    cfg, meta = data["meta"]["config"], data["meta"]
    levels, methods = cfg["levels"], cfg["methods"]
    S = summary(data)
    dense = _mean_std([d["test_accuracy"] for d in data["dense"]])
    run = meta["run"]
    mach = meta["machine"]
    n_expected = expected_cells(cfg)
    status = data["status"]
    if status != "complete":
        status_line = (f"**PARTIAL** ({status}): {len(data['cells'])} of {n_expected} cells "
                       "finished; missing cells show —.")
    else:
        status_line = f"complete: {len(data['cells'])} of {n_expected} cells."
    L = [f"# Lottery tickets in SNNs, Table-1 style: {cfg['arch']} on {cfg['data']} ({meta['mode']})",
         "", status_line, "",
         *(["Merged from these runs (cells by seed, level and method; a later run's cell "
             "replaces an earlier one):", "",
             *(f"- `{m['run']['command']}` (started {m['run']['started']}, "
               f"{m['run'].get('wall_seconds', 0) / 60:.0f} min, "
               f"{'unfinished' if m['status'] == 'running' else m['status']})"
               for m in meta["merged_from"])]
           if meta.get("merged_from") else
           [f"Command: `{run['command']}`  ",
            f"Started {run['started']}, wall time of this run so far "
            f"{run.get('wall_seconds', 0) / 60:.1f} min"
            + (f" (plus {len(meta['previous_runs'])} earlier interrupted run(s) of the same "
               "config, whose cells are kept)" if meta.get("previous_runs") else "") + "."]),
         "",
         f"Machine: {mach['cpu']}, {mach['cores']} cores, torch threads {mach['torch_threads']}, "
         f"load average at start {', '.join(f'{v:.1f}' for v in mach['load_average_at_start'])} "
         "(**shared machine**: other jobs were running; compare time *ratios* within this run, "
         "not absolute seconds). "
         + ", ".join(f"{k} {mach.get(k)}" for k in ("python", "torch", "norse", "numpy",
                                                    "matplotlib", "scikit-learn", "edgeprune",
                                                    "platform", "git_commit")) + ".", "",
         "Config: " + ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "methods_run") + ".",
         "", "Sparsity level s_r = 1 − 0.75^r (IMP lands on round r): "
         + ", ".join(f"r={r}: {100 * level_sparsity(r):.2f}% (paper: {level_label(r)}%)"
                     for r in levels) + ".", "",
         f"Dense accuracy: {_fmt(dense)}% (n={len(data['dense'])}, seeds "
         f"{[d['seed'] for d in data['dense']]}).", ""]

    head = "| method | " + " | ".join(f"{level_label(r)}%" for r in levels) + " |"
    sep = "|---|" + "---:|" * len(levels)
    L += ["## Ticket test accuracy at full T (%, mean ± std over seeds; n per cell)", "", head, sep]
    L.append("| dense | " + " | ".join(_fmt(dense) for _ in levels) + " |")
    for m in methods:
        L.append(f"| {m} | " + " | ".join(
            (_fmt(S[(m, r)]["acc"]) + (f" (n={S[(m, r)]['n']})" if S[(m, r)]["n"] else ""))
            for r in levels) + " |")
    L += ["", "## Search time (compute seconds of the search, excluding the final retraining; "
          "mean ± std)", "",
          "IMP and et-imp include every round up to the level (rounds shared between levels "
          "count at each level, as if searched alone). random/reinit copy the imp ticket's "
          "mask/sparsity and have no search of their own: n/a.", "", head, sep]
    for m in methods:
        if m in ("random", "reinit"):
            L.append(f"| {m} | " + " | ".join("n/a" for _ in levels) + " |")
            continue
        L.append(f"| {m} | " + " | ".join(_fmt(S[(m, r)]["search"], 1.0, 0, " s")
                                           for r in levels) + " |")
    L += ["", "## Search time relative to imp (ratio of means)", "", head, sep]
    for m in methods:
        if m in ("random", "reinit"):
            continue
        row = []
        for r in levels:
            a, b = S[(m, r)]["search"], S[("imp", r)]["search"] if ("imp", r) in S else None
            row.append(f"{a[0] / b[0]:.2f}×" if a and b and b[0] > 0 else "—")
        L.append(f"| {m} | " + " | ".join(row) + " |")
    if any(c.get("search_cpu_seconds") is not None for c in data["cells"]):
        L += ["", "## Search CPU seconds (process time of the search in this run; mean ± std)",
              "", "The library's search_seconds are wall-clock (perf_counter), inflated by other "
              "jobs on this shared machine; with 1 torch thread, process CPU time measures the "
              "search's own compute. imp/et-imp are cumulated over the levels of a seed (all "
              "rounds up to the level); — where part of the search came from an earlier "
              "process's cache.", "", head, sep]
        for m in methods:
            if m in ("random", "reinit"):
                continue
            L.append(f"| {m} | " + " | ".join(_fmt(S[(m, r)]["cpu"], 1.0, 0, " s")
                                               for r in levels) + " |")
        L += ["", "CPU-time ratio to imp:", "", head, sep]
        for m in methods:
            if m in ("random", "reinit"):
                continue
            row = []
            for r in levels:
                a, b = S[(m, r)]["cpu"], S[("imp", r)]["cpu"] if ("imp", r) in S else None
                row.append(f"{a[0] / b[0]:.2f}×" if a and b and b[0] > 0 else "—")
            L.append(f"| {m} | " + " | ".join(row) + " |")
    L += ["", "## T′ (timesteps used for the search), EB draw epoch, sparsity achieved", "",
          "T′: set of values over seeds. EB: epoch of the drawn mask per seed (* = stop rule met, "
          "else the epoch budget ran out).", "", head, sep]
    for m in methods:
        L.append(f"| {m} T′ | " + " | ".join(
            ",".join(map(str, S[(m, r)]["tprime"])) or "—" for r in levels) + " |")
    for m in methods:
        if m in ("eb", "et-eb"):
            L.append(f"| {m} EB epoch | " + " | ".join(
                ",".join(f"{e}{'*' if c else ''}" for e, c in S[(m, r)]["eb_epoch"]) or "—"
                for r in levels) + " |")
    for m in methods:
        L.append(f"| {m} sparsity % | " + " | ".join(_fmt(S[(m, r)]["sparsity"], 100, 2)
                                                     for r in levels) + " |")
    L += ["", "## Mean spike rate of the retrained ticket (spikes per neuron per step)", "",
          head, sep]
    dspk = _mean_std([d["mean_spike_rate"] for d in data["dense"]])
    L.append("| dense | " + " | ".join(_fmt(dspk, 1, 4) for _ in levels) + " |")
    for m in methods:
        L.append(f"| {m} | " + " | ".join(_fmt(S[(m, r)]["spike"], 1, 4) for r in levels) + " |")
    ets = [c for c in data["cells"] if c.get("early_time") and c["early_time"].get("kl")]
    if ets:
        L += ["", "## Early-Time scores (normalized KL per candidate T′; λ = 0.6)", ""]
        seen = set()
        for c in ets:
            key = (c["seed"], json.dumps(c["early_time"]["normalized_kl"], sort_keys=True))
            if key in seen:
                continue
            seen.add(key)
            nk = c["early_time"]["normalized_kl"]
            L.append(f"- seed {c['seed']}: " + ", ".join(
                f"T′={t}: {float(v):.3f}" for t, v in sorted(nk.items(), key=lambda kv: int(kv[0])))
                + f" → pick {c['early_time']['pick']}")
    L += ["", "## Against the targets", ""] + targets(data, S, dense) + [""]
    L += ["## Plots", "", "![accuracy vs sparsity](accuracy_vs_sparsity.png)",
          "![search time](search_time.png)", "![per-layer sparsity](per_layer_sparsity.png)",
          "![spike rate](spike_rate_vs_sparsity.png)", ""]
    (out / "report.md").write_text("\n".join(L))
    plot(data, S, dense, out)


def targets(data: dict, S: dict, dense) -> list[str]:
    cfg = data["meta"]["config"]
    levels = cfg["levels"]
    out = []

    def acc(m, r):
        a = S.get((m, r), {}).get("acc")
        return a[0] * 100 if a else None

    def sec(m, r):
        a = S.get((m, r), {}).get("search")
        return a[0] if a else None

    def verdict(ok):
        return "**met**" if ok else "**MISSED**"

    # 1. et-imp time <= 0.55x imp at every level, accuracy within 0.5 point
    parts, oks = [], []
    for r in levels:
        ti, te, ai, ae = sec("imp", r), sec("et-imp", r), acc("imp", r), acc("et-imp", r)
        if None in (ti, te, ai, ae):
            parts.append(f"{level_label(r)}%: —")
            oks.append(None)
            continue
        ok = te <= 0.55 * ti and abs(ae - ai) <= 0.5 or (te <= 0.55 * ti and ae >= ai)
        oks.append(ok)
        parts.append(f"{level_label(r)}%: time {te / ti:.2f}× ({te:.0f} s vs {ti:.0f} s), "
                     f"acc {ae:.2f} vs {ai:.2f} ({ae - ai:+.2f}) {verdict(ok)}")
    out.append("- et-imp search time ≤ 0.55× imp at every level, accuracy within 0.5 point of "
               "imp (a higher et-imp accuracy counts as within): " + "; ".join(parts)
               + _overall(oks))
    # 2. imp/et-imp vs dense
    d = dense[0] * 100 if dense else None
    for r, tol in ((11, 1.0), (14, 2.0)):
        if r not in levels:
            continue
        parts, oks = [], []
        for m in ("imp", "et-imp"):
            a = acc(m, r)
            if a is None or d is None:
                parts.append(f"{m}: —")
                oks.append(None)
                continue
            ok = a >= d - tol
            oks.append(ok)
            parts.append(f"{m} {a:.2f} vs dense {d:.2f} ({a - d:+.2f}) {verdict(ok)}")
        pts = "point" if tol == 1 else "points"
        out.append(f"- imp/et-imp within {tol:g} {pts} of dense at {level_label(r)}%: "
                   + "; ".join(parts) + _overall(oks))
    # 3. random/reinit clearly below tickets
    for r in (11, 14):
        if r not in levels:
            continue
        parts, oks = [], []
        ref = [a for a in (acc("imp", r), acc("et-imp", r)) if a is not None]
        for m in ("random", "reinit"):
            a = acc(m, r)
            if a is None or not ref:
                parts.append(f"{m}: —")
                oks.append(None)
                continue
            gap = min(ref) - a
            spread = [S[(t, r)]["acc"][1] for t in ("imp", "et-imp", m)
                      if (t, r) in S and S[(t, r)]["acc"] and S[(t, r)]["acc"][1] is not None]
            noise = max(spread) * 100 if spread else None
            ok = gap > (2 * noise if noise else 1.0)
            oks.append(ok)
            parts.append(f"{m} {a:.2f}, {gap:+.2f} points below the lower of imp/et-imp "
                         + (f"(largest seed std {noise:.2f})" if noise else "(n=1: 'clearly' "
                            "taken as > 1 point)") + f" {verdict(ok)}")
        out.append(f"- random and reinit clearly below the tickets at {level_label(r)}% "
                   "(gap > 2× the largest seed std, or > 1 point at n=1): " + "; ".join(parts)
                   + _overall(oks))
    # 4. EB / et-eb (reported, no pass/fail target)
    parts = []
    for r in levels:
        ai, ti = acc("imp", r), sec("imp", r)
        bits = []
        for m in ("eb", "et-eb"):
            a, t = acc(m, r), sec(m, r)
            if a is None:
                continue
            bits.append(f"{m} {a:.2f}" + (f" ({a - ai:+.2f} vs imp)" if ai is not None else "")
                        + (f", {t:.0f} s" + (f" = {t / ti:.2f}× imp" if ti else "")
                           if t is not None else ""))
        if bits:
            parts.append(f"{level_label(r)}%: " + "; ".join(bits))
    out.append("- EB / et-eb accuracy and search time (no pass/fail target): "
               + ("; ".join(parts) if parts else "—"))
    return out


def _overall(oks) -> str:
    if any(o is None for o in oks) or not oks:
        return " → incomplete."
    return " → overall **met**." if all(oks) else " → overall **MISSED**."


def plot(data: dict, S: dict, dense, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = data["meta"]["config"]
    levels, methods = cfg["levels"], cfg["methods"]
    title = f"{cfg['arch']} on {cfg['data']}, T={cfg['timesteps']}"
    xs = [100 * level_sparsity(r) for r in levels]

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m in methods:
        pts = [(x, S[(m, r)]["acc"]) for x, r in zip(xs, levels) if S[(m, r)]["acc"]]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1][0] * 100 for p in pts],
                        yerr=[(p[1][1] or 0) * 100 for p in pts], marker="o", capsize=3, label=m)
    if dense:
        ax.axhline(dense[0] * 100, color="k", ls="--", lw=1, label="dense")
    ax.set_xticks(xs, [f"{level_label(r)}" for r in levels])
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test accuracy at full T (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_sparsity.png", dpi=110)
    plt.close(fig)

    searched = [m for m in methods if m not in ("random", "reinit")]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    w = 0.8 / max(1, len(searched))
    for i, m in enumerate(searched):
        vals = [S[(m, r)]["search"] for r in levels]
        ax.bar([j + i * w for j in range(len(levels))], [v[0] if v else 0 for v in vals], w,
               yerr=[(v[1] or 0) if v else 0 for v in vals], capsize=2, label=m)
    ax.set_xticks([j + w * (len(searched) - 1) / 2 for j in range(len(levels))],
                  [f"{level_label(r)}%" for r in levels])
    ax.set_ylabel("search compute seconds (excl. retrain)")
    ax.set_title(title + " (shared CPU)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "search_time.png", dpi=110)
    plt.close(fig)

    r_top = max(levels)
    cs = sorted(_cells(data, "imp", r_top), key=lambda c: c["seed"])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    if cs:
        pl = cs[0]["per_layer"]
        names = sorted(pl, key=lambda n: (not n.startswith("stem"), [
            (0, int(t), "") if t.isdigit() else (1, 0, t) for t in n.split(".")]))
        ax.bar(range(len(names)), [100 * pl[n]["sparsity"] for n in names])
        ax.set_xticks(range(len(names)), [f"{n}\n({pl[n]['weights']:,})" for n in names],
                      rotation=45 if len(names) > 6 else 0, fontsize=7, ha="right"
                      if len(names) > 6 else "center")
        ax.set_ylabel("layer sparsity (%)")
        ax.axhline(100 * cs[0]["sparsity"], color="k", ls="--", lw=1, label="overall")
        ax.legend(fontsize=8)
        ax.set_title(f"imp ticket at {level_label(r_top)}%, seed {cs[0]['seed']}: per layer "
                     "(weights in brackets)", fontsize=9)
    else:
        ax.text(0.5, 0.5, f"no imp ticket at {level_label(r_top)}% yet", ha="center")
    fig.tight_layout()
    fig.savefig(out / "per_layer_sparsity.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m in methods:
        pts = [(x, S[(m, r)]["spike"]) for x, r in zip(xs, levels) if S[(m, r)]["spike"]]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts],
                        yerr=[(p[1][1] or 0) for p in pts], marker="o", capsize=3, label=m)
    dspk = _mean_std([d["mean_spike_rate"] for d in data["dense"]])
    if dspk:
        ax.axhline(dspk[0], color="k", ls="--", lw=1, label="dense")
    ax.set_xticks(xs, [f"{level_label(r)}" for r in levels])
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("mean spike rate (spikes/neuron/step)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "spike_rate_vs_sparsity.png", dpi=110)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="digits (default: Fashion-MNIST)")
    ap.add_argument("--data", help="dataset name (default: digits with --quick, else "
                    "fashion-mnist)")
    ap.add_argument("--arch", default="convnet")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--timesteps", "-T", type=int, default=5)
    ap.add_argument("--seeds", help="comma-separated (quick: 0,1,2; full: 0)")
    ap.add_argument("--train-subset", type=int, help="training images (full default 2000; 0 = all)")
    ap.add_argument("--test-subset", type=int, help="seeded subset of the test set (quick default: "
                    "all; full default 1000; 0 = all)")
    ap.add_argument("--epochs", type=int, help="dense training epochs")
    ap.add_argument("--round-epochs", type=int, help="epochs per IMP round")
    ap.add_argument("--eb-epochs", type=int, help="Early-Bird epoch budget")
    ap.add_argument("--retrain-epochs", type=int)
    ap.add_argument("--et-candidates", default="", help="Early-Time T' candidates, e.g. 2,3,4 "
                    "(default: the library's default; the resolved list is in each cell)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--scope", default=PAPER_SEARCH["scope"],
                    help="pruning scope (default: the paper's global magnitude; lamp keeps every "
                         "layer alive where global would empty one)")
    ap.add_argument("--levels", default="4,8,11,14", help="r values: sparsity 1-0.75^r")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--store", type=Path, help="artifact store (default under /tmp)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (ids do not depend on it)")
    ap.add_argument("--precision", default="fp32", help="fp32, bf16 or fp16 (part of the ids)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training step")
    ap.add_argument("--report-only", action="store_true",
                    help="re-render report.md and plots from --out/results.json")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="DIR",
                    help="merge these runs' results.json (same experiment, other cells) into "
                         "--out and render the report")
    args = ap.parse_args()

    mode = "quick" if args.quick else "full"
    if args.out is None:
        args.out = ROOT / "benchmarks" / "results" / mode
    if args.report_only or args.merge:
        data = (merge(args.merge, args.out) if args.merge
                else json.loads((args.out / "results.json").read_text()))
        render(data, args.out)
        print((args.out / "report.md").read_text())
        return
    torch.set_num_threads(args.threads)
    d = dict(QUICK if args.quick else FULL)
    for k in ("data", "seeds", "train_subset", "test_subset", "epochs", "round_epochs",
              "eb_epochs", "retrain_epochs"):
        v = getattr(args, k)
        if v is not None:
            d[k] = v
    for k in ("train_subset", "test_subset"):
        if d[k] == 0:  # 0: the whole set
            d[k] = None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown methods {bad}: choose from {METHODS}")
    methods = [m for m in METHODS if m in methods]
    run_methods = list(methods)
    if ("random" in methods or "reinit" in methods) and "imp" not in methods:
        run_methods = ["imp"] + run_methods  # their template; not reported
    cfg = {"data": d["data"], "arch": args.arch, "width": args.width,
           "timesteps": args.timesteps, "encoding": "direct", "pool": "avg",
           "seeds": [int(s) for s in str(d["seeds"]).split(",")],
           "train_subset": d["train_subset"], "test_subset": d["test_subset"],
           "epochs": d["epochs"], "round_epochs": d["round_epochs"],
           "eb_epochs": d["eb_epochs"], "retrain_epochs": d["retrain_epochs"],
           "batch_size": args.batch_size, "lr": args.lr,
           "run": {"device": args.device, "precision": args.precision, "compile": args.compile},
           **({"et_candidates": sorted({int(t) for t in args.et_candidates.split(",")})}
              if args.et_candidates.strip() else {}),
           "levels": sorted(int(r) for r in args.levels.split(",")),
           "methods": methods, "methods_run": run_methods,
           "search_defaults": {k: v for k, v in SearchConfig(scope=args.scope).to_dict().items()
                               if k not in ("method", "sparsity", "round_epochs", "batch_size",
                                            "lr")}}
    if args.store is None:
        tag = f"{d['data']}-{args.arch}-w{args.width:g}"
        args.store = Path("/tmp/edgeprune-paper-table") / tag
    meta = {"mode": mode, "config": cfg, "machine": describe(),
            "run": {"command": "python benchmarks/paper_table.py " + " ".join(sys.argv[1:]),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "t0": time.time(),
                    "store": str(args.store), "threads": args.threads}}
    res = Results(args.out, meta)
    log(f"writing {args.out}, store {args.store}")
    try:
        run(args, res)
    except KeyboardInterrupt:
        res.save("interrupted")
        raise
    except Exception as e:
        res.data["error"] = repr(e)
        res.save("failed")
        raise
    res.save(finished(res.data))
    log(f"done in {res.data['meta']['run']['wall_seconds'] / 60:.1f} min: {args.out}/report.md")


if __name__ == "__main__":
    main()
