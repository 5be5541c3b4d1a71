"""Device-aware tickets: accuracy against C latency and SynOps for `--scope global|lamp|cost`
(weight tickets) and `--granularity channel`, chosen on the VALIDATION split.

Through the library (`pipeline.train`, `search`, `retrain`, `export`): one dense convnet per
dataset, trained with a stratified validation split held out of the training images; IMP
tickets (prune rate 0.5 per round) at a few sparsities for each configuration, retrained with
the mask fixed; each exported (compacted, C runtime) and measured side by side in one process:

- validation accuracy of the retrained ticket (PyTorch; the test set is not looked at);
- effective SynOps per inference (export/cost.py, NeuroBench's definitions) on the
  validation images, against the dense model's;
- C runtime p50 (event-driven sparse C, -march=x86-64-v3, batch 1, in-runner timing) and
  ONNX Runtime p50 (1 thread, batch 1) of the compacted model.onnx, both against the dense
  model's ONNX on ONNX Runtime, measured in the same run.

    python benchmarks/device_tickets.py [--data digits|fashion] [--store DIR] [--seeds 0]
    python benchmarks/device_tickets.py --report-only [--data ...]

Writes benchmarks/results/device_tickets/{DATA}.json, {DATA}.md, {DATA}-pareto.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import edgeprune  # noqa: E402,F401  (quiets Norse's import warnings)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import pipeline  # noqa: E402
from machine import describe  # noqa: E402
from edgeprune import stage_inputs  # noqa: E402
from edgeprune.artifacts import Store  # noqa: E402
from edgeprune.config import (DataConfig, ExportConfig, ImpSettings, ModelConfig,  # noqa: E402
                              RetrainConfig, RunConfig, SearchConfig, TrainConfig)

OUT = ROOT / "benchmarks" / "results" / "device_tickets"
RUNS, WARMUP = 300, 50  # timed single-image inferences per model and runtime

SETUPS = {
    "digits": {
        "data": DataConfig("digits", val_fraction=0.2),
        "model": ModelConfig(arch="convnet", width=1.0),
        "train": TrainConfig(epochs=8),
        "round_epochs": 1, "retrain": RetrainConfig(epochs=3),
        "weight_sparsities": (0.9, 0.97), "channel_sparsities": (0.5, 0.7, 0.9),
    },
    "fashion": {
        "data": DataConfig("fashion-mnist", train_subset=6000, val_fraction=0.2),
        "model": ModelConfig(arch="convnet"),
        "train": TrainConfig(epochs=4),
        "round_epochs": 1, "retrain": RetrainConfig(epochs=3),
        "weight_sparsities": (0.97,), "channel_sparsities": (0.5, 0.8),
    },
}
# (label, scope, granularity, cost exponent)
# (in the order they run: the most telling first, so a run cut short still says something)
CONFIGS = (("lamp", "lamp", "weight", 0.5), ("cost-0.5", "cost", "weight", 0.5),
           ("channel-lamp", "lamp", "channel", 0.5), ("global", "global", "weight", 0.5),
           ("cost-1", "cost", "weight", 1.0), ("cost-0.25", "cost", "weight", 0.25),
           ("channel-cost-0.5", "cost", "channel", 0.5))


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def ort_p50(model: Path, x: np.ndarray) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    times = []
    for i in range(WARMUP + RUNS):
        xi = x[i % len(x)][None]
        t0 = time.perf_counter()
        sess.run(None, {name: xi})
        if i >= WARMUP:
            times.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(times, 50))


def c_p50(export_dir: Path, x: np.ndarray) -> float:
    from targets import c_build, c_run

    b = c_build.build(export_dir, Path(tempfile.mkdtemp(prefix="edgeprune-devtk-")),
                      extra_flags=("-march=x86-64-v3",))
    return float(np.percentile(c_run.run(b, x, bench=(RUNS, WARMUP)).latencies_ms, 50))


def synops(model_pt: Path, x: torch.Tensor) -> dict:
    from edgeprune import checkpoint
    from export.cost import count

    spec, model = checkpoint.load(model_pt)
    return count(model, x, spec.timesteps)["total"]


def measure(store: Store, model_pt: Path, x_val: torch.Tensor) -> dict:
    exp, _ = pipeline.export(store, model_pt, ExportConfig(nir=False, int8=False))
    xs = x_val[:100].numpy().astype(np.float32)
    comp = exp.metrics.get("compaction") or {}
    layers = [(l["name"], l["shape_before"], l["shape_after"]) for l in comp.get("layers") or []]
    return {"export": exp.id, "ort_p50_ms": ort_p50(exp.path / "model.onnx", xs),
            "c_p50_ms": c_p50(exp.path, xs) if (exp.path / "model.c").exists() else None,
            "synops": synops(model_pt, x_val), "onnx_layers": layers}


def run(data: str, store: Store, seeds: list[int], save=lambda out: None) -> dict:
    s = SETUPS[data]
    rows = []

    def result() -> dict:
        return {"data": data, "machine": describe(), "runs": RUNS, "warmup": WARMUP,
                "setup": {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v)
                          for k, v in s.items()},
                "rows": rows, "command": f"python benchmarks/device_tickets.py --data {data} "
                                         f"--seeds {','.join(map(str, seeds))}"}

    for seed in seeds:
        kw = {"run": RunConfig(seed=seed)}
        dense, _ = pipeline.train(store, s["data"], s["model"], s["train"], **kw)
        dpt = dense.path / "model.pt"
        x_val = stage_inputs.load_data(s["data"]).x_val
        log(f"{data} seed {seed}: dense val {dense.metrics.get('val_accuracy')}")
        dm = measure(store, dpt, x_val)
        rows.append({"config": "dense", "seed": seed, "sparsity": 0.0,
                     "val_accuracy": dense.metrics.get("val_accuracy"), **dm})
        for label, scope, gran, beta in CONFIGS:
            levels = s["channel_sparsities"] if gran == "channel" else s["weight_sparsities"]
            for sp in levels:
                t0 = time.perf_counter()
                cfg = SearchConfig(method="imp", sparsity=sp, scope=scope, granularity=gran,
                                   cost_exponent=beta, imp=ImpSettings(0.5),
                                   round_epochs=s["round_epochs"])
                try:
                    mask, _ = pipeline.search(store, dpt, cfg, s["data"], **kw)
                except Exception as e:  # a refused target is a result (the guard's line)
                    log(f"{label} {sp}: refused: {e}")
                    rows.append({"config": label, "seed": seed, "target": sp,
                                 "refused": str(e)})
                    save(result())
                    continue
                ticket, _ = pipeline.retrain(store, dpt, mask.path, s["retrain"], s["data"], **kw)
                m = measure(store, ticket.path / "model.pt", x_val)
                row = {"config": label, "scope": scope, "granularity": gran,
                       "cost_exponent": beta if scope == "cost" else None, "seed": seed,
                       "target": sp, "sparsity": mask.metrics["sparsity"],
                       "channels": mask.metrics.get("channels"),
                       "val_accuracy": ticket.metrics.get("val_accuracy"),
                       "seconds": time.perf_counter() - t0, **m}
                rows.append(row)
                save(result())
                log(f"{data} {label} {sp}: val {row['val_accuracy']} sparsity "
                    f"{row['sparsity']:.4f} C {row['c_p50_ms']} ORT {row['ort_p50_ms']:.4f} "
                    f"effSynOps {row['synops']['effective_synops']:.0f}")
    return result()


def ratios(out: dict) -> list[dict]:
    """Each ticket against the dense model of its seed."""
    dense = {r["seed"]: r for r in out["rows"] if r["config"] == "dense"}
    table = []
    for r in out["rows"]:
        if r["config"] == "dense" or "refused" in r:
            continue
        d = dense[r["seed"]]
        table.append({**r, "d_val_points": 100 * (r["val_accuracy"] - d["val_accuracy"]),
                      "c_vs_dense_ort": (r["c_p50_ms"] / d["ort_p50_ms"]) if r["c_p50_ms"]
                      else None,
                      "ort_vs_dense_ort": r["ort_p50_ms"] / d["ort_p50_ms"],
                      "synops_vs_dense": r["synops"]["effective_synops"]
                      / d["synops"]["effective_synops"]})
    return table


def markdown(out: dict) -> str:
    t = ratios(out)
    dense = [r for r in out["rows"] if r["config"] == "dense"]
    lines = [f"# Device-aware tickets on {out['data']}", "",
             f"`{out['command']}` — {out['machine']}", "",
             "Chosen on the validation split (held out of the training images); the test set "
             "was not used. Short CPU budgets on a shared 2-core machine (setup below), "
             f"{len(dense)} seed(s): differences under ~1 point are within seed noise. "
             f"Latency: p50 of {out['runs']} single-image inferences after {out['warmup']} "
             "warm-up, dense model's ONNX on ONNX Runtime (1 thread) as the reference, in the "
             "same run.", ""]
    for d in dense:
        lines.append(f"Dense (seed {d['seed']}): val {100 * d['val_accuracy']:.2f}%, ORT "
                     f"{d['ort_p50_ms']:.4f} ms, C {d['c_p50_ms']:.4f} ms, effective SynOps "
                     f"{d['synops']['effective_synops']:,.0f}")
    lines += ["", "| config | target | sparsity | val acc | Δ points | C / dense ORT | "
              "compacted ORT / dense ORT | eff. SynOps / dense | compacted ONNX layers |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in t:
        shapes = "; ".join(f"{n}: {b[0]}→{a[0]}" for n, b, a in r["onnx_layers"]
                           if b[0] != a[0]) or "unchanged"
        c = f"{r['c_vs_dense_ort']:.3f}" if r["c_vs_dense_ort"] else "–"
        lines.append(f"| {r['config']} | {r['target']} | {r['sparsity']:.4f} | "
                     f"{100 * r['val_accuracy']:.2f}% | {r['d_val_points']:+.2f} | {c} | "
                     f"{r['ort_vs_dense_ort']:.3f} | {r['synops_vs_dense']:.4f} | {shapes} |")
    refused = [r for r in out["rows"] if "refused" in r]
    if refused:
        lines += ["", "Refused (the guard's one line; the CLI exits 2):", ""]
        lines += [f"- {r['config']} at {r['target']}: {r['refused']}" for r in refused]
    ran = {r["config"] for r in out["rows"]}
    missing = [label for label, *_ in CONFIGS if label not in ran]
    if missing:
        lines += ["", f"Not run (the run was stopped before them): {', '.join(missing)}."]
    lines += ["", f"Plot: [{out['data']}-pareto.png]({out['data']}-pareto.png)", ""]
    return "\n".join(lines) + "\n"


def plot(out: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = ratios(out)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, xlabel in ((axes[0], "c_vs_dense_ort", "C runtime p50 / dense ORT p50"),
                            (axes[1], "synops_vs_dense", "effective SynOps / dense")):
        for label, *_ in CONFIGS:
            pts = sorted((r[key], 100 * r["val_accuracy"]) for r in t
                         if r["config"] == label and r[key] is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        for d in (r for r in out["rows"] if r["config"] == "dense"):
            ax.axhline(100 * d["val_accuracy"], color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{out['data']}: accuracy vs work (dotted: dense)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=tuple(SETUPS), default="digits")
    ap.add_argument("--store", type=Path, default=Path("/tmp/edgeprune-device-tickets"))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    js = OUT / f"{args.data}.json"
    if args.report_only:
        out = json.loads(js.read_text())
    else:
        def save(out: dict) -> None:  # after every ticket: a run cut short keeps its rows
            js.write_text(json.dumps(out, indent=2, default=str) + "\n")

        out = run(args.data, Store(args.store), [int(s) for s in args.seeds.split(",")], save)
        save(out)
    (OUT / f"{args.data}.md").write_text(markdown(out))
    plot(out, OUT / f"{args.data}-pareto.png")
    log(f"wrote {OUT / (args.data + '.md')}")


if __name__ == "__main__":
    main()
