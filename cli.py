"""edgeprune command line: one command per stage, plus `compress`, which chains them.

Exit codes: 0 success; 1 a validation gate failed; 2 bad usage or bad input.
"""
from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import edgeprune  # noqa: F401  (filters Norse's import warnings before anything imports it)
from edgeprune import recipe
from edgeprune.artifacts import Store, open_artifact
from edgeprune.errors import GateFailed, UserError

err = Console(stderr=True)
out = Console()


class App(typer.Typer):
    """Maps failures to exit codes with a one-line message instead of a traceback."""

    def __call__(self, *args, **kwargs):
        debug = "--debug" in sys.argv
        if debug:
            sys.argv.remove("--debug")
        try:
            rc = super().__call__(*args, standalone_mode=False, **kwargs)
            sys.exit(rc if isinstance(rc, int) else 0)
        except typer.Exit as e:
            sys.exit(e.exit_code)
        except (typer.Abort, KeyboardInterrupt):
            err.print("interrupted")
            sys.exit(130)
        except UserError as e:
            if debug:
                raise
            _fail(str(e), 2)
        except GateFailed as e:
            _fail(str(e), 1)
        except Exception as e:
            # Typer's (vendored or not) click usage errors: bad option, missing argument, ...
            if debug or not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
                raise
            if type(e).__name__ in ("Exit",):
                sys.exit(e.exit_code)
            _fail(e.format_message(), 2)


def _fail(message: str, code: int) -> None:
    line = " ".join(str(message).split())  # one line, whatever the message held
    print(f"edgeprune: error: {line}", file=sys.stderr)
    sys.exit(code)


app = App(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
          help="Compress spiking neural networks for edge devices: find a lottery ticket, "
               "retrain it, export it to ONNX and validate it.  Add --debug to any command to "
               "see tracebacks.")

# -- shared options --------------------------------------------------------------------------

OutOpt = typer.Option(Path("runs"), "--out", help="Run directory where artifacts are written.")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout (for CI).")
SeedOpt = typer.Option(0, "--seed", help="Random seed (training is deterministic on CPU).")
DeviceOpt = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N.")
ConfigOpt = typer.Option(None, "--config", help="TOML recipe of option values; the command "
                         "line overrides it.", dir_okay=False)
DataOpt = typer.Option("digits", "--data", help="digits, fashion-mnist[:DIR], cifar10:DIR, a "
                       "directory of IDX/CIFAR files, or a .npz file.")


def _apply_recipe(ctx: typer.Context, params: dict, config: Optional[Path]) -> dict:
    """Fill options left at their defaults from the recipe; the command line wins."""
    if config is None:
        return params
    values = recipe.load(config, _option_types())
    for name, value in values.items():
        source = ctx.get_parameter_source(name)
        if name in params and getattr(source, "name", "") == "DEFAULT":
            params[name] = value
    return params


def _option_types() -> dict[str, type]:
    """Every option any command takes, with its Python type: the keys a recipe may set."""
    import typing

    known: dict[str, type] = {}
    for cmd in app.registered_commands:
        for name, hint in typing.get_type_hints(cmd.callback).items():
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            t = args[0] if typing.get_origin(hint) is typing.Union and args else hint
            if t in (int, float, bool, str) and name not in ("as_json",):
                known[name] = t
            elif t is Path and name not in ("out_dir", "config"):
                known[name] = str
    return known


@contextmanager
def _progress(quiet: bool):
    """A rich progress display on stderr, or nothing for --json / non-terminals."""
    if quiet or not err.is_terminal:
        yield None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err,
                  transient=False) as p:
        yield p


def _train_reporter(progress, epochs: int):
    if progress is None:
        return lambda e: None
    task = progress.add_task("train", total=epochs, info="")

    def report(e: dict) -> None:
        if e.get("event") == "epoch":
            progress.update(task, completed=e["epoch"],
                            info=f"loss {e['loss']:.3f}  train {e['train_acc']:.1%}  "
                                 f"test {e['test_acc']:.1%}")
        elif "step" in e:
            progress.update(task, completed=e["epoch"] - 1 + e["step"] / e["steps"],
                            info=f"epoch {e['epoch']}  loss {e['loss']:.3f}  "
                                 f"acc {e['train_acc']:.1%}")
    return report


def _emit(as_json: bool, payload: dict, table: Table | None = None, lines: list[str] = ()) -> None:
    if as_json:
        print(json.dumps(payload, default=str))
        return
    if table is not None:
        out.print(table)
    for line in lines:
        out.print(line)


# -- train -----------------------------------------------------------------------------------

