"""Why VGG16 and ResNet19 learn slowly, one candidate at a time (issue 23), and the learning
curve of the fix on full Fashion-MNIST.

    python benchmarks/deep_learning.py probe --arch vgg16 --candidates base,lr-0.02 --seeds 0
    python benchmarks/deep_learning.py curve --arch vgg16 --candidates base --cpu-budget 1800
    python benchmarks/deep_learning.py report            # re-render report.md from results.json

`bnstats`: after each epoch, validation accuracy with the running BatchNorm statistics
and with statistics recomputed for the same weights. `init`: only the first-batch figures below, without training (dead layers, vanishing
gradients). `probe`: each candidate changes one thing against today's defaults and trains from the same
seed on a seeded subset of the training images (`--train-subset`, `--epochs`), then reports the
accuracy on a fixed validation split held out of the training images (never the test set),
the spike rate of every LIF layer at initialization (one training batch) and after training,
the relative gradient of every prunable layer on the first batch, and the run's process CPU
seconds and wall seconds.

`curve`: one candidate on the full training set (minus the validation split), evaluated on the
validation split every `--eval-every` steps until `--cpu-budget` process CPU seconds of
training have been spent (evaluations not counted), then once on the test set.

Every finished run is appended to results.json and report.md is re-rendered, so a killed run
keeps what it had.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edgeprune  # noqa: E402,F401  (quiets Norse's import warnings)
import torch  # noqa: E402
from filelock import FileLock  # noqa: E402
from torch import nn  # noqa: E402

from edgeprune import data as datalib  # noqa: E402
from edgeprune.config import ModelConfig, NeuronParams, TrainConfig  # noqa: E402
from edgeprune.models import ModelSpec, prunable, spiking_layers  # noqa: E402
from edgeprune.training import Trainer, evaluate, loss_fn  # noqa: E402
from machine import describe  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "deep-learning"
VAL_IMAGES = 1000


def _bn_gamma(value: float) -> Callable[[nn.Module], None]:
    def init(model: nn.Module) -> None:
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.constant_(m.weight, value)
    return init


def _residual_bn_gamma(value: float) -> Callable[[nn.Module], None]:
    """tdBN's rule for residual blocks: the two BatchNorms whose outputs are summed start at
    `value` (1/sqrt 2: the sum has the variance of one)."""
    def init(model: nn.Module) -> None:
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d) and (name.endswith(".bn2")
                                                  or name.endswith(".shortcut.1")):
                nn.init.constant_(m.weight, value)
    return init


@dataclass(frozen=True)
class Candidate:
    """One change against today's defaults."""

    what: str
    neuron: dict = field(default_factory=dict)  # NeuronParams fields
    train: dict = field(default_factory=dict)  # TrainConfig fields
    init: Callable[[nn.Module], None] | None = None  # applied after the model is built


CANDIDATES: dict[str, Candidate] = {
    "base": Candidate("today's defaults: SGD lr 0.1, SuperSpike, hard reset"),
    "lr-0.02": Candidate("learning rate 0.02", train={"lr": 0.02}),
    "lr-0.3": Candidate("learning rate 0.3", train={"lr": 0.3}),
    "warmup-1": Candidate("1 epoch of linear warm-up", train={"warmup_epochs": 1}),
    "tanh-2": Candidate("surrogate tanh, alpha 2 (narrower than SuperSpike)",
                        neuron={"surrogate": "tanh", "alpha": 2.0}),
    "subtract": Candidate("reset by subtraction", neuron={"reset": "subtract"}),
    "detach-reset": Candidate("no gradient through the reset (--reset-grad detach)",
                              neuron={"reset_grad": "detach"}),
    "bn-gamma-2": Candidate("BatchNorm weights start at 2 (threshold-scaled normalization: "
                            "inputs of std 2 v_th)", init=_bn_gamma(2.0)),
    "residual-bn": Candidate("resnet19: the BatchNorms summed in a block start at 1/sqrt(2) "
                             "(tdBN)", init=_residual_bn_gamma(2 ** -0.5)),
}


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


