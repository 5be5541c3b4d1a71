"""The event-driven sparse C runtime against ONNX Runtime, per sparsity.

For a convnet on digits (and, with --fashion, on a Fashion-MNIST training subset, 28x28) at
0% / 90% / 97% sparsity: test accuracy (PyTorch and C), parity (max |C - PyTorch| on the summed
logits, argmax agreement), bytes of the C weights and compiled objects vs model.onnx, batch-1
latency of the C runner (inside the process, CLOCK_MONOTONIC) vs an ONNX Runtime
InferenceSession on the exported model.onnx (1 thread, sequential), and the spike rate of every
LIF layer as the C runtime counted it on the test set.

digits: the real chain through the CLI (`edgeprune train`, `search --method et-imp --sparsity
0.9 / 0.97`, `retrain`) into --store (artifacts are cached: a rerun measures the same models).
Fashion-MNIST: to stay within minutes on a CPU, a dense model trained on a subset, then gradual
global magnitude pruning (50, 75, 90, 97%), each level fine-tuned --finetune-epochs with the
mask held: a stand-in for a searched ticket with the same sparsity, enough for what this
measures (the cost of zeros and of spikes), not a lottery-ticket result.
Latencies: `--rounds` alternating rounds of ORT then C, each --runs timed single-image
inferences cycling over the first 100 test images after a warm-up; the table shows the median
of the rounds' p50 (and the p95 of all runs pooled).

    python benchmarks/c_runtime_speed.py [--fashion] [--runs 500] [--rounds 3] [--store DIR]

Writes benchmarks/results/c_runtime_speed.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edgeprune  # noqa: E402,F401  (quiets Norse's import warnings)
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from edgeprune import checkpoint, data as datalib, masks as masklib  # noqa: E402
from edgeprune.models import ModelSpec, prunable  # noqa: E402
from edgeprune.config import TrainConfig  # noqa: E402
from edgeprune.training import Trainer, evaluate  # noqa: E402
from export.c_codegen import write_c  # noqa: E402
from export.c_program import program_from_model  # noqa: E402
from export.onnx_files import UNROLLED, write_onnx  # noqa: E402
from machine import describe  # noqa: E402
from targets import c_build, c_run  # noqa: E402

T = 5
SPARSITIES = (0.0, 0.9, 0.97)
PRUNE_SCHEDULE = (0.5, 0.75, 0.9, 0.97)


def ort_latencies(path: Path, images: np.ndarray, runs: int, warmup: int) -> list[float]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = [{"input": images[i:i + 1]} for i in range(len(images))]
    for i in range(warmup):
        sess.run(None, feeds[i % len(feeds)])
    out = []
    for i in range(runs):
        t0 = time.perf_counter_ns()
        sess.run(None, feeds[i % len(feeds)])
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def alternating_rounds(onnx_path: Path, build, images: np.ndarray, runs: int, warmup: int,
                       rounds: int) -> tuple[list, list, list, list]:
    """`rounds` alternating rounds of ORT then C, `runs` timed runs each: (ORT p50 per round, C
    p50 per round, all ORT latencies, all C latencies), in ms."""
    ort_p50, c_p50, ort_all, c_all = [], [], [], []
    for _ in range(rounds):
        o = ort_latencies(onnx_path, images, runs, warmup)
        c = c_run.run(build, images, bench=(runs, warmup)).latencies_ms
        ort_p50.append(float(np.percentile(o, 50)))
        c_p50.append(float(np.percentile(c, 50)))
        ort_all += o
        c_all += c
    return ort_p50, c_p50, ort_all, c_all


def measure(name: str, spec: ModelSpec, model, ds, x_test: np.ndarray, y_test: np.ndarray,
            work: Path, args) -> dict:
    folder = work / name
    folder.mkdir(parents=True)
    acc = evaluate(model, torch.from_numpy(x_test), torch.from_numpy(y_test), T)["accuracy"]
    with torch.no_grad():
        ref = model(torch.from_numpy(x_test), T).sum(0).numpy()
    summary = write_c(program_from_model(model, T, spec.input_shape), folder / "c")
    build = c_build.build(folder / "c")
    out = c_run.run(build, x_test)
    stats = c_run.spike_counts(build, x_test)
    onnx_info = write_onnx(spec, model, folder, timesteps=T, step=False)[UNROLLED]
    bench_images = np.ascontiguousarray(x_test[:100])
    ort_p50, c_p50, ort_all, c_all = alternating_rounds(folder / UNROLLED, build, bench_images,
                                                        args.runs, args.runs // 5, args.rounds)
    masks_now = masklib.of_model(model)
    objects = {k: v["total"] for k, v in build.sizes.items()}
    row = {
        "model": name, "sparsity": masklib.sparsity(masks_now),
        "accuracy_pytorch": acc,
        "accuracy_c": float((out.logits.argmax(1) == y_test).mean()),
        "argmax_agreement": float((out.logits.argmax(1) == ref.argmax(1)).mean()),
        "max_abs_logit_diff": float(np.abs(out.logits - ref).max()),
        "max_abs_logit": float(np.abs(ref).max()),
        "c_weight_bytes": summary["weight_bytes"],
        "c_object_bytes": sum(objects.values()), "c_objects": build.sizes,
        "c_context_bytes": summary["state_bytes"] + summary["buffer_bytes"],
        "onnx_bytes": onnx_info["bytes"],
        "dense_fp32_weight_bytes": 4 * sum(int(p.numel()) for p in prunable(model).values()),
        "ort_p50_ms": statistics.median(ort_p50), "c_p50_ms": statistics.median(c_p50),
        "ort_p95_ms": float(np.percentile(ort_all, 95)),
        "c_p95_ms": float(np.percentile(c_all, 95)),
        "ort_p50_rounds": ort_p50, "c_p50_rounds": c_p50,
        "spike_rate": {l["name"]: l["rate"] for l in stats["layers"]},
        "layers": [{k: l[k] for k in ("name", "kind", "mode", "weights", "nonzero", "index_type",
                                      "bytes") if k in l}
                   for l in summary["layers"] if "weights" in l],
    }
    row["speedup_c_vs_ort"] = row["ort_p50_ms"] / row["c_p50_ms"]
    print(f"{name}: sparsity {row['sparsity']:.3f} acc {acc:.4f}/{row['accuracy_c']:.4f} "
          f"ORT {row['ort_p50_ms']:.4f} ms C {row['c_p50_ms']:.4f} ms "
          f"({row['speedup_c_vs_ort']:.1f}x) weights {row['c_weight_bytes']} B "
          f"max diff {row['max_abs_logit_diff']:.2e}", flush=True)
    return row


def run_dataset(label: str, ds, epochs: int, args, work: Path, test_n: int | None) -> list[dict]:
    mean, std = ds.channel_stats()
    spec = ModelSpec(input_shape=ds.input_shape, num_classes=ds.num_classes,
                     mean=tuple(mean), std=tuple(std), timesteps=T)
    torch.manual_seed(0)
    dense = spec.build()
    t0 = time.perf_counter()
    trainer = Trainer(dense, ds, T, TrainConfig(epochs=epochs), seed=0)
    for _ in range(epochs):
        trainer.train_epoch()
    print(f"{label}: dense trained in {time.perf_counter() - t0:.0f} s", flush=True)
    x_test = ds.x_test.numpy()[:test_n].astype(np.float32)
    y_test = ds.y_test.numpy()[:test_n]
    rows = [measure(f"{label}-dense", spec, copy.deepcopy(dense).eval(), ds, x_test, y_test, work,
                    args)]
    model, mask = copy.deepcopy(dense), None
    for s in PRUNE_SCHEDULE:  # gradual magnitude pruning, fine-tuning with the mask held
        mask = masklib.prune(prunable(model), s, "global", current=mask)
        tr = Trainer(model, ds, T, TrainConfig(epochs=args.finetune_epochs, lr=0.05), seed=1,
                     masks=mask)
        for _ in range(args.finetune_epochs):
            tr.train_epoch()
        if s in SPARSITIES:
            rows.append(measure(f"{label}-magnitude-{int(round(s * 100))}", spec,
                                copy.deepcopy(model).eval(), ds, x_test, y_test, work, args))
    return rows


def cli(store: Path, *args: str) -> dict:
    """One edgeprune command with --json into `store`; its JSON result."""
    argv = [sys.executable, "-m", "cli", *args, "--out", str(store), "--json"]
    p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed: {p.stderr.strip()[-500:]}")
    return json.loads(p.stdout)


def digits_tickets(args, work: Path) -> list[dict]:
    """Dense model and et-imp tickets at 90% / 97% made by the CLI, then measured."""
    ds = datalib.load("digits")
    t0 = time.perf_counter()
    train = cli(args.store, "train", "--data", "digits")
    models = [("digits-dense", train["model"], None)]
    for s in SPARSITIES[1:]:
        found = cli(args.store, "search", train["model"], "--method", "et-imp", "--sparsity", str(s))
        path = next(v for k, v in found.items() if isinstance(v, str) and "/search-" in v)
        ticket = cli(args.store, "retrain", train["model"], "--mask", path)
        models.append((f"digits-et-imp-{int(round(s * 100))}", ticket["model"], found))
    print(f"digits: chain (train/search/retrain, cached when rerun) took "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for label, path, _ in models:
        spec, model = checkpoint.load(Path(path))
        rows.append(measure(label, spec, model.eval(), ds, ds.x_test.numpy(), ds.y_test.numpy(),
                            work, args))
        rows[-1]["checkpoint"] = str(path)
    return rows


def report(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Sparse event-driven C runtime vs ONNX Runtime",
        "",
        f"Convnet (conv16-pool-conv32-pool-fc128-fc), T = {T}, direct encoding. digits: the "
        "CLI's dense model (`edgeprune train --data digits`) and its Early-Time IMP tickets "
        "(`search --method et-imp`, `retrain`). fashion (Fashion-MNIST, 28×28, "
        f"{result['config']['fashion_subset']} training images, first "
        f"{result['config']['fashion_test']} test images): dense trained "
        f"{result['config']['fashion_epochs']} epochs, then gradual global magnitude pruning "
        f"(50/75/90/97%), {result['config']['finetune_epochs']} fine-tuning epochs per level "
        "with the mask held (a stand-in for a ticket). Latency: batch 1, "
        f"1 thread, median over {result['config']['rounds']} alternating rounds of the p50 of "
        f"{result['config']['runs']} runs (cycling over 100 test images); C timed inside its runner "
        "(CLOCK_MONOTONIC), ONNX Runtime around `session.run` (the unrolled model.onnx, "
        "intra_op_num_threads=1). Sizes: C weights = const arrays (values + indices + row "
        "pointers + biases); C objects = loaded sections (text + rodata + data) of model.o + "
        "model_weights.o, -O2, x86-64.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average at start "
        f"{', '.join(f'{v:.1f}' for v in m['load_average_at_start'])} (shared machine: compare "
        "ratios within a row, not absolute times across runs); "
        f"gcc -O2; onnxruntime {m.get('onnxruntime', '?')}, torch {m.get('torch', '?')}.",
        "",
        "| model | sparsity | acc PyTorch | acc C | argmax agree | max abs Δlogit | C weights B | "
        "C objects B | model.onnx B | ORT p50 ms | C p50 ms | C speedup | ORT p95 | C p95 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['sparsity']:.1%} | {r['accuracy_pytorch']:.4f} | "
            f"{r['accuracy_c']:.4f} | {r['argmax_agreement']:.2%} | "
            f"{r['max_abs_logit_diff']:.1e} | {r['c_weight_bytes']:,} | {r['c_object_bytes']:,} | "
            f"{r['onnx_bytes']:,} | {r['ort_p50_ms']:.4f} | {r['c_p50_ms']:.4f} | "
            f"{r['speedup_c_vs_ort']:.1f}× | {r['ort_p95_ms']:.4f} | {r['c_p95_ms']:.4f} |")
    lines += ["", "Spike rate per LIF layer (fraction of neuron-steps that spiked, test set, "
              "counted by the C runtime):", "",
              "| model | " + " | ".join(result["rows"][0]["spike_rate"]) + " |",
              "|---|" + "---:|" * len(result["rows"][0]["spike_rate"])]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | " + " | ".join(f"{v:.3f}" for v in r["spike_rate"].values())
                     + " |")
    lines += ["", "Non-zero weights per layer (index type of the sparse layout, event-driven or "
              "dense-input):", ""]
    for r in result["rows"]:
        lines.append(f"- {r['model']}: " + ", ".join(
            f"{l['name']} {l['nonzero']}/{l['weights']} ({l['mode']}, {l['index_type']})"
            for l in r["layers"]))
    lines += ["", f"Wall time of the run: {result['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fashion", action="store_true", help="also a Fashion-MNIST convnet")
    ap.add_argument("--fashion-subset", type=int, default=6000)
    ap.add_argument("--fashion-test", type=int, default=2000)
    ap.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "edgeprune-c-speed",
                    help="artifact store for the digits chain (cached across runs)")
    ap.add_argument("--fashion-epochs", type=int, default=2)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    result = {"machine": describe(), "rows": [],
              "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="c-speed-") as tmp:
        work = Path(tmp)
        result["rows"] += digits_tickets(args, work)
        if args.fashion:
            ds = datalib.load("fashion-mnist").subset(args.fashion_subset, 0)
            result["rows"] += run_dataset("fashion", ds, args.fashion_epochs, args, work,
                                          args.fashion_test)
    result["seconds"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "c_runtime_speed.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "c_runtime_speed.md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
