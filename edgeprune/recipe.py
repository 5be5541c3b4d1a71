"""TOML recipes: a file of option values (`--config recipe.toml`) that the command line overrides.

A recipe is flat or split into tables ([data], [model], [train], [search], ...); table names are
only for readability. Keys are option names (`prune-rate` or `prune_rate`). A key that no
command knows, or a value of the wrong type, is an error.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

from .errors import UserError


def load(path: Path, known: dict[str, type]) -> dict:
    """Read a recipe into {option_name: value}, checked against `known` (name -> type)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"recipe {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"recipe {path} is not valid TOML: {e}") from None
    return check(raw, known, str(path))


def check(raw: dict, known: dict[str, type], where: str = "recipe") -> dict:
    flat: dict = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            for k, v in value.items():
                _put(flat, k, v, known, where)
        else:
            _put(flat, key, value, known, where)
    return flat


def _put(flat: dict, key: str, value, known: dict[str, type], where: str) -> None:
    name = key.replace("-", "_")
    if name not in known:
        raise UserError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    want = known[name]
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise UserError(f"{where}: {key} must be {want.__name__}, got {type(value).__name__} "
                        f"{value!r}")
    if name in flat and flat[name] != value:
        raise UserError(f"{where}: {key} is set twice with different values")
    flat[name] = value
