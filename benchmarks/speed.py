"""Training and inference speed, measured side by side in one run (issue 12).

CPU (always): training images/s of the Fashion-MNIST-sized convnet (28x28x1, B=128, T=5):
  norse-reference   the same layers with Norse's LIFBoxCell called once per timestep in a
                    Python loop (every layer runs T times): how a Norse user writes it
  edgeprune-before  edgeprune's layer protocol as it was: Norse's step function in a loop over
                    T inside each LIF layer, NCHW memory format
  edgeprune-fused   + the LIF recurrence as one autograd node (compiled elementwise kernels
                    for large layers, the stem's output never copied over T) and average
                    pooling whose backward skips the zero-fill
  edgeprune         + channels-last memory format (the default path)
and inference at batch 1 and 64: PyTorch eager vs ONNX Runtime on the exported model.
GPU (with --device cuda): vgg16 and resnet19 at width 1, 32x32x3, T=5: the old path (fp32,
eager, batch 64, NCHW, step loop) vs bf16 + channels-last + fused LIF + batch 256
(+ torch.compile with --compile).

Each configuration runs in a fresh process (so its peak memory is its own), configurations
alternate over --repeats rounds (so load on a shared machine hits all alike), and the report
gives the median images/s and the ratio to the reference.

    python benchmarks/speed.py                     # -> benchmarks/results/speed-cpu.{json,md}
    python benchmarks/speed.py --device cuda --compile
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
warnings.filterwarnings("ignore")

CPU_CONFIGS = ("norse-reference", "edgeprune-before", "edgeprune-fused", "edgeprune")
GPU_CONFIGS = ("old", "fast", "fast-compiled")


def _norse_reference(shape=(1, 28, 28), classes=10):
    """The convnet's layers with Norse's own LIFBoxCell, stepped once per timestep."""
    import torch
    from norse.torch import LIFBoxCell, LIFBoxParameters
    from torch import nn

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            p = LIFBoxParameters(tau_mem_inv=torch.tensor(0.75), v_th=torch.tensor(1.0),
                                 method="super", alpha=torch.tensor(10.0))
            self.conv1, self.bn1 = nn.Conv2d(shape[0], 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
            self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32)
            self.fc1 = nn.Linear(32 * (shape[1] // 4) * (shape[2] // 4), 128, bias=False)
            self.bn3, self.fc2, self.pool = nn.BatchNorm1d(128), nn.Linear(128, classes), nn.AvgPool2d(2)
            self.lif1, self.lif2, self.lif3 = (LIFBoxCell(p, dt=1.0) for _ in range(3))

        def forward(self, x, T):
            s1 = s2 = s3 = None
            out = []
            for _ in range(T):
                z, s1 = self.lif1(self.bn1(self.conv1(x)), s1)
                z, s2 = self.lif2(self.bn2(self.conv2(self.pool(z))), s2)
                z, s3 = self.lif3(self.bn3(self.fc1(self.pool(z).flatten(1))), s3)
                out.append(self.fc2(z))
            return torch.stack(out)

    return Reference()


def _one(name: str, args) -> dict:
    """Train one configuration for a few steps in this process; images/s and peak memory."""
    import torch

    import edgeprune  # noqa: F401  (quiets Norse's import warnings)
    from edgeprune.models import ModelSpec
    from edgeprune.neurons import LIF
    from edgeprune.pooling import AvgPool2d
    from edgeprune.training import loss_fn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cuda = args.device.startswith("cuda")
    if cuda:
        arch = args.arch
        spec = ModelSpec(arch=arch, input_shape=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
        batch = 64 if name == "old" else args.gpu_batch
        fast = name != "old"
        shape = (3, 32, 32)
    else:
        spec = ModelSpec(input_shape=(1, 28, 28), mean=(0.29,), std=(0.35,))
        batch, shape = args.batch, (1, 28, 28)
        fast = name == "edgeprune"
    model = _norse_reference() if name == "norse-reference" else spec.build()
    before = name in ("edgeprune-before", "old")
    for parent in list(model.modules()):
        for child_name, m in parent.named_children():
            if isinstance(m, LIF):
                m.fused = not before
            elif before and isinstance(m, AvgPool2d):  # torch's own pooling, as it was
                setattr(parent, child_name, torch.nn.AvgPool2d(m.kernel_size))
    channels_last = fast and name != "norse-reference"
    model = model.to(args.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model, dynamic=False) if name == "fast-compiled" else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((batch, *shape), generator=g).to(args.device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=g).to(args.device)
    amp = dict(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16,
               enabled=cuda and fast)

    def step():
        with torch.autocast(**amp):
            loss = loss_fn(net(x, 5).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    warmup_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"images_per_s": args.steps * batch / seconds, "batch": batch,
            "peak_memory_mb": peak / 2**20, "warmup_s": warmup_s}


def _spawn(name: str, args) -> dict:
    argv = [sys.executable, __file__, "--one", name, "--device", args.device, "--threads",
            str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--batch", str(args.batch), "--gpu-batch", str(args.gpu_batch), "--arch", args.arch]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(f"{name} failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def training(args, configs: tuple[str, ...]) -> dict:
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    for _ in range(args.repeats):
        for c in configs:
            runs[c].append(_spawn(c, args))
    med = {c: statistics.median(r["images_per_s"] for r in rs) for c, rs in runs.items()}
    ref = med[configs[0]]
    return {"images_per_s": med, "vs_" + configs[0]: {c: v / ref for c, v in med.items()},
            "peak_memory_mb": {c: max(r["peak_memory_mb"] for r in rs) for c, rs in runs.items()},
            "batch": {c: rs[0]["batch"] for c, rs in runs.items()},
            "warmup_s": {c: statistics.median(r["warmup_s"] for r in rs) for c, rs in runs.items()},
            "all_images_per_s": {c: [r["images_per_s"] for r in rs] for c, rs in runs.items()}}


def inference(args) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    import edgeprune  # noqa: F401
    from edgeprune.models import ModelSpec
    from export.onnx_files import write_onnx

    torch.set_num_threads(args.threads)
    spec = ModelSpec(input_shape=(1, 28, 28), mean=(0.29,), std=(0.35,))
    model = spec.build().eval()
    out = {}

    def timed(fn):
        for _ in range(20):
            fn()
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(times))

    with tempfile.TemporaryDirectory() as d:
        write_onnx(spec, model, Path(d), timesteps=5, step=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(str(Path(d) / "model.onnx"), so,
                                    providers=["CPUExecutionProvider"])
        for batch in (1, 64):
            x = torch.rand((batch, 1, 28, 28))
            with torch.no_grad():
                eager = timed(lambda: model(x, 5))
            onnx = timed(lambda: sess.run(None, {"input": x.numpy()}))
            out[f"batch{batch}"] = {"eager_ms": eager, "onnxruntime_ms": onnx,
                                    "onnxruntime_speedup": eager / onnx}
    return out


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name()


def report(result: dict) -> str:
    m, t = result["machine"], result["training"]
    ref = next(k for k in t if k.startswith("vs_"))
    lines = [f"# Speed ({result['device']})", "",
             f"Machine: {m['cpu']}{', GPU ' + result['gpu'] if result.get('gpu') else ''}, "
             f"{m['cores']} cores, load average at start "
             f"{m['load_average_at_start'][0]:.1f}; torch {m['torch']}, {result['threads']} "
             f"thread(s); commit {m['git_commit']}. Command: `{result['command']}`", "",
             f"## Training ({result['what']})", "",
             "| path | batch | images/s (median) | vs reference | peak memory MB | warm-up s |",
             "|---|---|---|---|---|---|"]
    for c, v in t["images_per_s"].items():
        lines.append(f"| {c} | {t['batch'][c]} | {v:.0f} | {t[ref][c]:.2f}× | "
                     f"{t['peak_memory_mb'][c]:.0f} | {t['warmup_s'][c]:.1f} |")
    if result.get("inference"):
        lines += ["", "## Inference (convnet 28x28, T=5)", "",
                  "| batch | PyTorch eager ms | ONNX Runtime ms | ORT speed-up |", "|---|---|---|---|"]
        for b, v in result["inference"].items():
            lines.append(f"| {b.removeprefix('batch')} | {v['eager_ms']:.2f} | "
                         f"{v['onnxruntime_ms']:.3f} | {v['onnxruntime_speedup']:.1f}× |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128, help="CPU batch")
    ap.add_argument("--gpu-batch", type=int, default=256, help="GPU batch of the fast path")
    ap.add_argument("--arch", default="vgg16", help="GPU: vgg16 or resnet19")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--compile", action="store_true", help="GPU: also the compiled fast path")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(_one(args.one, args)))
        return
    from machine import describe

    cuda = args.device.startswith("cuda")
    configs = GPU_CONFIGS[:3 if args.compile else 2] if cuda else CPU_CONFIGS
    what = (f"{args.arch} width 1, 32x32x3, T=5" if cuda else
            f"convnet, 28x28x1, B={args.batch}, T=5")
    result = {"device": args.device, "threads": args.threads, "what": what,
              "command": " ".join(["python", "benchmarks/speed.py", *sys.argv[1:]]),
              "machine": describe(), "gpu": _gpu_name() if cuda else None,
              "training": training(args, configs),
              "inference": None if cuda else inference(args)}
    name = f"speed-{'gpu-' + args.arch if cuda else 'cpu'}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
