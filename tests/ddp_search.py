"""Run by tests/test_distributed.py, alone or under torchrun: a short IMP search and retraining
through the library, then each rank writes what it ended with (mask digest, sparsity, accuracy)
to OUT/rank<r>.json."""
import json
import sys
from pathlib import Path

import edgeprune  # noqa: F401
from edgeprune import distributed, pipeline, tensorfile
from edgeprune.artifacts import Store
from edgeprune.config import (DataConfig, ImpSettings, ModelConfig, RetrainConfig, RunConfig,
                              SearchConfig, TrainConfig)
from edgeprune.hashing import arrays_digest

out, store = Path(sys.argv[1]), Store(Path(sys.argv[2]))
data, run = DataConfig("digits"), RunConfig(seed=0)
dense, _ = pipeline.train(store, data, ModelConfig(width=0.5, timesteps=3),
                          TrainConfig(epochs=6, batch_size=64), run)
model = dense.path / "model.pt"
mask, _ = pipeline.search(store, model, SearchConfig(method="imp", sparsity=0.8, imp=ImpSettings(0.5),
                                                     round_epochs=1, batch_size=64), data, run)
ticket, _ = pipeline.retrain(store, model, mask.path, RetrainConfig(epochs=2, batch_size=64),
                             data, run)
m = tensorfile.load(mask.file("mask.safetensors"))
w = distributed.world()
(out / f"rank{w.rank}.json").write_text(json.dumps({
    "world_size": w.size, "mask": arrays_digest(*[m[k] for k in sorted(m)]),
    "sparsity": ticket.metrics["sparsity"], "accuracy": ticket.metrics["test_accuracy"],
    "dense_accuracy": dense.metrics["test_accuracy"], "ids": [dense.id, mask.id, ticket.id],
    "env_world_size": ticket.manifest["env"]["world_size"]}))