def dataset(name: str, train_subset: int | None, val_images: int) -> datalib.Dataset:
    """`name` with a fixed validation split of `val_images` training images."""
    full = datalib.load(name)
    n = min(len(full.y_train), train_subset + val_images) if train_subset else len(full.y_train)
    return full.subset(n, 0).split_validation(val_images / n)


def build(arch: str, width: float, cand: Candidate, ds: datalib.Dataset, seed: int):
    torch.manual_seed(seed)
    spec = ModelSpec.for_data(ModelConfig(arch=arch, width=width,
                                          neuron=NeuronParams(**cand.neuron)), ds)
    model = spec.build()
    if cand.init:
        cand.init(model)
    return spec, model


def first_batch_probe(model: nn.Module, ds: datalib.Dataset, timesteps: int,
                      batch: int) -> dict:
    """Spike rate of every LIF layer and |grad| / |w| of every prunable layer on one batch
    at initialization (train mode, as the first step sees it); leaves no gradient behind."""
    rates: dict[str, float] = {}
    hooks = [m.register_forward_hook(
        lambda _m, _i, out, n=n: rates.__setitem__(n, float(out.detach().float().mean())))
        for n, m in spiking_layers(model).items()]
    model.train()
    try:
        loss = loss_fn(model(ds.x_train[:batch], timesteps), ds.y_train[:batch])
        loss.backward()
    finally:
        for h in hooks:
            h.remove()
    grads = {n: float(p.grad.norm() / p.norm()) for n, p in prunable(model).items()}
    model.zero_grad(set_to_none=True)
    return {"init_loss": loss.item(), "init_spike_rate": rates, "init_rel_grad": grads}


def probe(args, cand_name: str, seed: int, ds: datalib.Dataset) -> dict:
    cand = CANDIDATES[cand_name]
    spec, model = build(args.arch, args.width, cand, ds, seed)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, **cand.train)
    row = {"mode": "probe", "data": args.data, "arch": args.arch, "width": args.width, "candidate": cand_name,
           "what": cand.what, "seed": seed, "train_images": len(ds.y_train),
           "epochs": args.epochs, "train": cfg.to_dict(), "neuron": spec.neuron.to_dict(),
           # on a copy: the probe's forward would move the BatchNorm running statistics
           **first_batch_probe(copy.deepcopy(model), ds, spec.timesteps, cfg.batch_size)}
    trainer = Trainer(model, ds, spec.timesteps, cfg, seed)
    wall0, cpu0, history = time.perf_counter(), time.process_time(), []
    for _ in range(args.epochs):
        r = trainer.train_epoch()
        history.append({"epoch": r["epoch"], "loss": r["loss"], "train_acc": r["train_acc"],
                        "val_acc": evaluate(model, ds.x_val, ds.y_val, spec.timesteps)[
                            "accuracy"]})
    ev = evaluate(model, ds.x_val, ds.y_val, spec.timesteps)
    row.update(val_acc=ev["accuracy"], spike_rate=ev["spike_rate"], history=history,
               cpu_s=time.process_time() - cpu0, wall_s=time.perf_counter() - wall0,
               load_after=os.getloadavg())
    return row


def init_probe(args, cand_name: str, seed: int, ds: datalib.Dataset) -> dict:
    """Only the first-batch figures (spike rates per layer, relative gradients): no training."""
    cand = CANDIDATES[cand_name]
    spec, model = build(args.arch, args.width, cand, ds, seed)
    return {"mode": "init", "data": args.data, "arch": args.arch, "width": args.width,
            "candidate": cand_name, "what": cand.what, "seed": seed,
            "batch": args.batch_size, "neuron": spec.neuron.to_dict(),
            **first_batch_probe(model, ds, spec.timesteps, args.batch_size)}


