"""TOML recipes (`--config recipe.toml`): option values per stage, which the command line
overrides.

    data = "fashion-mnist"      # run-wide keys at the top: data, train_subset, seed, device
    [train]                     # one table per stage; each reaches only its stage
    epochs = 4
    [search]
    round_epochs = 1
    [retrain]
    epochs = 2

Keys are option names (`round-epochs` or `round_epochs`). A stage key may also stand at the top
level when it is unambiguous: exactly one stage of the command being run has it. An unknown
table, an unknown key, a key in the wrong table or a value of the wrong type is an error naming
the key and the table. Tables of stages the command does not run are checked, then ignored, so
one recipe serves every command of a pipeline.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import config as schema
from .errors import UserError

@dataclass
class Recipe:
    source: str
    tables: dict[str, dict] = field(default_factory=dict)  # stage -> {option name: value}
    top: dict = field(default_factory=dict)  # top-level keys: run-wide or flat stage keys

    def values(self, stage: str, stages: tuple[str, ...]) -> dict:
        """The recipe's values for `stage` when a command runs `stages`: its table, plus the
        top-level keys that belong to it alone among them."""
        fields = _stage_fields(stage)
        out = {}
        for name, value in self.top.items():
            if name not in fields:
                continue
            owners = [s for s in stages if name in _stage_fields(s)]
            if len(owners) > 1:
                raise UserError(f"recipe {self.source}: top-level key {name!r} is ambiguous here "
                                f"(it is in {' and '.join(f'[{s}]' for s in owners)}): put it "
                                "in one of those tables")
            out[name] = value
        out.update(self.tables.get(stage, {}))
        return out

    def run_values(self) -> dict:
        run = _run_fields()
        return {k: v for k, v in self.top.items() if k in run}


def _stage_fields(stage: str) -> dict[str, schema.Field]:
    return {f.name: f for f in schema.fields_of_stage(stage)}


def _run_fields() -> dict[str, schema.Field]:
    return {f.name: f for cls in schema.RUN_WIDE for f in schema.fields_of(cls)}


def load(path: Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"recipe {path} is not valid TOML: {e}") from None
    return parse(raw, str(path))


def parse(raw: dict, source: str = "recipe") -> Recipe:
    """Check every table and key against the schema."""
    recipe = Recipe(source)
    run = _run_fields()
    for key, value in raw.items():
        if isinstance(value, dict):
            if key not in schema.STAGES:
                raise UserError(f"recipe {source}: unknown table [{key}] (tables: "
                                f"{', '.join(f'[{s}]' for s in schema.STAGES)})")
            fields = _stage_fields(key)
            recipe.tables[key] = {}
            for k, v in value.items():
                name = k.replace("-", "_")
                if name in run:
                    raise UserError(f"recipe {source}: {k!r} in [{key}] is run-wide (every stage "
                                    "shares it): put it at the top, before any table")
                if name not in fields:
                    owners = [s for s in schema.STAGES if name in _stage_fields(s)]
                    hint = (f"it belongs to {', '.join(f'[{s}]' for s in owners)}" if owners
                            else f"known: {', '.join(sorted(fields))}")
                    raise UserError(f"recipe {source}: unknown key {k!r} in [{key}] ({hint})")
                recipe.tables[key][name] = schema.coerce(fields[name], v, f"recipe {source} [{key}]")
            continue
        name = key.replace("-", "_")
        owner = run.get(name) or next((_stage_fields(s)[name] for s in schema.STAGES
                                       if name in _stage_fields(s)), None)
        if owner is None:
            raise UserError(f"recipe {source}: unknown key {key!r}")
        recipe.top[name] = schema.coerce(owner, value, f"recipe {source}")
    return recipe
