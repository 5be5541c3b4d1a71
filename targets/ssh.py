"""Talk to a board over the system OpenSSH client: run a command there, copy bytes to and from
it, and keep the files in a temporary folder there that is removed afterwards. Torch-free
(stdlib only).

The user's own keys and ssh config are used (or `-F FILE`), always with BatchMode (no prompt
for a password or a host key: a board that would ask fails at once), ConnectTimeout and
keep-alives, and every call has a time-out. Nothing is built from user input as a local shell
string: ssh gets an argument list. The remote command, though, IS a shell string on the board
(ssh joins its arguments and hands them to the login shell), so every word of it is quoted with
shlex.quote and every remote path is a fixed name inside the folder `mktemp -d` made there.

ssh exits 255 on its own failures (unreachable, refused key, dropped connection): each is one
UserError line naming the host and what was being done.
"""
from __future__ import annotations

import re
import shlex
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import UserError

from . import child, tools

SSH_FAILED = 255  # ssh's exit status for its own errors (the remote command's otherwise)
# A destination: USER@HOST[:PORT] or an alias; no option-like or shell-special characters, so
# that it can only ever be read as a host name (it is also passed after `--`).
DESTINATION = re.compile(r"(?:[A-Za-z0-9._][A-Za-z0-9._-]*@)?"
                         r"(?:[A-Za-z0-9_][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?")
SETUP_TIMEOUT_S = 60  # mktemp, uploads, probes: small and quick


def destination_problem(text: str) -> str | None:
    """Why `text` is not a usable USER@HOST[:PORT] (None when it is)."""
    if not text:
        return "is empty: give USER@HOST[:PORT] or a Host alias of the ssh config"
    m = DESTINATION.fullmatch(text)
    if not m:
        return (f"{text[:80]!r} is not USER@HOST[:PORT] or a Host alias (letters, digits, "
                "'.', '_', '-'; an IPv6 address in [brackets])")
    if m.group(1) is not None and not 1 <= int(m.group(1)) <= 65535:
        return f"{text!r} has a port outside 1-65535"
    return None


@dataclass(frozen=True)
class Board:
    """A board reached over SSH."""

    destination: str  # USER@HOST[:PORT] or an alias
    ssh_config: str = ""  # ssh -F FILE
    connect_timeout_s: int = 10

    def __post_init__(self):
        why = destination_problem(self.destination)
        if why:
            raise UserError(f"--remote {why}")
        if self.ssh_config and not Path(self.ssh_config).is_file():
            raise UserError(f"--ssh-config {self.ssh_config} is not a file")

    def argv(self, words: list[str], stdout_to: str | None = None) -> list[str]:
        """The local argv that runs `words` on the board (each word quoted for its shell),
        with stdout redirected to the remote file `stdout_to` when given."""
        ssh = tools.SSH.find()
        if ssh is None:
            raise UserError("running on a board needs the OpenSSH client: install it with "
                            f"`apt-get install {tools.SSH.package}` {tools.SEE_DOCTOR}")
        host, port = self.destination, None
        m = DESTINATION.fullmatch(host)
        if m and m.group(1) is not None:
            host, port = host[:m.start(1) - 1], m.group(1)
        host = host.replace("[", "").replace("]", "")
        opts = ["-F", self.ssh_config] if self.ssh_config else []
        opts += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout_s}",
                 "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                 "-o", "LogLevel=ERROR"]
        if port:
            opts += ["-p", port]
        command = " ".join(shlex.quote(w) for w in words)
        if stdout_to is not None:
            command += " > " + shlex.quote(stdout_to)
        return [ssh, *opts, "--", host, command]

    def call(self, argv: list[str], what: str, *, input: bytes | None = None,
             timeout: float = SETUP_TIMEOUT_S) -> subprocess.CompletedProcess:
        """Run an argv from `argv()`; a UserError when ssh itself fails or the time runs out,
        else the remote command's CompletedProcess (bytes), whatever its exit status."""
        try:
            p = child.run(argv, input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"board {self.destination}: {what} took over {timeout:g} s") from None
        except OSError as e:
            raise UserError(f"board {self.destination}: cannot start ssh: {e.strerror}") from None
        if p.returncode == SSH_FAILED:
            raise UserError(f"board {self.destination}: ssh failed while {what}: "
                            f"{last_line(p.stderr)}")
        return p

    def run(self, words: list[str], what: str, *, input: bytes | None = None,
            timeout: float = SETUP_TIMEOUT_S, stdout_to: str | None = None) -> bytes:
        """`words` on the board; its stdout, or a UserError when it fails."""
        p = self.call(self.argv(words, stdout_to), what, input=input, timeout=timeout)
        if p.returncode != 0:
            raise UserError(f"board {self.destination}: {what} failed (exit {p.returncode}): "
                            f"{last_line(p.stderr)}")
        return p.stdout

    def put(self, data: bytes, path: str, what: str) -> None:
        self.run(["cat"], f"copying {what}", input=data, stdout_to=path)

    def get(self, path: str, what: str) -> bytes:
        return self.run(["cat", path], f"copying {what} back")

    def isa(self) -> str:
        """The board's ISA (`uname -m`)."""
        return tools.isa_of(self.run(["uname", "-m"], "asking its ISA (uname -m)")
                            .decode(errors="replace"))

    @contextmanager
    def folder(self):
        """A fresh folder on the board (`mktemp -d`), removed (best effort) on exit."""
        path = self.run(["mktemp", "-d"], "making a temporary folder (mktemp -d)") \
            .decode(errors="replace").strip()
        if not path.startswith("/") or "\n" in path or not path.isprintable():
            raise UserError(f"board {self.destination}: mktemp -d gave {path[:80]!r}, not a "
                            "folder path")
        try:
            yield path
        finally:
            try:  # a dropped connection leaves it in the board's temp dir, which the OS clears
                child.run(self.argv(["rm", "-rf", "--", path]), timeout=SETUP_TIMEOUT_S)
            except (subprocess.TimeoutExpired, OSError, UserError):
                pass


def last_line(stderr: bytes | str | None) -> str:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else (stderr or "")
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return lines[-1][:300] if lines else "no message"
