"""Start the processes a validation needs (the ONNX Runtime runner, the C runner, QEMU, the
compiler) so that none can outlive edgeprune. Torch-free (stdlib only).

Each child runs in its own process group, killed whole when the call ends by an exception (a
timeout, Ctrl-C, which the child's group no longer receives from the terminal). On Linux each
child also asks the kernel, with prctl(PR_SET_PDEATHSIG, SIGKILL), to be killed when its parent
dies: SIGKILL of edgeprune runs no handler, and without this a runner timing 10^6 batches would
run on at full CPU under init.

    run(argv, *, input=None, timeout=None, env=None, cwd=None, text=False) -> CompletedProcess

is subprocess.run(argv, capture_output=True, ...) with these guarantees (stdin is /dev/null
when no input is given). PR_SET_PDEATHSIG fires when the thread that started the child exits:
call run() from a thread that waits for it, as run() itself does.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1


def _prctl():
    """libc's prctl, looked up once in the parent (the child must only call it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _prctl()


def _die_with_parent(parent: int):
    """The preexec_fn: runs in the child between fork and exec."""
    def arm():
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(137)
    return arm


def run(argv: list[str], *, input: bytes | str | None = None, timeout: float | None = None,
        env: dict | None = None, cwd=None, text: bool = False) -> subprocess.CompletedProcess:
    """Run `argv` to completion and capture its output; raises subprocess.TimeoutExpired (the
    child's group killed) like subprocess.run, and OSError when it cannot start."""
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                         text=text, process_group=0,
                         preexec_fn=_die_with_parent(os.getpid()) if _PRCTL else None)
    with p:
        try:
            out, err = p.communicate(input, timeout=timeout)
        except BaseException:
            _kill(p)
            raise
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def _kill(p: subprocess.Popen) -> None:
    """SIGKILL `p`'s whole process group and reap `p`."""
    if p.returncode is None:  # not reaped yet, so the group id is still this child's
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait()
