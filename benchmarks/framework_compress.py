"""Networks users already have (Norse, snnTorch), compressed to 90%: does the ticket hold up?

Three nets written the way the frameworks' tutorials write them (tests/user_models/): Norse's
LIFCell conv net, snnTorch's tutorial conv net (~1.4k weights) and the same one conv layer
deeper and wider (~6k weights). Each is trained with its framework's own loop on digits, saved
as a state dict (snnTorch's also as a NIR file with snnTorch's conventions), then compressed as
a user would, from code and from the NIR file:

    edgeprune compress w.pt --model-def snntorch_digits.py:NET --sparsity 0.9 --method imp ...
    edgeprune compress model.nir --sparsity 0.9 --method imp ...

once rewinding to the model's own weights (the default for a model with no recorded early
weights) and once to a fresh initialization (`--rewind-epoch 0`, the default before). Records
the framework's own test accuracy, the imported dense accuracy, the ticket's, the validation
agreement with PyTorch and the exit code (1 = the 5-point accuracy gate failed).

    python benchmarks/framework_compress.py [--epochs 4] [--round-epochs 2] [--retrain-epochs 10]

Writes benchmarks/results/framework_compress.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
USERS = ROOT / "tests" / "user_models"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(USERS))

import norse_digits  # noqa: E402
import snntorch_digits  # noqa: E402
import snntorch_nir  # noqa: E402
from machine import describe  # noqa: E402

from edgeprune import data as datalib  # noqa: E402

T = 5
# (framework, builder name, module, train, own accuracy, NIR file too)
NETS = (("norse", "lif_cell", norse_digits, norse_digits.train_the_norse_way,
         norse_digits.norse_accuracy, False),
        ("snntorch", "convnet", snntorch_digits, snntorch_digits.train_the_snntorch_way,
         snntorch_digits.snntorch_accuracy, True),
        ("snntorch", "convnet_two_layers", snntorch_digits, snntorch_digits.train_the_snntorch_way,
         snntorch_digits.snntorch_accuracy, True))
REWINDS = (("own weights", []), ("fresh init", ["--rewind-epoch", "0"]))


def compress(source: list[str], out: Path, args) -> dict:
    cmd = [sys.executable, "-m", "cli", "compress", *source, "-T", str(T), "--data", "digits",
           "--sparsity", "0.9", "--method", "imp", "--round-epochs", str(args.round_epochs),
           "--retrain-epochs", str(args.retrain_epochs), "--target", "x86_64,c-x86_64",
           "--out", str(out), "--json"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    row = {"command": "edgeprune " + " ".join(cmd[3:]).replace(str(ROOT) + "/", ""),
           "exit_code": r.returncode, "seconds": round(time.perf_counter() - t0, 1)}
    try:
        s = json.loads(r.stdout)["summary"]
    except (ValueError, KeyError):
        row["error"] = r.stderr.strip().splitlines()[-1:] or ["no output"]
        return row
    row.update({k: s.get(k) for k in ("dense_accuracy", "ticket_accuracy", "sparsity", "passed")})
    row["agreement"] = s.get("validation", {}).get("agreement")
    if r.returncode:
        row["message"] = r.stderr.strip().splitlines()[-1:]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4, help="snnTorch training epochs")
    ap.add_argument("--round-epochs", type=int, default=2)
    ap.add_argument("--retrain-epochs", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = datalib.load("digits")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for framework, name, module, train, accuracy, nir in NETS:
            torch.manual_seed(0)
            net = train(getattr(module, name)(), ds, T, epochs=args.epochs)
            folder = Path(tmp) / name
            folder.mkdir()
            torch.save(net.state_dict(), folder / "w.pt")
            sources = [("code", [str(folder / "w.pt"), "--model-def",
                                 f"{Path(module.__file__)}:{name}"])]
            if nir:
                snntorch_nir.write(net, (1, 8, 8), folder / "model.nir")
                sources.append(("nir", [str(folder / "model.nir")]))
            base = {"framework": framework, "net": name,
                    "weights": sum(p.numel() for n, p in net.named_parameters()
                                   if n.endswith("weight") and p.dim() > 1),
                    "framework_accuracy": accuracy(net, ds, T)}
            for how, source in sources:
                for rewind, extra in REWINDS:
                    out = folder / f"out-{how}-{len(extra)}"
                    row = {**base, "from": how, "rewind": rewind,
                           **compress(source + extra, out, args)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    result = {"machine": describe(), "config": vars(args) | {"out": str(args.out), "T": T},
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "framework_compress.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Norse and snnTorch nets compressed to 90% (digits, T=5)", "",
             f"`python benchmarks/framework_compress.py` (each framework's training loop, "
             f"{args.epochs} epochs; "
             f"IMP {args.round_epochs} epochs per round, retrain {args.retrain_epochs} epochs; "
             "5-point accuracy gate).", "",
             "| net | weights | from | rewind to | framework's own | imported dense | 90% ticket "
             "| drop (points) | same class as PyTorch (ORT) | exit |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        drop = (f"{100 * (r['dense_accuracy'] - r['ticket_accuracy']):.2f}"
                if r.get("ticket_accuracy") is not None else "—")
        fmt = (lambda v: "—" if v is None else f"{100 * v:.2f}%")
        lines.append(f"| {r['framework']} {r['net']} | {r['weights']:,} | {r['from']} | "
                     f"{r['rewind']} | "
                     f"{fmt(r['framework_accuracy'])} | {fmt(r.get('dense_accuracy'))} | "
                     f"{fmt(r.get('ticket_accuracy'))} | {drop} | {fmt(r.get('agreement'))} | "
                     f"{r['exit_code']} |")
    m = result["machine"]
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, load average at start "
              f"{m['load_average_at_start'][0]:.1f}; every command and figure in "
              "framework_compress.json."]
    (args.out / "framework_compress.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
