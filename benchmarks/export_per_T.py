"""Export cost and inference latency of a digits convnet per unrolled T (1..8).

For each T: seconds to export model.onnx, its node count and size, and batch-1 latency (median
of N runs, 1 thread) of ONNX Runtime (unrolled graph; and the step graph run T times) against
PyTorch eager. Writes benchmarks/results/export_per_T.{md,json}.

    python benchmarks/export_per_T.py [--model runs/train-ID/model.pt] [--runs 200]

Without --model it trains the convnet (12 epochs, T=5, seed 0) into benchmarks/runs/ first.
"""
from __future__ import annotations

import argparse
import json
import statistics
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

from edgeprune import checkpoint, data as datalib  # noqa: E402

import pipeline  # noqa: E402
from edgeprune.artifacts import Store, open_artifact  # noqa: E402
from edgeprune.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from export import metadata, parity  # noqa: E402
from export.onnx_files import STEP, UNROLLED, write_onnx  # noqa: E402
from machine import describe  # noqa: E402


def median_ms(fn, runs: int) -> float:
    for _ in range(max(5, runs // 20)):  # warm-up
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model.pt of a digits convnet artifact")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.model:
        art = open_artifact(args.model)
    else:
        art, _ = pipeline.train(Store(ROOT / "benchmarks" / "runs"), DataConfig("digits"),
                                ModelConfig(width=1.0), TrainConfig(epochs=12))
    spec, model = checkpoint.load(art.file("model.pt"))
    model.eval()
    x = datalib.load("digits").x_test[:1]
    rows, info = [], describe()
    with tempfile.TemporaryDirectory() as tmp:
        for T in range(1, 9):
            folder = Path(tmp) / f"T{T}"
            folder.mkdir()
            files = write_onnx(spec, model, folder, timesteps=T, artifact_id=art.id)
            sess = parity.session(folder / UNROLLED, threads=1)
            step = parity.session(folder / STEP, threads=1)
            states = metadata.read(folder / STEP)["edgeprune.states"]
            xn = x.numpy()
            ort_ms = median_ms(lambda: sess.run(None, {"input": xn}), args.runs)
            step_ms = median_ms(lambda: parity.run_stream(step, xn, T, "direct", states),
                                args.runs)
            with torch.no_grad():
                torch_ms = median_ms(lambda: model(x, T).sum(0), max(20, args.runs // 4))
            diff = float(np.abs(parity.run_unrolled(sess, xn)["logits"]
                                - parity.torch_reference(model, x, T)["logits"]).max())
            u = files[UNROLLED]
            rows.append({"T": T, "export_s": u["seconds"], "nodes": u["nodes"],
                         "bytes": u["bytes"], "step_nodes": files[STEP]["nodes"],
                         "step_bytes": files[STEP]["bytes"], "ort_ms": ort_ms,
                         "ort_step_x_T_ms": step_ms, "torch_ms": torch_ms,
                         "speedup": torch_ms / ort_ms, "max_abs_diff": diff})
            print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"model_artifact": art.id, "model": f"{spec.arch} on digits, trained T={spec.timesteps}",
              "runs": args.runs, "batch": 1, "threads": 1, "machine": info, "rows": rows}
    (args.out / "export_per_T.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    lines = [
        "# Export cost and batch-1 latency per T (digits convnet)", "",
        f"Model: {result['model']} (artifact {art.id}). Latency: median of {args.runs} runs "
        f"(PyTorch eager: {max(20, args.runs // 4)}), batch 1, 1 thread. "
        "`ORT step×T`: the streaming graph run T times with its state fed back.", "",
        f"Machine: {info['cpu']}, {info['cores']} cores, load average at start "
        f"{', '.join(f'{v:.1f}' for v in info['load_average_at_start'])} (shared machine: "
        f"compare ratios within this table, not absolute times); Python {info['python']}, "
        f"torch {info['torch']}, onnxruntime {info['onnxruntime']}, onnx {info['onnx']}, "
        f"norse {info['norse']}, {info['platform']}.", "",
        "| T | export s | nodes | model.onnx bytes | ORT ms | ORT step×T ms | PyTorch ms | "
        "speedup | max abs diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['T']} | {r['export_s']:.2f} | {r['nodes']} | {r['bytes']:,} | "
                     f"{r['ort_ms']:.3f} | {r['ort_step_x_T_ms']:.3f} | {r['torch_ms']:.3f} | "
                     f"{r['speedup']:.1f}× | {r['max_abs_diff']:.1e} |")
    lines += ["", f"The step graph has {rows[0]['step_nodes']} nodes and "
              f"{rows[0]['step_bytes']:,} bytes at every T.", ""]
    (args.out / "export_per_T.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
