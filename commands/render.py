"""What the commands show: progress on stderr, tables and JSON on stdout."""
from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgeprune import distributed
from edgeprune.diskspace import full_error, is_full

err = Console(stderr=True)
out = Console()


@contextmanager
def progress(quiet: bool):
    """A report function for the pipeline's events: a rich progress display on stderr, one
    bar per stage, or nothing for --json / non-terminals / ranks other than 0 under torchrun."""
    if quiet or not err.is_terminal or not distributed.world().main:
        yield _notes_only
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err,
                  transient=False) as p:
        yield _Reporter(p)


def note(text: str) -> None:
    """A line the user must see whatever the output mode (a default that changed, and why):
    one line on stderr, never wrapped; rank 0 alone speaks."""
    if distributed.world().main:
        print(_note_line(text), file=sys.stderr, flush=True)


def _note_line(text: str) -> str:
    return f"edgeprune: {' '.join(str(text).split())}"


def _notes_only(e: dict) -> None:
    if e.get("event") == "note":
        note(e["text"])


class _Reporter:
    def __init__(self, p: Progress):
        self.p, self.task = p, None

    def __call__(self, e: dict) -> None:
        ev, p = e.get("event"), self.p
        if ev == "stage":
            total = e.get("epochs")
            self.task = p.add_task(e["stage"] + (f" {e['method']}" if "method" in e else ""),
                                   total=total, info="")
            return
        if ev == "note":  # printed through the live display, so its bars stay intact
            p.console.print(_note_line(e["text"]), soft_wrap=True, markup=False,
                            highlight=False)
            return
        if ev == "message":
            p.console.print(f"[dim]{e['text']}[/dim]", highlight=False)
            return
        if self.task is None:
            return
        t = self.task
        if ev == "epoch":
            p.update(t, completed=e["epoch"], info=f"loss {e['loss']:.3f}  train "
                     f"{e['train_acc']:.1%}  test {e['test_acc']:.1%}")
        elif ev == "early-time":
            p.update(t, info=f"T'={e['pick']} (normalized KL " + ", ".join(
                f"{k}:{v:.2f}" for k, v in e["normalized_kl"].items()) + ")")
        elif ev == "round":
            p.update(t, total=e["rounds"] - 1, completed=e["round"],
                     info=f"round {e['round']}/{e['rounds']}  sparsity {e['sparsity']:.1%}  "
                          f"acc {e['test_acc']:.1%}  T={e['timesteps']}")
        elif ev == "eb":
            p.update(t, total=e["epochs"], completed=e["epoch"], info=f"epoch {e['epoch']}  "
                     "mask distance " + ("-" if e["distance"] is None else f"{e['distance']:.4f}"))
        elif "step" in e and "round" in e:
            p.update(t, info=f"round {e['round']}/{e['rounds']}  epoch {e['epoch']}  "
                             f"loss {e['loss']:.3f}  acc {e['train_acc']:.1%}")
        elif "step" in e:
            p.update(t, completed=e["epoch"] - 1 + e["step"] / e["steps"],
                     info=f"epoch {e['epoch']}  loss {e['loss']:.3f}  acc {e['train_acc']:.1%}")
        elif ev in ("onnx", "parity", "nir"):
            p.update(t, info=ev)


def emit(as_json: bool, payload: dict, table: Table | None = None, lines=()) -> None:
    """One JSON object (for CI), or the table and lines for people; rank 0 alone speaks."""
    if not distributed.world().main:
        return
    with stdout():
        if as_json:
            print(json.dumps(payload, default=str))
            return
        if table is not None:
            out.print(table)
        for line in lines:
            out.print(line)


@contextmanager
def stdout():
    """Write to stdout, and flush it: a full disk behind it (`ls > /dev/full`) is one line,
    exit 2, instead of a traceback now or an ignored exception at exit."""
    try:
        yield
        sys.stdout.flush()
    except OSError as e:
        if not is_full(e):
            raise
        # what is left in the buffer would fail again when Python flushes it at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise full_error("to standard output", e=e) from None


def fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def pct(v, digits: int = 2) -> str:
    """A percentage that never reads 100% (or 0%) unless it is exactly that: a ticket with one
    weight left must not look empty."""
    if v is None:
        return "-"
    text = f"{v:.{digits}%}"
    while digits < 8 and 0 < v < 1 and text in (f"{1:.{digits}%}", f"{0:.{digits}%}"):
        digits += 1
        text = f"{v:.{digits}%}"
    return text


def count(v) -> str:
    """A large count, short: 1.23M, 45.6k, 789."""
    if v is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.3g}{unit}"
    return f"{v:.3g}"


def age(iso: str | None, now: datetime | None = None) -> str:
    """How long ago an ISO-8601 UTC time was, short ("40s ago", "5m ago", "3h ago", "2d ago"),
    and the date itself beyond a week."""
    try:
        then = datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
    except ValueError:
        return str(iso or "-")
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    seconds = ((now or datetime.now(timezone.utc)) - then).total_seconds()
    if seconds < 0 or seconds >= 7 * 86400:
        return then.strftime("%Y-%m-%d")
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def kv_table(title: str, rows: dict) -> Table:
    t = Table(title=title, show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    for k, v in rows.items():
        t.add_row(k, fmt(v))
    return t


def columns(title: str, cols: list[str], rows: list[list[str]]) -> Table:
    t = Table(title=title)
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*r)
    return t


def cached_mark(cached: bool) -> str:
    return " (cached)" if cached else ""


Report = Callable[[dict], None]
