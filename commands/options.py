"""Command-line options derived from the stage dataclasses (edgeprune.config), and the rule
that combines them with a recipe.

`@configured(Group(...), ...)` gives a Typer command one option per field of each group's
dataclass and, at call time, passes the group parameters as built dataclasses. A value comes
from, first to last: the command line's stage-prefixed option (`--retrain-epochs`), its plain
option (`--epochs`, which reaches every stage of the command that has the field), the recipe's
table for that stage (or an unambiguous top-level key), the dataclass default. A field several
stages of one command share gets the plain option plus one `--<stage>-<field>` per stage.
"""
from __future__ import annotations

import inspect
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from edgeprune import recipe as recipe_mod
from edgeprune.config import Field, build, fields_of

PANELS = {"run": "Data and run", "import": "Import (--model-def)",
          "train": "Dense training (without MODEL)", "search": "Ticket search",
          "retrain": "Retraining", "export": "Export", "validate": "Validation",
          "package": "Package"}


# Help that fits a screen: `--help` shows the options of these fields (plain, not stage-prefixed)
# and one line per panel for the rest; `--help-all` (cli.py, with all_shown) shows every option.
COMMON = frozenset({"data", "seed", "device", "arch", "method", "sparsity", "target"})
_folded: list = []  # the typer.Option of every option --help leaves out


@contextmanager
def all_shown():
    """Within it, --help lists every option (for --help-all)."""
    for info in _folded:
        info.hidden = False
    try:
        yield
    finally:
        for info in _folded:
            info.hidden = True


def _fold(opts: list[_Option], params: list[inspect.Parameter]) -> dict[str, list[str]]:
    """Hide the options outside COMMON from --help; returns panel -> the flags hidden there."""
    folded: dict[str, list[str]] = defaultdict(list)
    for opt, param in zip(opts, params):
        info = param.default
        if opt.prefixed or opt.field.name not in COMMON:
            info.hidden = True
            _folded.append(info)
            panel = info.rich_help_panel or PANELS[opt.targets[0].stage]
            folded[panel].append(info.param_decls[0].split("/")[0])
    return dict(folded)


def folded_help(fn: Callable) -> str | None:
    """One line per panel of options `--help` leaves out (the command's epilog)."""
    folded = getattr(fn, "folded", {})
    if not folded:
        return None
    return "\n".join(["More options, shown by --help-all:"] + [
        f"  {panel}: {', '.join(flags[:2])}{f' and {len(flags) - 2} more' if len(flags) > 2 else ''}"
        for panel, flags in folded.items()])


@dataclass(frozen=True)
class Group:
    param: str  # the command function's parameter that receives the built dataclass
    stage: str  # "run" for run-wide settings, else a stage of edgeprune.config.STAGES
    cls: type
    exclude: tuple[str, ...] = ()  # fields this command does not offer


@dataclass(frozen=True)
class _Option:
    name: str  # Python parameter name
    field: Field
    targets: tuple[Group, ...]  # the groups this option sets
    prefixed: bool


def _default_text(owners: list[tuple[Group, Field]]) -> str:
    def one(f: Field) -> str:
        if f.show is not None:
            return f.show
        if isinstance(f.default, bool):
            return "on" if f.default else "off"
        return "none" if f.default is None else str(f.default)

    texts = {g.stage: one(f) for g, f in owners}
    if len(set(texts.values())) == 1:
        return next(iter(texts.values()))
    return "; ".join(f"{s}: {t}" for s, t in texts.items())


def _annotation(f: Field) -> Any:
    if f.parse is not None:
        return Optional[str]
    return Optional[f.base]


def _flags(name: str, f: Field, prefix: str | None) -> list[str]:
    if prefix is not None:
        flag = f"--{prefix}-{name.replace('_', '-')}"
        return [f"{flag}/--no-{prefix}-{name.replace('_', '-')}" if f.base is bool else flag]
    if f.flags:
        return list(f.flags)
    flag = f"--{name.replace('_', '-')}"
    return [f"{flag}/--no-{name.replace('_', '-')}" if f.base is bool else flag]


def _options(groups: tuple[Group, ...]) -> list[_Option]:
    owners: dict[str, list[tuple[Group, Field]]] = defaultdict(list)
    for g in groups:
        for f in fields_of(g.cls):
            if f.name not in g.exclude:
                owners[f.name].append((g, f))
    out = []
    for name, own in owners.items():
        out.append(_Option(name, own[0][1], tuple(g for g, _ in own), False))
        if len(own) > 1:
            out += [_Option(f"{g.stage}_{name}", f, (g,), True) for g, f in own]
    return out


def _parameter(opt: _Option, groups: tuple[Group, ...], multi_stage: bool) -> inspect.Parameter:
    owners = [(g, f) for g in opt.targets for f in fields_of(g.cls) if f.name == opt.field.name]
    g0 = opt.targets[0]
    help_text = opt.field.help
    if len(opt.targets) > 1:
        help_text += f" Sets it for {', '.join(g.stage for g in opt.targets)}."
    panel = None
    if multi_stage:
        panel = "Shared by several stages" if len(opt.targets) > 1 else PANELS[g0.stage]
    info = typer.Option(None, *_flags(opt.field.name, opt.field,
                                      g0.stage if opt.prefixed else None),
                        help=f"{help_text} \\[default: {_default_text(owners)}]",
                        show_default=False, rich_help_panel=panel)
    return inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, default=info,
                             annotation=_annotation(opt.field))


ConfigOpt = typer.Option(None, "--config", help="TOML recipe: one table per stage (\\[train], "
                         "\\[search], ...) with option values; the command line overrides it.",
                         dir_okay=False)


def configured(*groups: Group) -> Callable:
    """Decorate a command: its group parameters become options built from the dataclasses."""
    stages = tuple(dict.fromkeys(g.stage for g in groups if g.stage != "run"))
    opts = _options(groups)

    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name not in {g.param for g in groups}]
        taken = {p.name for p in own}
        clash = [o.name for o in opts if o.name in taken]
        assert not clash, f"{fn.__name__}: options {clash} clash with its own parameters"
        params = own + [_parameter(o, groups, len(stages) > 1) for o in opts] + [
            inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=ConfigOpt,
                              annotation=Optional[Path])]
        folded = _fold(opts, params[len(own):len(own) + len(opts)])
        # Typer lists required arguments first; keyword-only options keep their order.
        params.sort(key=lambda p: p.kind)

        def command(**kwargs):
            recipe = recipe_mod.load(kwargs.pop("config")) if kwargs.get("config") else None
            kwargs.pop("config", None)
            given = {o.name: kwargs.pop(o.name) for o in opts}
            for g in groups:
                kwargs[g.param] = _resolve(g, opts, given, recipe, stages)
            return fn(**kwargs)

        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        command.folded = folded
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return wrap


def _resolve(g: Group, opts: list[_Option], given: dict, recipe, stages: tuple[str, ...]):
    values: dict[str, Any] = {}
    if recipe is not None:
        values.update(recipe.run_values() if g.stage == "run" else recipe.values(g.stage, stages))
    # plain options first, so a stage-prefixed one wins over them
    for o in sorted((o for o in opts if g in o.targets), key=lambda o: o.prefixed):
        value = given[o.name]
        if value is None:
            continue
        if o.field.parse is not None:
            value = o.field.parse(value)
        values[o.field.name] = value
    offered = {f.name for f in fields_of(g.cls)} - set(g.exclude)
    return build(g.cls, {k: v for k, v in values.items() if k in offered})


OutOpt = typer.Option(Path("runs"), "--out", help="Run directory where artifacts are written.")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout (for CI).")
