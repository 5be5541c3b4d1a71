"""Training and inference speed, measured side by side in one run (issue 12).

CPU (always):
  - training images/s of the Fashion-MNIST-sized convnet (28x28, B=128, T=5) against a plain
    Norse reference: the same layers with Norse's LIFBoxCell called once per timestep in a
    Python loop (every layer runs T times), and against edgeprune's own step-by-step LIF
    (`--lif loop`, the path before the fused recurrence);
  - inference at batch 1 and 64: PyTorch eager vs ONNX Runtime on the exported model.
GPU (when CUDA is present): vgg16 and resnet19 at width 1, 32x32x3, T=5: the old path (fp32,
eager, batch 64) vs bf16 + channels_last + larger batch (+ compile with --compile).

    python benchmarks/speed.py                  # -> benchmarks/results/speed-<device>.json/.md
    python benchmarks/speed.py --threads 2 --steps 20

Every configuration runs in the same process, alternating, after warm-up steps; the report
gives the median of the repeats and the ratio to the reference.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
warnings.filterwarnings("ignore")

import edgeprune  # noqa: E402,F401  (quiets Norse's import warnings)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from edgeprune.config import NeuronParams, TrainConfig  # noqa: E402
from edgeprune.models import ModelSpec  # noqa: E402
from edgeprune.trainer import loss_fn  # noqa: E402
from machine import describe  # noqa: E402


class NorseReference(nn.Module):
    """The convnet's layers with Norse's own LIFBoxCell, stepped once per timestep: the plain
    way a Norse user writes it (every layer runs T times)."""

    def __init__(self, shape=(1, 28, 28), classes=10, width=1.0):
        super().__init__()
        from norse.torch import LIFBoxCell, LIFBoxParameters

        p = LIFBoxParameters(tau_mem_inv=torch.tensor(0.75), v_th=torch.tensor(1.0),
                             method="super", alpha=torch.tensor(10.0))
        c1, c2, h = int(16 * width), int(32 * width), int(128 * width)
        self.conv1, self.bn1 = nn.Conv2d(shape[0], c1, 3, 1, 1, bias=False), nn.BatchNorm2d(c1)
        self.lif1 = LIFBoxCell(p, dt=1.0)
        self.conv2, self.bn2 = nn.Conv2d(c1, c2, 3, 1, 1, bias=False), nn.BatchNorm2d(c2)
        self.lif2 = LIFBoxCell(p, dt=1.0)
        n = c2 * (shape[1] // 4) * (shape[2] // 4)
        self.fc1, self.bn3 = nn.Linear(n, h, bias=False), nn.BatchNorm1d(h)
        self.lif3 = LIFBoxCell(p, dt=1.0)
        self.fc2 = nn.Linear(h, classes)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x, T):
        s1 = s2 = s3 = None
        out = []
        for _ in range(T):
            z, s1 = self.lif1(self.bn1(self.conv1(x)), s1)
            z, s2 = self.lif2(self.bn2(self.conv2(self.pool(z))), s2)
            z, s3 = self.lif3(self.bn3(self.fc1(self.pool(z).flatten(1))), s3)
            out.append(self.fc2(z))
        return torch.stack(out)


def _train_rate(model, T, batch, steps, warmup, device="cpu") -> float:
    """Images per second of full training steps (forward, loss, backward, SGD)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((batch, 1, 28, 28), generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    model.train().to(device)

    def step():
        loss = loss_fn(model(x, T), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device != "cpu":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device != "cpu":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def cpu_training(args) -> dict:
    T, B = 5, args.batch
    spec = ModelSpec(input_shape=(1, 28, 28), mean=(0.29,), std=(0.35,),
                     neuron=NeuronParams())
    configs = {"norse-reference": lambda: NorseReference(),
               "edgeprune-loop": lambda: _with_lif(spec.build(), "loop"),
               "edgeprune": lambda: _with_lif(spec.build(), "fused")}
    rates: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(args.repeats):  # alternate so load on a shared machine hits all alike
        for name, make in configs.items():
            torch.manual_seed(0)
            rates[name].append(_train_rate(make(), T, B, args.steps, args.warmup))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ref = med["norse-reference"]
    return {"what": f"convnet training, 28x28x1, B={B}, T={T}, {torch.get_num_threads()} "
                    "thread(s), images/s (median of repeats)",
            "images_per_s": med, "all": rates,
            "vs_norse_reference": {k: v / ref for k, v in med.items()}}


def _with_lif(model, mode: str):
    from edgeprune.neurons import LIF

    for m in model.modules():
        if isinstance(m, LIF):
            m.fused = mode == "fused"
    return model


def inference(args) -> dict:
    import onnxruntime as ort

    from export.onnx_files import write_onnx

    spec = ModelSpec(input_shape=(1, 28, 28), mean=(0.29,), std=(0.35,))
    model = spec.build().eval()
    out = {}
    with tempfile.TemporaryDirectory() as d:
        write_onnx(spec, model, Path(d), timesteps=5, step=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(str(Path(d) / "model.onnx"), so,
                                    providers=["CPUExecutionProvider"])
        for batch in (1, 64):
            x = torch.rand((batch, 1, 28, 28))
            with torch.no_grad():
                eager = _time(lambda: model(x, 5), args.runs)
            onnx = _time(lambda: sess.run(None, {"input": x.numpy()}), args.runs)
            out[f"batch{batch}"] = {"eager_ms": eager, "onnxruntime_ms": onnx,
                                    "speedup": eager / onnx}
    return out


def _time(fn, runs: int) -> float:
    for _ in range(max(3, runs // 10)):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {"machine": describe(), "threads": args.threads, "cpu_training": cpu_training(args),
              "inference": inference(args)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
