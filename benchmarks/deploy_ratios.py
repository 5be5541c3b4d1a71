"""What the ticket buys on the device: deployable size, latency and parity, dense vs 97% ticket.

For the Fashion-MNIST convnet and VGG16 at width 0.25 (28x28x1), both through the library
(`pipeline.train`, `search`, `retrain`, `export`, `validate`) with reduced budgets so the whole
run fits a CPU: a dense model, an IMP ticket at 97% sparsity (prune rate 0.5 per round: five
rounds land exactly on 97%), retrained; both exported (the ticket compacted, sparse
initializers, int8 tried) and validated side by side on `x86_64` (ONNX Runtime) and `c-x86_64`
(the event-driven sparse C runtime) in one run, each validation measuring the dense model on the
same target. Ratios against the dense model's fp32 ONNX on ONNX Runtime, batch 1, native:

- size: the ticket's deployable model (model.onnx; for C its weights + compiled objects)
- C latency p50 vs dense ORT p50 (goal <= 0.1), compacted ONNX p50 vs dense ORT p50 (<= 0.7)
- parity: share of test images with the same class as PyTorch (goal 100%)

    python benchmarks/deploy_ratios.py [--store DIR] [--phase models|all] [--only convnet|vgg16]

Writes benchmarks/results/deploy_ratios/{results.json,report.md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import edgeprune  # noqa: E402,F401  (quiets Norse's import warnings)
from edgeprune import pipeline  # noqa: E402
from edgeprune.artifacts import Store  # noqa: E402
from edgeprune.config import (DataConfig, ModelConfig, RetrainConfig, SearchConfig,  # noqa: E402
                              TrainConfig)

OUT = ROOT / "benchmarks" / "results" / "deploy_ratios"

MODELS = {
    "convnet": {
        "data": DataConfig("fashion-mnist", train_subset=20000, test_subset=2000),
        "model": ModelConfig(arch="convnet"),
        "train": TrainConfig(epochs=3),
        "search": SearchConfig(method="imp", sparsity=0.97, prune_rate=0.5, round_epochs=1),
        "retrain": RetrainConfig(epochs=3),
        "validate_limit": None,  # the whole 10k test set
    },
    "vgg16": {
        "data": DataConfig("fashion-mnist", train_subset=4000, test_subset=1000),
        "model": ModelConfig(arch="vgg16", width=0.25),
        "train": TrainConfig(epochs=4),
        "search": SearchConfig(method="imp", sparsity=0.97, prune_rate=0.5, round_epochs=1),
        "retrain": RetrainConfig(epochs=3),
        "validate_limit": 2000,
    },
}


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def build_models(store: Store, name: str) -> dict:
    """Dense model and retrained 97% ticket of `name` (cached in the store)."""
    cfg = MODELS[name]

    def report(e: dict) -> None:
        if e.get("event") in ("stage", "round", "epoch", "early-time"):
            log(f"{name}: {json.dumps({k: v for k, v in e.items() if k != 'event'})[:200]}")

    t0 = time.perf_counter()
    dense, c1 = pipeline.train(store, cfg["data"], cfg["model"], cfg["train"], report=report)
    t1 = time.perf_counter()
    mask, c2 = pipeline.search(store, dense.path / "model.pt", cfg["search"], cfg["data"],
                               report=report)
    t2 = time.perf_counter()
    ticket, c3 = pipeline.retrain(store, dense.path / "model.pt", mask.path, cfg["retrain"],
                                  cfg["data"], report=report)
    t3 = time.perf_counter()
    return {"dense": dense, "search": mask, "ticket": ticket,
            "seconds": {"train": None if c1 else t1 - t0, "search": None if c2 else t2 - t1,
                        "retrain": None if c3 else t3 - t2}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path("/tmp/edgeprune-deploy-ratios"))
    ap.add_argument("--phase", choices=("models", "all"), default="all")
    ap.add_argument("--only", choices=tuple(MODELS), default=None)
    args = ap.parse_args()
    store = Store(args.store)
    names = [args.only] if args.only else list(MODELS)
    built = {}
    for name in names:
        built[name] = build_models(store, name)
        m = built[name]["ticket"].metrics
        log(f"{name}: dense {m.get('dense_test_accuracy')}, ticket {m['test_accuracy']} at "
            f"{m['sparsity']:.4f}")
    if args.phase == "models":
        return
    from deploy_measure import measure_all  # noqa: E402  (the deployment half)

    measure_all(store, built, MODELS, OUT)


if __name__ == "__main__":
    main()