def _as_kept(model: nn.Module, ds: datalib.Dataset, timesteps: int) -> nn.Module:
    """A copy with BatchNorm statistics recomputed for its weights, as `train` keeps a model
    (edgeprune.training.recompute_batchnorm); the model in training is left as it is."""
    from edgeprune.training import recompute_batchnorm

    other = copy.deepcopy(model)
    recompute_batchnorm(other, ds.x_train, timesteps)
    return other


def bn_stats(args, cand_name: str, seed: int, ds: datalib.Dataset) -> dict:
    """Validation accuracy after each epoch with the running BatchNorm statistics and with
    statistics recomputed for the same weights (edgeprune.training.recompute_batchnorm, on a
    copy): what an evaluation after a few dozen steps sees."""
    cand = CANDIDATES[cand_name]
    spec, model = build(args.arch, args.width, cand, ds, seed)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, **cand.train)
    trainer, rows = Trainer(model, ds, spec.timesteps, cfg, seed), []
    for _ in range(args.epochs):
        r = trainer.train_epoch()
        other = _as_kept(model, ds, spec.timesteps)
        rows.append({"epoch": r["epoch"], "steps": r["epoch"] * trainer.steps_per_epoch,
                     "train_acc": r["train_acc"],
                     "val_running": evaluate(model, ds.x_val, ds.y_val, spec.timesteps)[
                         "accuracy"],
                     "val_recomputed": evaluate(other, ds.x_val, ds.y_val, spec.timesteps)[
                         "accuracy"]})
    return {"mode": "bnstats", "data": args.data, "arch": args.arch, "width": args.width,
            "candidate": cand_name, "what": cand.what, "seed": seed,
            "train_images": len(ds.y_train), "rows": rows}


class _Spent(Exception):
    """The CPU budget of a learning curve is spent."""


def curve(args, cand_name: str, seed: int, ds: datalib.Dataset) -> dict:
    cand = CANDIDATES[cand_name]
    spec, model = build(args.arch, args.width, cand, ds, seed)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, **cand.train)
    trainer = Trainer(model, ds, spec.timesteps, cfg, seed)
    points, clock = [], {"cpu": 0.0, "wall": 0.0, "t": time.process_time(),
                         "w": time.perf_counter(), "images": 0}

    def on_step(r: dict) -> None:
        now, wnow = time.process_time(), time.perf_counter()
        clock["cpu"] += now - clock["t"]
        clock["wall"] += wnow - clock["w"]
        clock["images"] += cfg.batch_size
        done = clock["cpu"] >= args.cpu_budget
        if r["step"] % args.eval_every == 0 or done or r["step"] == r["steps"]:
            v = evaluate(_as_kept(model, ds, spec.timesteps), ds.x_val, ds.y_val,
                         spec.timesteps)
            points.append({"epoch": r["epoch"], "step": r["step"], "images": clock["images"],
                           "train_cpu_s": clock["cpu"], "train_wall_s": clock["wall"],
                           "train_loss": r["loss"], "val_acc": v["accuracy"],
                           "load": os.getloadavg()[0]})
            log(f"{args.arch} {cand_name} {points[-1]}")
            model.train()
        if done:
            raise _Spent
        clock["t"], clock["w"] = time.process_time(), time.perf_counter()

    try:
        for _ in range(args.epochs):
            trainer.train_epoch(report=on_step)
            clock["t"], clock["w"] = time.process_time(), time.perf_counter()
    except _Spent:
        pass
    ev = evaluate(_as_kept(model, ds, spec.timesteps), ds.x_test, ds.y_test, spec.timesteps)
    return {"mode": "curve", "data": args.data, "arch": args.arch, "width": args.width, "candidate": cand_name,
            "what": cand.what, "seed": seed, "train_images": len(ds.y_train),
            "epochs": args.epochs, "cpu_budget": args.cpu_budget, "train": cfg.to_dict(),
            "neuron": spec.neuron.to_dict(), "points": points,
            "test_acc_at_end": ev["accuracy"], "spike_rate": ev["spike_rate"]}


