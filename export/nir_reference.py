"""The reference simulations a NIR import is measured against (edgeprune.importers.import_stage):
what "how faithful is the import" compares with.

- the NIR equations (export/nir_sim.py, numpy): every node by NIR's equations, forward Euler
  with the import's dt, spike and reset in the same step. For graphs read under the "nir" or
  "norse" convention this is the semantics the import implements; under "snntorch" it shows how
  far snnTorch's arithmetic and late reset are from NIR's equations.
- edgeprune's exact descriptions (edgeprune convention): the nodes' "edgeprune.layer" metadata.
- snnTorch's own reader (`snntorch.import_nir.import_from_nir`, snnTorch convention, when
  installed), run one image at a time (its Flatten folds the batch into the features).
A reference that cannot run says why; that is reported, not fatal.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _read(path: Path):
    import warnings

    import nir

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nir.read(str(path))


def _nir_equations(path: Path, dt: float, exact: bool):
    from .nir_sim import simulate

    graph = _read(path)

    def run(x: np.ndarray, timesteps: int) -> np.ndarray:
        return simulate(graph, x, timesteps, dt=dt, exact=exact)["step_logits"]
    return run


def _snntorch(path: Path):
    import warnings

    import torch
    from snntorch import import_nir

    import contextlib
    import io

    # snnTorch's reader prints progress on stdout, which belongs to --json
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        net = import_nir.import_from_nir(_read(path)).eval()

    @torch.no_grad()
    def run(x: np.ndarray, timesteps: int) -> np.ndarray:
        out = np.zeros((timesteps, len(x), 0), np.float32)
        rows = []
        for img in torch.from_numpy(np.ascontiguousarray(x, np.float32)):
            state, steps = None, []
            for _t in range(timesteps):
                y, state = net(img[None], state)
                steps.append(y.reshape(-1).numpy())
            rows.append(np.stack(steps))
        out = np.stack(rows, axis=1) if rows else out
        return out
    return run


def references(path: Path, imported) -> list:
    """[(name, run | reason unavailable)] for a NIR file read as `imported`."""
    refs = []
    dt = imported.dt if imported.dt is not None else 1.0
    try:
        refs.append((f"NIR equations (numpy; forward Euler, dt {dt:g}, reset in the same step)",
                     _nir_equations(path, dt, exact=False)))
        if imported.convention == "edgeprune":
            refs.append(("edgeprune's exact node descriptions (numpy)",
                         _nir_equations(path, dt, exact=True)))
    except Exception as e:
        refs.append(("NIR equations (numpy)", f"the nir package could not read the file "
                     f"({type(e).__name__}: {' '.join(str(e).split())[:120]})"))
    if imported.convention == "snntorch" or imported.writer == "snntorch":
        try:
            import snntorch
            name = f"snntorch {snntorch.__version__} (import_from_nir)"
        except ImportError:
            refs.append(("snntorch", "not installed"))
        else:
            try:
                refs.append((name, _snntorch(path)))
            except Exception as e:
                refs.append((name, f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"))
    return refs