@app.command()
def train(
    ctx: typer.Context,
    data: str = DataOpt,
    arch: str = typer.Option("convnet", help="convnet, vgg16 or resnet19."),
    width: float = typer.Option(1.0, help="Channel width multiplier (vgg16/resnet19 at 1.0 are "
                                "the paper's sizes)."),
    pool: str = typer.Option("avg", help="Pooling: avg (NIR-exportable) or max."),
    timesteps: int = typer.Option(5, "--timesteps", "-T", help="Timesteps T."),
    encoding: str = typer.Option("direct", help="direct (image fed to the first conv) or poisson."),
    epochs: int = typer.Option(30, help="Training epochs."),
    batch_size: int = typer.Option(64, help="Batch size."),
    lr: float = typer.Option(0.1, help="Initial learning rate (SGD, cosine schedule)."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    weight_decay: float = typer.Option(5e-4, help="SGD weight decay."),
    augment: bool = typer.Option(False, help="Random shifts (and flips for CIFAR)."),
    train_subset: Optional[int] = typer.Option(None, help="Train on a random subset of N images."),
    tau_mem_inv: float = typer.Option(0.75, help="LIF leak: v = (1-a)·v + a·x."),
    v_th: float = typer.Option(1.0, help="LIF threshold."),
    reset: str = typer.Option("value", help="value (hard reset to 0) or subtract."),
    surrogate: str = typer.Option("super", help="Surrogate gradient: super, triangle, tanh, "
                                  "circ, heavi_erfc."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    out_dir: Path = OutOpt,
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
):
    """Train a dense SNN and store it as a self-describing model.pt artifact."""
    from edgeprune import stages
    from edgeprune.neurons import NeuronParams
    from edgeprune.training import TrainConfig

    p = _apply_recipe(ctx, dict(ctx.params), config)
    neuron = NeuronParams(tau_mem_inv=p["tau_mem_inv"], v_th=p["v_th"], reset=p["reset"],
                          surrogate=p["surrogate"])
    cfg = TrainConfig(epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"],
                      momentum=p["momentum"], weight_decay=p["weight_decay"], augment=p["augment"])
    store = Store(out_dir)
    dev = stages.resolve_device(p["device"])
    with _progress(as_json) as progress:
        art, cached = stages.train(store, stages.DataConfig(p["data"], p["train_subset"]),
                                   p["arch"], p["width"], p["pool"], p["timesteps"], p["encoding"],
                                   neuron, cfg, p["seed"], dev, _train_reporter(progress, cfg.epochs))
    m = art.metrics
    t = Table(title=f"dense {p['arch']} on {p['data']}" + (" (cached)" if cached else ""))
    for col in ("test accuracy", "spike rate", "prunable weights", "epochs", "train time"):
        t.add_column(col, justify="right")
    t.add_row(f"{m['test_accuracy']:.2%}", f"{m['mean_spike_rate']:.3f}",
              f"{m['prunable_weights']:,}", str(m["epochs"]), f"{m['train_seconds']:.1f} s")
    _emit(as_json, {"stage": "train", "id": art.id, "cached": cached,
                    "model": str(art.path / "model.pt"), "metrics": m}, t,
          [f"model: {art.path / 'model.pt'}"])


# -- search, retrain, compress (ticket stages) ----------------------------------------------

# (ticket commands go here)

MethodOpt = typer.Option("et-imp", help="imp, et-imp, eb, et-eb, random or reinit.")
SparsityOpt = typer.Option(0.97, help="Target fraction of conv/linear weights set to zero.")
PruneRateOpt = typer.Option(0.25, help="IMP: fraction of remaining weights pruned per round.")
RewindOpt = typer.Option(None, help="Rewind to the dense run's weights after this many epochs "
                         "(0 = initialization) [default: the dense run's late-rewinding point]")
RoundEpochsOpt = typer.Option(10, help="IMP: epochs per round; EB: epoch budget.")
ScopeOpt = typer.Option("global", help="Magnitude ranking: global or layer.")
KeepFirstOpt = typer.Option(False, help="Keep the first conv layer dense.")
KeepLastOpt = typer.Option(False, help="Keep the classifier layer dense.")
EbQOpt = typer.Option(5, help="Early-Bird: masks in the comparison window.")
EbTauOpt = typer.Option(0.02, help="Early-Bird: stop when all mask distances are below this.")
EtEpochsOpt = typer.Option(2, help="Early-Time: epochs at full T before scoring timesteps.")
EtLambdaOpt = typer.Option(0.6, help="Early-Time: normalized-KL threshold for picking T'.")
EtCandOpt = typer.Option("", help="Early-Time: candidate T' list, e.g. 2,3,4 (the paper's) "
                         "[default: 1..T-1]")
FromMaskOpt = typer.Option(None, help="random/reinit: the ticket (search artifact) to mirror.")
BatchOpt = typer.Option(64, help="Batch size.")
LrOpt = typer.Option(0.1, help="Initial learning rate (SGD, cosine schedule).")


def _search_config(p: dict):
    from edgeprune.search import SearchConfig
    from edgeprune.search.config import parse_candidates

    return SearchConfig(method=p["method"], sparsity=p["sparsity"], prune_rate=p["prune_rate"],
                        rewind_epoch=p["rewind_epoch"], round_epochs=p["round_epochs"],
                        batch_size=p["batch_size"], lr=p["lr"], scope=p["scope"],
                        keep_first=p["keep_first"], keep_last=p["keep_last"], eb_q=p["eb_q"],
                        eb_tau=p["eb_tau"], et_epochs=p["et_epochs"], et_lambda=p["et_lambda"],
                        et_candidates=parse_candidates(p["et_candidates"]))


def _search_reporter(progress, cfg):
    if progress is None:
        return lambda e: None
    task = progress.add_task(cfg.method, total=None, info="")

    def report(e: dict) -> None:
        ev = e.get("event")
        if ev == "early-time":
            progress.update(task, info=f"T'={e['pick']} (normalized KL "
                            + ", ".join(f"{t}:{v:.2f}" for t, v in e["normalized_kl"].items()) + ")")
        elif ev == "round":
            progress.update(task, total=e["rounds"] - 1, completed=e["round"],
                            info=f"round {e['round']}/{e['rounds']}  sparsity {e['sparsity']:.1%}  "
                                 f"acc {e['test_acc']:.1%}  T={e['timesteps']}")
        elif ev == "eb":
            progress.update(task, total=e["epochs"], completed=e["epoch"],
                            info=f"epoch {e['epoch']}  mask distance "
                                 + ("-" if e["distance"] is None else f"{e['distance']:.4f}"))
        elif "step" in e and "round" in e:
            progress.update(task, info=f"round {e['round']}/{e['rounds']}  epoch {e['epoch']}  "
                                       f"loss {e['loss']:.3f}  acc {e['train_acc']:.1%}")
    return report


def _open_inputs(model: Path, data: Optional[str], train_subset: Optional[int], device: str):
    from edgeprune import stages

    dense = stages.open_model(model, device)
    data_cfg, ds = stages.dataset_for(dense, data, train_subset)
    return dense, data_cfg, ds


@app.command()
def search(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Dense model.pt (or its artifact folder)."),
    method: str = MethodOpt, sparsity: float = SparsityOpt, prune_rate: float = PruneRateOpt,
    rewind_epoch: Optional[int] = RewindOpt, round_epochs: int = RoundEpochsOpt,
    scope: str = ScopeOpt, keep_first: bool = KeepFirstOpt, keep_last: bool = KeepLastOpt,
    eb_q: int = EbQOpt, eb_tau: float = EbTauOpt, et_epochs: int = EtEpochsOpt,
    et_lambda: float = EtLambdaOpt, et_candidates: str = EtCandOpt,
    from_mask: Optional[Path] = FromMaskOpt, batch_size: int = BatchOpt, lr: float = LrOpt,
    data: Optional[str] = typer.Option(None, help="Data to search on [default: the model's]."),
    train_subset: Optional[int] = typer.Option(None, help="Search on a random subset of N images."),
    seed: int = SeedOpt, device: str = DeviceOpt, out_dir: Path = OutOpt,
    config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt,
):
    """Search a winning ticket: writes a mask artifact (mask, rewind weights, log, plot)."""
    from edgeprune import stages
    from edgeprune.retrain import open_search
    from edgeprune.search.stage import search as run_search

    p = _apply_recipe(ctx, dict(ctx.params), config)
    cfg = _search_config(p)
    dev = stages.resolve_device(p["device"])
    ticket = open_search(p["from_mask"]) if p["from_mask"] else None
    store = Store(out_dir)
    store.writable()
    dense, data_cfg, ds = _open_inputs(p["model"], p["data"], p["train_subset"], dev)
    with _progress(as_json) as progress:
        art, cached = run_search(store, dense, data_cfg, ds, cfg, p["seed"], dev,
                                 _search_reporter(progress, cfg), ticket)
    _emit(as_json, {"stage": "search", "id": art.id, "cached": cached, "mask": str(art.path),
                    "metrics": art.metrics}, _search_table(art, cached), [f"mask: {art.path}"])


def _search_table(art, cached: bool) -> Table:
    m = art.metrics
    t = Table(title=f"{m['method']} ticket search" + (" (cached)" if cached else ""))
    for col in ("sparsity", "T", "T'", "rewind epoch", "search time", "rounds / EB epoch"):
        t.add_column(col, justify="right")
    t.add_row(f"{m['sparsity']:.2%}", str(m["timesteps"]), str(m["timesteps_search"]),
              str(m["rewind_epoch"]), f"{m['search_seconds']:.1f} s",
              str(m.get("rounds", m.get("eb_epoch", "-"))))
    return t


@app.command()
def retrain(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Dense model.pt the mask was searched on."),
    mask: Path = typer.Option(..., help="Search artifact folder (from `edgeprune search`)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs [default: as the dense model]."),
    batch_size: int = BatchOpt, lr: float = LrOpt,
    data: Optional[str] = typer.Option(None, help="Training data [default: the model's]."),
    train_subset: Optional[int] = typer.Option(None, help="Train on a random subset of N images."),
    seed: int = SeedOpt, device: str = DeviceOpt, out_dir: Path = OutOpt,
    config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt,
):
    """Retrain a ticket at the full T with its mask held fixed: writes the sparse model.pt."""
    from edgeprune import stages
    from edgeprune.retrain import open_search, retrain as run_retrain
    from edgeprune.training import TrainConfig

    p = _apply_recipe(ctx, dict(ctx.params), config)
    dev = stages.resolve_device(p["device"])
    ticket = open_search(p["mask"])
    store = Store(out_dir)
    store.writable()
    dense, data_cfg, ds = _open_inputs(p["model"], p["data"], p["train_subset"], dev)
    cfg = TrainConfig(epochs=p["epochs"] or dense.train_epochs or 30, batch_size=p["batch_size"],
                      lr=p["lr"])
    with _progress(as_json) as progress:
        art, cached = run_retrain(store, dense, ticket, data_cfg, ds, cfg, p["seed"], dev,
                                  _train_reporter(progress, cfg.epochs))
    _emit(as_json, {"stage": "retrain", "id": art.id, "cached": cached,
                    "model": str(art.path / "model.pt"), "metrics": art.metrics},
          _ticket_table(art.metrics, cached), [f"ticket: {art.path / 'model.pt'}"])


def _ticket_table(m: dict, cached: bool = False) -> Table:
    t = Table(title=f"{m.get('method')} ticket" + (" (cached)" if cached else ""))
    for col in ("dense acc", "ticket acc", "sparsity", "T", "search T'", "search time",
                "spike rate"):
        t.add_column(col, justify="right")
    dense = m.get("dense_test_accuracy")
    st = m.get("search_seconds")
    t.add_row("-" if dense is None else f"{dense:.2%}", f"{m['test_accuracy']:.2%}",
              f"{m['sparsity']:.2%}", str(m["timesteps"]), str(m.get("timesteps_search")),
              "-" if st is None else f"{st:.1f} s", f"{m['mean_spike_rate']:.3f}")
    return t


@app.command()
def compress(
    ctx: typer.Context,
    model: Optional[Path] = typer.Argument(None, help="Dense model.pt; without it a dense model "
                                           "is trained first on --data."),
    method: str = MethodOpt, sparsity: float = SparsityOpt, prune_rate: float = PruneRateOpt,
    rewind_epoch: Optional[int] = RewindOpt, round_epochs: int = RoundEpochsOpt,
    scope: str = ScopeOpt, keep_first: bool = KeepFirstOpt, keep_last: bool = KeepLastOpt,
    eb_q: int = EbQOpt, eb_tau: float = EbTauOpt, et_epochs: int = EtEpochsOpt,
    et_lambda: float = EtLambdaOpt, et_candidates: str = EtCandOpt,
    from_mask: Optional[Path] = FromMaskOpt, batch_size: int = BatchOpt, lr: float = LrOpt,
    retrain_epochs: Optional[int] = typer.Option(None, help="Ticket retraining epochs "
                                                 "[default: as the dense model]."),
    data: Optional[str] = typer.Option(None, help="Data [default: the model's; digits when "
                                       "training from scratch]."),
    arch: str = typer.Option("convnet", help="Without MODEL: architecture to train."),
    width: float = typer.Option(1.0, help="Without MODEL: channel width multiplier."),
    timesteps: int = typer.Option(5, "--timesteps", "-T", help="Without MODEL: timesteps T."),
    epochs: int = typer.Option(30, help="Without MODEL: dense training epochs."),
    train_subset: Optional[int] = typer.Option(None, help="Use a random subset of N training "
                                               "images."),
    sparse_initializers: bool = typer.Option(False, "--sparse-initializers", help="Store the "
                                             "ticket's zero-heavy weights compactly in ONNX."),
    target: str = typer.Option("x86_64", help="Target profiles to validate on, comma-separated "
                               "(names in targets/profiles or .toml paths)."),
    latency_budget_ms: Optional[float] = typer.Option(None, help="Override the profiles' "
                                                      "latency budget."),
    package: bool = typer.Option(False, "--package", help="End with a release bundle."),
    model_def: Optional[str] = typer.Option(None, "--model-def", help="Your own Norse model: "
                                            "FILE.py:FUNCTION (with --state-dict), imported "
                                            "first as by `edgeprune import-model`."),
    state_dict: Optional[Path] = typer.Option(None, "--state-dict", help="Weights for "
                                              "--model-def (loaded without unpickling code)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept a pickled "
                                      "nn.Module as --state-dict (runs code from the file)."),
    seed: int = SeedOpt, device: str = DeviceOpt, out_dir: Path = OutOpt,
    config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt,
):
    """Search a winning ticket, retrain it at full T, export it to ONNX (and NIR), validate it
    on ONNX Runtime for each target (exit 1 if a gate fails) and, with --package, bundle it.
    Trains the dense model first when no MODEL is given."""
    from edgeprune import stages
    from edgeprune.neurons import NeuronParams
    from edgeprune.retrain import open_search, retrain as run_retrain
    from edgeprune.norse_import import import_model
    from export import stage as export_stage
    from targets.bundle import package as package_bundle
    from edgeprune.search.stage import search as run_search
    from edgeprune.training import TrainConfig

    p = _apply_recipe(ctx, dict(ctx.params), config)
    cfg = _search_config(p)
    dev = stages.resolve_device(p["device"])
    ticket_in = open_search(p["from_mask"]) if p["from_mask"] else None
    store = Store(out_dir)
    store.writable()
    paths: dict[str, str] = {}
    with _progress(as_json) as progress:
        model_path = p["model"]
        if p["model_def"] or p["state_dict"]:
            if model_path is not None or p["state_dict"] is None:
                raise UserError("give either MODEL or --model-def FILE.py:FUNCTION with "
                                "--state-dict W.pt")
            i_art, _ = import_model(store, p["model_def"], p["state_dict"],
                                    timesteps=p["timesteps"],
                                    data_cfg=stages.DataConfig(p["data"] or "digits",
                                                               p["train_subset"]),
                                    allow_pickle=p["allow_pickle"], seed=p["seed"])
            model_path = i_art.path / "model.pt"
            paths["imported"] = str(model_path)
        if model_path is None:
            tcfg = TrainConfig(epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"])
            art, _ = stages.train(store, stages.DataConfig(p["data"] or "digits", p["train_subset"]),
                                  p["arch"], p["width"], "avg", p["timesteps"], "direct",
                                  NeuronParams(), tcfg, p["seed"], dev,
                                  _train_reporter(progress, tcfg.epochs))
            model_path = art.path / "model.pt"
            paths["dense"] = str(model_path)
        dense, data_cfg, ds = _open_inputs(model_path, p["data"], p["train_subset"], dev)
        s_art, _ = run_search(store, dense, data_cfg, ds, cfg, p["seed"], dev,
                              _search_reporter(progress, cfg), ticket_in)
        paths["mask"] = str(s_art.path)
        rcfg = TrainConfig(epochs=p["retrain_epochs"] or dense.train_epochs or 30,
                           batch_size=p["batch_size"], lr=p["lr"])
        r_art, _ = run_retrain(store, dense, s_art, data_cfg, ds, rcfg, p["seed"], dev,
                               _train_reporter(progress, rcfg.epochs))
        paths["ticket"] = str(r_art.path / "model.pt")
        e_art, _ = export_stage.export(store, r_art, sparse=p["sparse_initializers"])
        paths["onnx"] = str(e_art.path / "model.onnx")
        status = (lambda msg: err.print(f"[dim]{msg}[/dim]")) if progress is not None else \
            (lambda msg: None)
        try:
            v_art, _ = validate_model(e_art.path / "model.onnx", store, p["target"],
                                      against=r_art.path / "model.pt", data=data_cfg.name,
                                      latency_budget_ms=p["latency_budget_ms"], progress=status)
        except GateFailed as e:
            art = getattr(e, "artifact", None)
            raise GateFailed(f"{e}" + (f" (report: {art.path})" if art else "")) from None
        paths["validation"] = str(v_art.path)
        if p["package"]:
            pk_art, _ = package_bundle(v_art.path, progress=status)
            paths["bundle"] = str(next(pk_art.path.glob("*.tar.gz")))
    m = r_art.metrics
    summary = {"dense_accuracy": m["dense_test_accuracy"], "ticket_accuracy": m["test_accuracy"],
               "sparsity": m["sparsity"], "method": cfg.method,
               "search_seconds": s_art.metrics["search_seconds"],
               "timesteps": m["timesteps"], "timesteps_search": m["timesteps_search"],
               "onnx_max_abs_diff": e_art.metrics.get("max_abs_diff"),
               "onnx_bytes": e_art.metrics.get("bytes", {}).get("model.onnx"),
               "nir": e_art.metrics.get("nir"),
               "validation": v_art.metrics}
    _emit(as_json, {"stage": "compress", "summary": summary, "artifacts": paths,
                    "ids": {"search": s_art.id, "retrain": r_art.id, "export": e_art.id,
                            "validate": v_art.id}},
          _ticket_table(m), [f"{k}: {v}" for k, v in paths.items()])



# -- export (export/ package) ----------------------------------------------------------------

# (export commands go here)

@app.command("export")
def export_cmd(
    model: Path = typer.Argument(..., help="A model.pt inside a train/retrain artifact folder."),
    out_dir: Path = OutOpt,
    nir: Optional[bool] = typer.Option(None, "--nir/--no-nir", help="Also write model.nir. "
                                       "Default: write it when NIR can express the model, "
                                       "else skip with a note; --nir makes that an error."),
    sparse_initializers: bool = typer.Option(False, "--sparse-initializers", help="Store "
                                             "mostly-zero weights as ONNX sparse initializers "
                                             "(smaller files; ONNX Runtime densifies at load)."),
    outputs: str = typer.Option("logits", "--outputs", help="logits: summed logits only; all: "
                                "also step_logits (T,batch,classes) and spikes.<layer> "
                                "(per-sample spike totals of each LIF layer)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (13 to 20)."),
    timesteps: Optional[int] = typer.Option(None, "--timesteps", "-T", help="Timesteps to "
                                            "unroll (default: the model's T)."),
    as_json: bool = JsonOpt,
):
    """Export a model to ONNX (model.onnx: T unrolled; model.step.onnx: one step with the neuron
    state as inputs/outputs) and NIR (model.nir), checked against PyTorch on a probe batch."""
    from export import stage as export_stage

    if not model.exists():
        raise UserError(f"model file {model} does not exist")
    source = open_artifact(model)
    if model.is_dir() or model.name != "model.pt":
        raise UserError(f"{model}: give the model.pt file inside an artifact folder")
    with _progress(as_json) as progress:
        task = progress.add_task("export", total=None, info="") if progress else None

        def report(e: dict) -> None:
            if progress is not None:
                progress.update(task, info=e.get("event", ""))

        art, cached = export_stage.export(Store(out_dir), source, outputs=outputs, opset=opset,
                                          sparse=sparse_initializers, nir=nir,
                                          timesteps=timesteps, report=report)
    m = art.metrics
    t = Table(title=f"export {art.id} of {source.stage} {source.id}, T={m['timesteps']}"
                    + (" (cached)" if cached else ""))
    for col in ("file", "size", "dense size", "nodes", "export time", "max |Δ| vs PyTorch",
                "same class", "spike mismatches"):
        t.add_column(col, justify="right" if col != "file" else "left")
    for name in m["bytes"]:
        p = m["parity"].get(name, {})
        t.add_row(name, f"{m['bytes'][name]:,} B",
                  f"{m['bytes_dense'][name]:,} B" if name in m["bytes_dense"] else "-",
                  str(m["nodes"][name]), f"{m['export_seconds'][name]:.2f} s",
                  f"{p['max_abs_diff']:.2e}" if p else "-",
                  f"{p['prediction_agreement']:.1%}" if p else "-",
                  str(p["spike_mismatches"]) if p else "-")
    _emit(as_json, {"stage": "export", "id": art.id, "cached": cached, "path": str(art.path),
                    "files": {n: str(art.path / n) for n in m["bytes"]}, "metrics": m}, t,
          [f"probe: {m['probe']};  NIR: {m['nir']};  sparsity {m['sparsity']:.1%}",
           f"exported: {art.path}"])


# -- validate, package, verify (targets/ package) --------------------------------------------

# (targets commands go here)

TargetOpt = typer.Option("x86_64", "--target", help="Target profile names or .toml paths, "
                         "comma-separated: x86_64, arm64-cortex-a72, arm64-neoverse-n1.")


def _stderr_progress(as_json: bool):
    """Progress lines on stderr (the ARM64 setup can take a minute on first use)."""
    return lambda message: err.print(f"[dim]{message}[/dim]", highlight=False)


def _reference_logits(model_pt: Path, inputs, info) -> tuple:
    """PyTorch logits summed over T for the ONNX model's inputs: (logits, spec, artifact id).

    Lives on the CLI side because it needs torch; targets/ never imports it. Spike inputs
    (T, N, C, H, W) are fed through stem and body directly, so both models see the same spikes."""
    import numpy as np
    import torch

    from edgeprune import checkpoint
    from edgeprune.models import over_time

    art = None
    if (model_pt.parent / "manifest.json").exists():
        art = open_artifact(model_pt.parent)
        art.file(model_pt.name)
    spec, model = checkpoint.load(model_pt)
    t_onnx = info.timesteps
    if t_onnx is not None and t_onnx != spec.timesteps:
        raise UserError(f"{model_pt} runs T={spec.timesteps} but the ONNX model was exported "
                        f"with T={t_onnx}: --against must be the model it was exported from")
    model.eval()
    outs = []
    with torch.no_grad():
        x = torch.from_numpy(inputs)
        n = x.shape[1] if x.ndim == 5 else x.shape[0]
        for s in range(0, n, 256):
            if x.ndim == 5:
                per_step = model.body(over_time(model.stem, x[:, s:s + 256]))
            else:
                per_step = model(x[s:s + 256], spec.timesteps)
            outs.append(per_step.sum(0).numpy())
    return np.concatenate(outs).astype(np.float32), spec, (art.id if art else None)


def _target_table(report: dict, title: str) -> Table:
    """One row per target; narrow enough for an 80-column CI log."""
    t = Table(title=title)
    for col in ("target", "run", "accuracy (drop)", "parity", "latency ms p50/p95/p99",
                "RSS MB", "gates"):
        t.add_column(col)
    pct = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
    for e in report["targets"]:
        par, lat = e.get("parity") or {}, e["latency"]
        mark = {"pass": "[green]ok[/]", "fail": "[red]FAIL[/]", "skipped": "–"}
        t.add_row(e["target"], f"{e['mode']}\nORT {e['onnxruntime']}\n{e['inputs']} inputs",
                  f"{pct(e['accuracy'])} ({pct(e.get('accuracy_drop'))})",
                  "n/a" if not par else f"{par['agreement']:.1%}\n|Δ|≤{par['max_abs_diff']:.1g}",
                  f"{lat['p50_ms']:.3g}/{lat['p95_ms']:.3g}/{lat['p99_ms']:.3g}"
                  + ("\n[yellow]emulated — not indicative[/]" if lat["emulated"] else ""),
                  f"{e['memory']['peak_rss_delta_mb']:.1f}",
                  "\n".join(f"{g['gate']} {mark[g['status']]}" for g in e["gates"]))
    return t


def _gate_lines(report: dict) -> list[str]:
    return [f"[red]{e['target']} {g['gate']}:[/] {g['detail']}" for e in report["targets"]
            for g in e["gates"] if g["status"] == "fail"]


@app.command()
def validate(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="model.onnx (from an export artifact, or any .onnx "
                                 "with input (batch, C, H, W) and output logits)."),
    target: str = TargetOpt,
    against: Optional[Path] = typer.Option(None, "--against", help="The model.pt it was exported "
                                           "from: parity and accuracy drop vs PyTorch."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="A reference.npz (inputs, "
                                             "logits[, labels]) as stored in bundles, instead "
                                             "of --data/--against."),
    data: str = DataOpt,
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N test images."),
    latency_budget_ms: Optional[float] = typer.Option(None, "--latency-budget-ms",
                                                      help="Override every profile's latency budget."),
    out_dir: Path = OutOpt,
    config: Optional[Path] = ConfigOpt,
    as_json: bool = JsonOpt,
):
    """Validate an ONNX model on target profiles: parity, accuracy, latency, memory; stores a
    validate artifact (report.json, report.md) and exits 1 when a gate fails."""
    p = _apply_recipe(ctx, dict(ctx.params), config)
    failed = None
    try:
        art, cached = validate_model(Path(p["model"]), Store(out_dir), p["target"],
                                     against=p["against"], reference=p["reference"],
                                     data=p["data"], limit=p["limit"],
                                     latency_budget_ms=p["latency_budget_ms"],
                                     progress=_stderr_progress(as_json))
    except GateFailed as e:  # the report is stored: show it, then exit 1
        failed, art, cached = e, e.artifact, False
    report = json.loads(art.file("report.json").read_text())
    title = f"validate {art.id}" + (" (cached)" if cached else "")
    _emit(as_json, {"stage": "validate", "id": art.id, "cached": cached, "path": str(art.path),
                    "passed": report["passed"], "metrics": art.metrics, "report": report},
          _target_table(report, title), [*_gate_lines(report), f"report: {art.path / 'report.md'}"])
    if failed is not None:
        raise failed


def validate_model(model: Path, store: Store, target: str = "x86_64", *,
                   against: Optional[Path] = None, reference: Optional[Path] = None,
                   data: str = "digits", limit: Optional[int] = None,
                   latency_budget_ms: Optional[float] = None, progress=lambda m: None):
    """The validate stage as one call (for `compress`): returns (artifact, cached); raises
    UserError on bad input before any work and GateFailed (with `.artifact`) after storing a
    report whose gates failed. Reference logits from `against` are computed here, with torch;
    targets/ never imports it."""
    import numpy as np

    from targets import modelfile, profiles as profiles_mod, stage

    profs = profiles_mod.load_many(target)
    if latency_budget_ms is not None:
        if latency_budget_ms <= 0:
            raise UserError("--latency-budget-ms must be positive")
        profs = [pr.with_latency_budget(latency_budget_ms) for pr in profs]
    if against is not None and reference is not None:
        raise UserError("give --against (PyTorch reference) or --reference (npz), not both")
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")
    model = Path(model)
    stage.source_artifact(model)  # a damaged export artifact is refused before any work
    info = modelfile.inspect(model)
    store.writable()
    ref = ref_source = None
    extra: list[str] = []
    if reference is not None:
        from targets.validation import take

        inputs, ref, labels, ref_source = stage.load_reference(Path(reference))
        data_name = f"reference:{Path(reference).name}"
        if limit:
            inputs, ref = take(inputs, limit), ref[:limit]
            labels = labels[:limit] if labels is not None else None
    else:
        from edgeprune import data as datalib

        ds = datalib.load(data)
        x, labels = ds.x_test.numpy(), ds.y_test.numpy()
        if limit:
            x, labels = x[:limit], labels[:limit]
        inputs, data_name = modelfile.model_inputs(x, info), data
    if against is not None:
        ref, _spec, model_id = _reference_logits(Path(against), np.ascontiguousarray(inputs), info)
        ref_source = f"pytorch:{Path(against).name}" + (f"@{model_id}" if model_id else "")
        extra = [model_id] if model_id else []
    return stage.run_validate(store, model, profs, inputs, labels, data_name=data_name,
                              reference=ref, reference_source=ref_source,
                              extra_inputs=tuple(extra), info=info, progress=progress)


@app.command()
def package(
    source: Path = typer.Argument(..., help="A run directory, a validate artifact, or an export "
                                  "artifact that has been validated."),
    ort: bool = typer.Option(False, "--ort", help="Also convert to ONNX Runtime's .ort format."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory for the package "
                                           "artifact (default: the source's run directory)."),
    as_json: bool = JsonOpt,
):
    """Build a release bundle (.tar.gz): ONNX models, manifest with lineage and sha256 of every
    file, validation reports, reference inputs/outputs and MODEL_CARD.md."""
    from targets import bundle

    art, cached = bundle.package(source, out_dir=out_dir, ort=ort,
                                 progress=_stderr_progress(as_json))
    m = art.metrics
    t = Table(title=f"package {art.id}" + (" (cached)" if cached else ""), show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    for k in ("bundle", "bytes", "files", "validated_targets", "lineage"):
        t.add_row(k, _fmt(m.get(k)))
    _emit(as_json, {"stage": "package", "id": art.id, "cached": cached,
                    "bundle": str(art.path / m["bundle"]), "metrics": m}, t,
          [f"bundle: {art.path / m['bundle']}"])


@app.command()
def verify(
    bundle_path: Path = typer.Argument(..., help="A bundle .tar.gz made by `edgeprune package`."),
    target: Optional[str] = typer.Option(None, "--target", help="Profiles to re-run the reference "
                                         "inputs on (default: the bundle's validated targets "
                                         "that run natively here)."),
    as_json: bool = JsonOpt,
):
    """Check a bundle: safe extraction, every sha256, and the reference inputs re-run on the
    target against the stored outputs. Needs only numpy and onnxruntime. Exit 1 on a mismatch."""
    from targets import bundle

    result = bundle.verify(bundle_path, target, progress=_stderr_progress(as_json))
    t = Table(title=f"verify {bundle_path.name}")
    for col in ("target", "mode", "onnxruntime", "file", "inputs", "agreement", "max |Δ|", "ok"):
        t.add_column(col)
    for r in result["runs"]:
        t.add_row(r["target"], r["mode"], r["onnxruntime"], r["file"], str(r["inputs"]),
                  f"{r['agreement']:.2%}", f"{r['max_abs_diff']:.2g}", "yes" if r["passed"] else "NO")
    _emit(as_json, result, t, [f"{result['files_checked']} files match their sha256"])


# -- models from elsewhere (edgeprune/norse_import.py) ------------------------------------

# (import commands go here)

def _floats(text: Optional[str], what: str) -> Optional[tuple]:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--{what} {text!r}: expected comma-separated numbers") from None


@app.command("import-model")
def import_model_cmd(
    model_def: Optional[str] = typer.Option(None, "--model-def", help="FILE.py:FUNCTION, a "
                                            "function returning your nn.Sequential or Norse "
                                            "SequentialState (the file is run)."),
    state_dict: Path = typer.Option(..., "--state-dict", help="Your weights (a state_dict saved "
                                    "with torch.save), loaded with weights_only=True."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Also accept files that "
                                      "need unpickling code, e.g. a whole pickled nn.Module "
                                      "(then --model-def is not needed). Runs code from the "
                                      "file: only for files you trust."),
    timesteps: int = typer.Option(5, "--timesteps", "-T", help="Timesteps T the model runs."),
    encoding: str = typer.Option("direct", help="direct (image at every step) or poisson."),
    data: Optional[str] = typer.Option("digits", "--data", help="Dataset the model was trained "
                                       "on (input shape, classes, test accuracy); 'none' to "
                                       "give --input-shape and --num-classes instead."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="C,H,W without --data."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Classes without --data."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Per-channel mean your model "
                                       "expects subtracted (comma-separated; default none)."),
    std: Optional[str] = typer.Option(None, "--std", help="Per-channel std your model expects "
                                      "divided by (default none)."),
    seed: int = SeedOpt,
    out_dir: Path = OutOpt,
    as_json: bool = JsonOpt,
):
    """Import your own Norse model (Python definition + state_dict) as an edgeprune model.pt.

    Supported: nn.Sequential or Norse SequentialState of Conv2d, Linear, BatchNorm1d/2d,
    AvgPool2d, MaxPool2d, AdaptiveAvgPool2d, Flatten, Dropout, Identity, and Norse LIFBoxCell,
    LICell, LIBoxCell. The model is rebuilt from a layer list and checked against yours, stepped
    T times, before it is written; search, retrain and export then take the model.pt without
    your code."""
    from edgeprune import stages
    from edgeprune.norse_import import import_model

    shape = None
    if input_shape is not None:
        shape = tuple(int(v) for v in _floats(input_shape, "input-shape"))
    data_cfg = None if data in (None, "none") else stages.DataConfig(data)
    art, cached = import_model(Store(out_dir), model_def, state_dict, timesteps=timesteps,
                               encoding=encoding, data_cfg=data_cfg, input_shape=shape,
                               num_classes=num_classes, mean=_floats(mean, "mean"),
                               std=_floats(std, "std"), allow_pickle=allow_pickle, seed=seed)
    m = art.metrics
    t = Table(title=f"imported {model_def or state_dict}" + (" (cached)" if cached else ""))
    for col in ("layers", "parameters", "max |Δ| vs your model", "test accuracy", "spike rate"):
        t.add_column(col, justify="right")
    t.add_row(str(m["layers"]), f"{m['parameters']:,}", f"{m['parity_max_abs_diff']:.2e}",
              f"{m['test_accuracy']:.2%}" if "test_accuracy" in m else "-",
              f"{m['mean_spike_rate']:.3f}" if "mean_spike_rate" in m else "-")
    _emit(as_json, {"stage": "import", "id": art.id, "cached": cached,
                    "model": str(art.path / "model.pt"), "metrics": m}, t,
          [f"model: {art.path / 'model.pt'}"])


# -- inspecting artifacts --------------------------------------------------------------------

@app.command()
def show(artifact: Path = typer.Argument(..., help="An artifact folder or a file inside one."),
         as_json: bool = JsonOpt):
    """Show an artifact's manifest: stage, id, inputs, config, metrics, files, environment."""
    art = open_artifact(artifact)
    if as_json:
        print(json.dumps(art.manifest, default=str))
        return
    t = Table(title=f"{art.stage} {art.id}", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    man = art.manifest
    t.add_row("path", str(art.path))
    t.add_row("created", man.get("created", ""))
    t.add_row("inputs", ", ".join(man.get("inputs", [])) or "-")
    for section in ("metrics", "config", "env"):
        for k, v in _flatten(man.get(section, {})).items():
            t.add_row(f"{section}.{k}", _fmt(v))
    for name, f in man.get("files", {}).items():
        t.add_row(f"files.{name}", f"{f['bytes']:,} B  sha256 {f['sha256'][:16]}…")
    out.print(t)


@app.command("ls")
def list_artifacts(run_dir: Path = typer.Argument(Path("runs"), help="Run directory."),
                   as_json: bool = JsonOpt):
    """List the artifacts of a run directory with stage, id, key metrics and lineage."""
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    arts = Store(run_dir).artifacts()
    rows = [{"stage": a.stage, "id": a.id, "path": str(a.path), "inputs": a.manifest["inputs"],
             "created": a.manifest.get("created"), "metrics": _key_metrics(a.metrics)}
            for a in arts]
    t = Table(title=str(run_dir))
    for col in ("stage", "id", "created", "key metrics", "inputs"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["stage"], r["id"], r["created"] or "",
                  "  ".join(f"{k}={_fmt(v)}" for k, v in r["metrics"].items()),
                  ", ".join(r["inputs"]) or "-")
    _emit(as_json, {"run_dir": str(run_dir), "artifacts": rows}, t)


KEY_METRICS = ("test_accuracy", "sparsity", "search_seconds", "timesteps_search",
               "max_abs_diff", "latency_p50_ms")


def _key_metrics(m: dict) -> dict:
    return {k: m[k] for k in KEY_METRICS if k in m}


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
