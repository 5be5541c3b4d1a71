"""The registry of search methods: the one place their names come from.

A method finds a mask from one `SearchRun` (run.py). Early-Time is not a method of its own: it
picks the timesteps a method searches at, so a method with `early_time` is also offered as
`et-<name>` (`et-imp` = Early-Time + imp). `random` and `reinit` are branches, as in OpenLTH:
they take an existing imp ticket (the trunk) and change one thing about it. A method's own
settings are a nested table of `SearchConfig` (`imp`, `eb`; Early-Time's `et`).

Torch-free: the config schema takes its choices from `NAMES`, and targets/ reads that schema
on a device without PyTorch. So an entry names its implementation as "module:function" (as
Olive's pass registry names a pass's module), imported when a search runs.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

ET = "et-"  # the prefix of an Early-Time variant
TRUNK = "imp"  # the method whose ticket a branch starts from


@dataclass(frozen=True)
class Method:
    name: str
    find: str  # "module:function": function(SearchRun) -> Found
    trunk: bool = False  # branches off an imp ticket (--from-mask, or one searched first)
    early_time: bool = False  # also offered as et-<name>
    plot: str | None = None  # "module:function": function(log, path, cfg, title) -> None

    def finder(self) -> Callable:
        return _load(self.find)

    def plotter(self) -> Callable | None:
        return _load(self.plot) if self.plot else None


def _load(ref: str) -> Callable:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("imp", "edgeprune.search.imp:find", early_time=True,
           plot="edgeprune.search.imp:plot"),
    Method("eb", "edgeprune.search.earlybird:find", early_time=True,
           plot="edgeprune.search.earlybird:plot"),
    Method("random", "edgeprune.search.branches:random_mask", trunk=True),
    Method("reinit", "edgeprune.search.branches:fresh_weights", trunk=True),
)}

# every name a user may give: imp, et-imp, eb, et-eb, random, reinit
NAMES = tuple(n for m in METHODS.values() for n in (m.name, *([ET + m.name] * m.early_time)))


def base(name: str) -> Method:
    """The method behind a name (et-imp -> imp)."""
    return METHODS[name.removeprefix(ET)]


def help_text() -> str:
    branches = "/".join(m.name for m in METHODS.values() if m.trunk)
    return (f"{', '.join(NAMES[:-1])} or {NAMES[-1]} ({branches} branch off an imp ticket: "
            "--from-mask, or one searched first).")
