"""edgeprune command line: one command per stage, plus `compress`, which chains them. The
commands live in commands/; each parses its options, calls pipeline and renders.

Exit codes: 0 success; 1 a validation gate failed; 2 bad usage or bad input.
"""
from __future__ import annotations

import sys

import typer

import edgeprune  # noqa: F401  (filters Norse's import warnings before anything imports it)
from commands import deploy, doctor, imports, inspect, options, render, ticket, train
from commands.render import err
from edgeprune.diskspace import full_error, is_full
from edgeprune.errors import GateFailed, UserError


class App(typer.Typer):
    """The console script: exits with `run`'s code."""

    def __call__(self, *args, **kwargs):
        sys.exit(run(sys.argv[1:]))


def run(argv: list[str]) -> int:
    """Run the CLI on `argv` and return the exit code, mapping failures to a one-line message
    on stderr instead of a traceback (`--debug` shows it). Tests call this in-process."""
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if "--help-all" in argv:
        return _help_all(argv)
    try:
        rc = typer.Typer.__call__(app, args=argv, prog_name="edgeprune", standalone_mode=False)
        with render.stdout():  # flushed here: what is still buffered meets a full disk now
            pass
        return rc if isinstance(rc, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        return 130
    except UserError as e:
        if debug:
            raise
        return fail(str(e), 2)
    except GateFailed as e:
        return fail(str(e), 1)
    except OSError as e:
        if debug or not is_full(e):  # a full disk is bad input wherever it is met
            raise
        if e.filename is None:  # a write to an open file: stdout itself, if it fails to flush
            try:
                with render.stdout():
                    pass
            except UserError as stdout_full:
                return fail(str(stdout_full), 2)
        return fail(str(full_error(e.filename, e=e)), 2)
    except Exception as e:
        # Typer's (vendored) click usage errors: bad option, missing argument, ...
        if debug or not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        if type(e).__name__ == "Exit":
            return e.exit_code
        return fail(e.format_message(), 2)


def _help_all(argv: list[str]) -> int:
    """--help with every option, not only the common ones (and no line about the rest)."""
    epilogs = [(c, c.epilog) for c in app.registered_commands]
    with options.all_shown():
        for c, _ in epilogs:
            c.epilog = None
        try:
            return run(["--help" if a == "--help-all" else a for a in argv])
        finally:
            for c, e in epilogs:
                c.epilog = e


def fail(message: str, code: int) -> int:
    line = " ".join(str(message).split())  # one line, whatever the message held
    print(f"edgeprune: error: {line}", file=sys.stderr)
    return code


app = App(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
          help="Compress spiking neural networks for edge devices: find a lottery ticket, "
               "retrain it, export it to ONNX and validate it.  Start with `edgeprune doctor` "
               "(what this host can run).  COMMAND --help-all lists every option; add --debug "
               "to any command to see tracebacks.")



def _help(fn) -> str:
    """The docstring with its paragraphs reflowed: the terminal wraps them, not the source."""
    return "\n\n".join(" ".join(p.split()) for p in (fn.__doc__ or "").split("\n\n"))


for name, fn in [("train", train.train), ("search", ticket.search),
                 ("retrain", ticket.retrain), ("compress", ticket.compress),
                 ("export", deploy.export), ("validate", deploy.validate),
                 ("package", deploy.package), ("verify", deploy.verify),
                 ("import-model", imports.import_model), ("show", inspect.show),
                 ("ls", inspect.ls), ("doctor", doctor.doctor)]:
    app.command(name, help=_help(fn), epilog=options.folded_help(fn))(fn)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
