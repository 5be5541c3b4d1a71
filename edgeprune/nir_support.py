"""The `nir` package edgeprune needs, checked once, before any work that would need it.

The NIR writer gives LIF, CubaLIF and IF their `v_reset`, a field nir added in 1.0.6 (1.0.5's
neurons have none: constructing one raises a TypeError). Sinabs' and Rockpool's `[nir]` extras
pin nir <= 1.0.4, so installing them next to edgeprune can downgrade it; then every command that
writes or reads NIR says so in one line instead of failing after search and retrain.
"""
from __future__ import annotations

from .errors import UserError

NIR_FLOOR = "1.0.6"
NEEDS = "LIF's v_reset"


def _parse(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("."):
        digits = "".join(ch for ch in part if ch.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def nir_problem() -> str | None:
    """Why the installed nir cannot serve edgeprune, or None when it can."""
    try:
        import nir
    except ImportError:
        return f"the nir package is not installed: pip install 'nir>={NIR_FLOOR}'"
    version = getattr(nir, "__version__", None) or "unknown"
    fields = getattr(getattr(nir, "LIF", None), "__dataclass_fields__", {})
    if "v_reset" not in fields or (version != "unknown" and
                                   _parse(version) < _parse(NIR_FLOOR)):
        return (f"nir {version} is installed, edgeprune needs nir>={NIR_FLOOR} ({NEEDS}): "
                f"pip install 'nir>={NIR_FLOOR}' (Sinabs' and Rockpool's [nir] extras pin "
                "nir<=1.0.4; install those frameworks without the extra; export with --no-nir to skip NIR)")
    return None


def require_nir() -> None:
    """UserError (exit 2 from the CLI) when the installed nir is too old or missing."""
    problem = nir_problem()
    if problem is not None:
        raise UserError(problem)
