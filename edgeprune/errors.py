"""The two kinds of failure a user sees, mapped to exit codes by the CLI."""


class UserError(Exception):
    """Bad usage or bad input: one line saying what is wrong and how to fix it (exit 2)."""


class GateFailed(Exception):
    """A validation gate (parity, accuracy, latency, memory) failed (exit 1)."""