# -- results ----------------------------------------------------------------------------------

def load_results(out: Path) -> dict:
    path = out / "results.json"
    return json.loads(path.read_text()) if path.exists() else {"runs": []}


def save(out: Path, data: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(out / "results.json")
    (out / "report.md").write_text(render(data))


def _rates(rates: dict) -> str:
    vals = list(rates.values())
    return f"{min(vals):.3f}–{max(vals):.3f}" if vals else "—"


def render(data: dict) -> str:
    lines = ["# Deep SNNs that learn: the evidence (issue 23)", "",
             "Generated by `benchmarks/deep_learning.py`; every number below is from "
             "`results.json` next to this file. Accuracies are on a fixed validation split "
             "held out of the training images (the test set only at the end of a learning "
             "curve). CPU seconds are this process's own (1 torch thread); wall "
             "seconds are inflated by the other jobs on the shared 2-core machine (load "
             "averages recorded).", ""]
    for m in data.get("machines", [])[-1:]:
        lines += [f"Machine (last run): {m.get('cpu')}, {m.get('cores')} cores, load at start "
                  f"{m.get('load_average_at_start')}, torch {m.get('torch')}, git "
                  f"{m.get('git_commit')}, uncommitted library edits "
                  f"{m.get('edgeprune_uncommitted')}.", ""]
    probes = [r for r in data["runs"] if r["mode"] == "probe"]
    for data_name, arch in sorted({(r["data"], r["arch"]) for r in probes}):
        rows = [r for r in probes if (r["data"], r["arch"]) == (data_name, arch)]
        budgets = sorted({(r["train_images"], r["epochs"], r["width"]) for r in rows})
        for n, e, w in budgets:
            sel = [r for r in rows if (r["train_images"], r["epochs"], r["width"]) == (n, e, w)]
            lines += [f"## {data_name}, {arch} width {w}: {n} training images, {e} epochs", "",
                      "| candidate | what | seeds | val acc % (mean ± std) | per seed | "
                      "init loss | LIF rate at init (min–max) | after training | "
                      "rel. grad at init (min–max) | CPU s | wall s |",
                      "|---|---|---|---:|---|---:|---|---|---|---:|---:|"]
            for cand in dict.fromkeys(r["candidate"] for r in sel):
                rs = sorted((r for r in sel if r["candidate"] == cand), key=lambda r: r["seed"])
                accs = [100 * r["val_acc"] for r in rs]
                sd = f" ± {statistics.stdev(accs):.1f}" if len(accs) > 1 else ""
                grads = [g for r in rs for g in r.get("init_rel_grad", {}).values()]
                init = [r["init_loss"] for r in rs if "init_loss" in r]
                lines.append(
                    f"| {cand} | {rs[0]['what']} | {','.join(str(r['seed']) for r in rs)} | "
                    f"{statistics.mean(accs):.1f}{sd} | "
                    f"{' / '.join(f'{a:.1f}' for a in accs)} | "
                    f"{f'{statistics.mean(init):.3f}' if init else '—'} | "
                    f"{_rates(rs[0].get('init_spike_rate', {}))} | "
                    f"{_rates(rs[0]['spike_rate'])} | "
                    f"{f'{min(grads):.2g}–{max(grads):.2g}' if grads else '—'} | "
                    f"{statistics.mean(r['cpu_s'] for r in rs):.0f} | "
                    f"{statistics.mean(r['wall_s'] for r in rs):.0f} |")
            if any(r.get("source") for r in sel):
                lines += ["", "Rows without initialization figures (—) came from "
                          f"`{next(r['source'] for r in sel if r.get('source'))}`."]
            lines.append("")
    for r in (r for r in data["runs"] if r["mode"] == "init"):
        lines += [f"## At initialization: {r['data']}, {r['arch']} width {r['width']}, "
                  f"candidate {r['candidate']}, seed {r['seed']}, one batch of {r['batch']}", "",
                  f"Loss {r['init_loss']:.3f} (chance: ln 10 = 2.303).", "",
                  "| layer | spike rate | | prunable layer | \\|grad\\| / \\|w\\| |",
                  "|---|---:|---|---|---:|"]
        rates, grads = list(r["init_spike_rate"].items()), list(r["init_rel_grad"].items())
        for i in range(max(len(rates), len(grads))):
            a = f"{rates[i][0]} | {rates[i][1]:.3f}" if i < len(rates) else " | "
            b = f"{grads[i][0]} | {grads[i][1]:.3g}" if i < len(grads) else " | "
            lines.append(f"| {a} | | {b} |")
        lines.append("")
    for r in (r for r in data["runs"] if r["mode"] == "bnstats"):
        lines += [f"## BatchNorm statistics: {r['data']}, {r['arch']} width {r['width']}, "
                  f"candidate {r['candidate']}, seed {r['seed']}, {r['train_images']} "
                  "training images", "",
                  "| epoch | steps | train acc % | val acc %, running statistics | "
                  "val acc %, recomputed |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {x['epoch']} | {x['steps']} | {100 * x['train_acc']:.1f} | "
                  f"{100 * x['val_running']:.1f} | {100 * x['val_recomputed']:.1f} |"
                  for x in r["rows"]]
        lines.append("")
    curves = [r for r in data["runs"] if r["mode"] == "curve"]
    if curves:
        lines += ["## Learning curves on full Fashion-MNIST", ""]
    for r in curves:
        lines += [f"### {r['arch']} width {r['width']}, candidate {r['candidate']}, seed "
                  f"{r['seed']}", "",
                  f"{r['train_images']} training images, batch {r['train']['batch_size']}, "
                  f"lr {r['train']['lr']}, cosine over {r['epochs']} epochs, CPU budget "
                  f"{r['cpu_budget']} s. Test accuracy at the end of the curve: "
                  f"**{100 * r['test_acc_at_end']:.2f}%**.", "",
                  "| epoch | step | images | train CPU s | train wall s | load | train loss | "
                  "val acc % |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for p in r["points"]:
            lines.append(f"| {p['epoch']} | {p['step']} | {p['images']} | "
                         f"{p['train_cpu_s']:.0f} | {p['train_wall_s']:.0f} | {p['load']:.1f} | "
                         f"{p['train_loss']:.3f} | {100 * p['val_acc']:.1f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("init", "probe", "bnstats", "curve", "report"))
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--val-images", type=int, default=VAL_IMAGES)
    ap.add_argument("--arch", default="vgg16")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--candidates", default="base")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--train-subset", type=int, default=3000, help="0: all (curve's default)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--cpu-budget", type=float, default=1800.0)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    data = load_results(args.out)
    if args.mode == "report":
        save(args.out, data)
        return
    torch.set_num_threads(args.threads)
    ds = dataset(args.data, args.train_subset, args.val_images)
    for cand in args.candidates.split(","):
        if cand not in CANDIDATES:
            raise SystemExit(f"unknown candidate {cand!r}: choose {', '.join(CANDIDATES)}")
        for seed in (int(s) for s in args.seeds.split(",")):
            log(f"{args.mode} {args.arch} {cand} seed {seed}")
            row = {"init": init_probe, "probe": probe, "bnstats": bn_stats,
                   "curve": curve}[args.mode](
                args, cand, seed, ds)
            row["command"] = " ".join(sys.argv)
            args.out.mkdir(parents=True, exist_ok=True)
            with FileLock(os.path.join(tempfile.gettempdir(), "edgeprune-deep-learning.lock")):
                data = load_results(args.out)
                data.setdefault("machines", []).append(describe())
                data["runs"].append(row)
                save(args.out, data)
            log(f"done {cand} seed {seed}: "
                f"{row.get('val_acc', row.get('test_acc_at_end'))}")


if __name__ == "__main__":
    main()
