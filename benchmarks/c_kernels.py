"""The C runtime's kernels against dense ONNX Runtime, with the time per layer that explains them.

For each ticket given (a retrained model.pt inside its store, and the dense model.pt it came
from): the ticket exported as `compress` exports it (`pipeline.export`, C runtime on, compaction
and dense rows as configured by default), compiled with the c-x86_64 profile's flags (gcc -O2
-march=x86-64-v3), and in the same run, in alternating rounds on one core at batch 1:
- dense ORT: the dense model's unrolled fp32 model.onnx (no compaction, no sparse storage),
  intra_op_num_threads=1, timed around `session.run`;
- ticket C: the runner's in-process CLOCK_MONOTONIC latency (`runner --bench`);
then the per-layer profile of the same sources built with -DMODEL_PROFILE
(targets/c_profile.py) and parity vs PyTorch on the test images (same class, max |Δlogit|).

    python benchmarks/c_kernels.py --label after \
        --ticket digits=STORE/retrain-.../model.pt:STORE/train-.../model.pt \
        --ticket fashion=... [--runs 1000] [--rounds 5]
    python benchmarks/c_kernels.py --build-fashion STORE [--train-subset 5000]

--build-fashion: the Fashion-MNIST convnet 97% ticket of benchmarks/deploy_ratios.py (IMP,
prune rate 0.5, LAMP, its epochs) on a smaller training subset so that it trains within minutes
on a shared CPU; prints the ticket's and the dense model's model.pt for --ticket.

To measure other kernels (the commit before a change), run this script from a checkout of that
commit with `--out` pointing here. Results of every label are kept side by side in
benchmarks/results/c_kernels.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
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
from c_runtime_speed import alternating_rounds  # noqa: E402
from edgeprune import checkpoint, data as datalib  # noqa: E402
from edgeprune.artifacts import Store  # noqa: E402
from edgeprune.config import ExportConfig  # noqa: E402
from export.onnx_files import UNROLLED, write_onnx  # noqa: E402
from machine import describe  # noqa: E402
from targets import c_build, c_run  # noqa: E402

OUT = ROOT / "benchmarks" / "results"
FLAGS = ("-march=x86-64-v3",)  # the c-x86_64 profile's
DATASETS = {"digits": "digits", "fashion": "fashion-mnist"}
GOALS = {"digits": 0.15, "fashion": 0.1}


def git_rev(path: Path) -> str:
    p = subprocess.run(["git", "-C", str(path), "rev-parse", "--short=10", "HEAD"],
                       capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "export", "targets"],
                           capture_output=True, text=True).stdout.strip()
    return p.stdout.strip() + ("+dirty" if dirty else "")


def measure(name: str, ticket_pt: Path, dense_pt: Path, args, work: Path) -> dict:
    from targets import c_profile

    ds = datalib.load(DATASETS[name])
    n = min(args.test, len(ds.x_test))
    x = np.ascontiguousarray(ds.x_test.numpy()[:n], dtype=np.float32)
    y = ds.y_test.numpy()[:n]
    spec, ticket = checkpoint.load(ticket_pt)
    dspec, dense = checkpoint.load(dense_pt)
    T = spec.timesteps
    with torch.no_grad():
        ref = ticket.eval()(torch.from_numpy(x), T).sum(0).numpy()
    store = Store(ticket_pt.parent.parent)
    art, _ = pipeline.export(store, ticket_pt, ExportConfig(c_runtime=True, int8=False, nir=False))
    build = c_build.build(art.path, work / f"{name}-build", extra_flags=FLAGS)
    out = c_run.run(build, x)
    folder = work / f"{name}-dense-onnx"
    folder.mkdir()
    write_onnx(dspec, dense.eval(), folder, timesteps=T, step=False)
    bench = np.ascontiguousarray(x[:100])
    ort_p50, c_p50, ort_all, c_all = alternating_rounds(folder / UNROLLED, build, bench,
                                                        args.runs, args.runs // 10, args.rounds)
    prof = c_profile.measure(c_profile.build(art.path, work / f"{name}-profile", FLAGS), bench,
                             runs=args.runs, warmup=args.runs // 10)
    stats = c_run.spike_counts(build, x)
    summary = json.loads((art.path / "manifest.json").read_text()) \
        if (art.path / "manifest.json").is_file() else {}
    row = {"model": name, "ticket": str(ticket_pt), "dense": str(dense_pt), "test_images": n,
           "export": art.id, "timesteps": T,
           "accuracy_pytorch": float((ref.argmax(1) == y).mean()),
           "accuracy_c": float((out.logits.argmax(1) == y).mean()),
           "same_class": float((out.logits.argmax(1) == ref.argmax(1)).mean()),
           "max_abs_logit_diff": float(np.abs(out.logits - ref).max()),
           "dense_ort_p50_ms": statistics.median(ort_p50), "c_p50_ms": statistics.median(c_p50),
           "dense_ort_p50_rounds": ort_p50, "c_p50_rounds": c_p50,
           # the fastest tenth of all runs: less of the other jobs' preemption in it
           "dense_ort_p10_ms": float(np.percentile(ort_all, 10)),
           "c_p10_ms": float(np.percentile(c_all, 10)),
           "profile": prof,
           "spike_rate": {l["name"]: l["spikes"] / (l["neurons"] * T * n)
                          for l in stats["layers"]},
           "c_object_bytes": sum(v["total"] for v in build.sizes.values()),
           "export_manifest_c": (summary.get("metrics") or {}).get("c")}
    row["ratio"] = row["c_p50_ms"] / row["dense_ort_p50_ms"]
    row["ratio_p10"] = row["c_p10_ms"] / row["dense_ort_p10_ms"]
    print(f"{name}: C {row['c_p50_ms']:.4f} ms / dense ORT {row['dense_ort_p50_ms']:.4f} ms = "
          f"{row['ratio']:.3f}; same class {row['same_class']:.2%}, max |dlogit| "
          f"{row['max_abs_logit_diff']:.2e}", flush=True)
    return row


def markdown(result: dict) -> str:
    lines = ["# C runtime kernels vs dense ONNX Runtime (batch 1, one core)", "",
             "Command per label: `python benchmarks/c_kernels.py --label LABEL --ticket "
             "NAME=TICKET.pt:DENSE.pt ...` (see the script's docstring). Ratio = C runtime p50 "
             "/ dense ORT p50, both measured in the same run in alternating rounds (median of "
             "the rounds' p50); \"at p10\": the same ratio of the fastest tenth of all runs, less "
             "disturbed by the other jobs on this shared 2-core machine. Each label is one run; "
             "compare ratios, not absolute times across labels.", "",
             "| label | code | model | test images | acc PyTorch | acc C | same class | "
             "max abs Δlogit | dense ORT p50 ms | C p50 ms | C / dense ORT | goal | "
             "C / dense ORT at p10 | C profile total ms |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, run in result["runs"].items():
        for r in run["rows"]:
            lines.append(
                f"| {label} | {run['code']} | {r['model']} | {r['test_images']} | "
                f"{r['accuracy_pytorch']:.4f} | {r['accuracy_c']:.4f} | {r['same_class']:.2%} | "
                f"{r['max_abs_logit_diff']:.1e} | {r['dense_ort_p50_ms']:.4f} | "
                f"{r['c_p50_ms']:.4f} | **{r['ratio']:.3f}** | "
                f"{'<=' if r['ratio'] <= GOALS[r['model']] else '>'} {GOALS[r['model']]} | "
                f"{r['ratio_p10']:.3f} | {r['profile']['total_ms']:.4f} |")
    for label, run in result["runs"].items():
        m = run["machine"]
        lines += ["", f"## {label}", "",
                  f"Code {run['code']}; {run['runs']} runs x {run['rounds']} rounds; machine "
                  f"{m['cpu']}, load average at start "
                  f"{', '.join(f'{v:.1f}' for v in m['load_average_at_start'])}; "
                  f"{run['seconds']:.0f} s."]
        for r in run["rows"]:
            p = r["profile"]
            lines += ["", f"### {label}: {r['model']} time per layer (profiling build, median "
                      f"per inference, {p['runs']} runs, T = {p['timesteps']})", "",
                      "spike rates: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                  r["spike_rate"].items()), "",
                      "| layer | kind | ms | share |", "|---|---|---:|---:|"]
            lines += [f"| {l['name']} | {l['kind']} | {l['ms']:.4f} | {l['share']:.1%} |"
                      for l in p["layers"]]
            lines.append(f"| total | | {p['total_ms']:.4f} | |")
    return "\n".join(lines) + "\n"


def build_fashion(store: Path, subset: int) -> None:
    import dataclasses

    from deploy_ratios import MODELS, build_models

    cfg = MODELS["convnet"]
    MODELS["convnet"] = dict(cfg, data=dataclasses.replace(cfg["data"], train_subset=subset))
    built = build_models(Store(store), "convnet", "lamp")
    m = built["ticket"].metrics
    print(f"fashion={built['ticket'].path / 'model.pt'}:{built['dense'].path / 'model.pt'}  "
          f"(dense {m.get('dense_test_accuracy')}, ticket {m['test_accuracy']}, sparsity "
          f"{m['sparsity']:.4f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-fashion", type=Path, default=None, metavar="STORE")
    ap.add_argument("--train-subset", type=int, default=5000)
    ap.add_argument("--label")
    ap.add_argument("--ticket", action="append",
                    help="NAME=TICKET_MODEL.pt:DENSE_MODEL.pt (NAME: digits or fashion)")
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--test", type=int, default=2000, help="test images for parity")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.build_fashion:
        return build_fashion(args.build_fashion, args.train_subset)
    if not args.label or not args.ticket:
        raise SystemExit("give --label and at least one --ticket (or --build-fashion STORE)")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    run = {"machine": describe(), "code": git_rev(ROOT), "runs": args.runs,
           "rounds": args.rounds, "rows": []}
    with tempfile.TemporaryDirectory(prefix="c-kernels-") as tmp:
        for spec in args.ticket:
            name, _, paths = spec.partition("=")
            ticket, _, dense = paths.partition(":")
            if name not in DATASETS or not ticket or not dense:
                raise SystemExit(f"--ticket {spec!r}: expected NAME=TICKET.pt:DENSE.pt, NAME in "
                                 f"{', '.join(DATASETS)}")
            run["rows"].append(measure(name, Path(ticket), Path(dense), args, Path(tmp)))
    run["seconds"] = time.perf_counter() - t0
    path = args.out / "c_kernels.json"
    result = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    result["runs"][args.label] = run
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "c_kernels.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
