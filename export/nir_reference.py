"""The reference simulations a NIR import is measured against (edgeprune.importers.import_stage):
what "how faithful is the import" compares with.

- the NIR equations (export/nir_sim.py, numpy): every node by NIR's equations, forward Euler
  with the import's dt, spike and reset in the same step. For graphs read under the "nir" or
  "norse" convention this is the semantics the import implements; under "snntorch" it shows how
  far snnTorch's arithmetic and late reset are from NIR's equations.
- edgeprune's exact descriptions (edgeprune convention): the nodes' "edgeprune.layer" metadata.
- snnTorch's own reader (`snntorch.import_nir.import_from_nir`, snnTorch convention, when
  installed), run one image at a time (its Flatten folds the batch into the features).
- SpikingJelly's own reader (`nir_exchange.import_from_nir`, spikingjelly convention, when
  installed), stepped T times from a reset.
- Sinabs' own reader (`sinabs.from_nir`, sinabs convention, when installed).
- Rockpool's own reader (`rockpool.nn.modules.torch.nir.from_nir`, rockpool convention, when
  installed), on (batch, time, channels).
A reference is binding when it computes the convention's own semantics (the NIR equations
under nir/norse, the exact descriptions under edgeprune, SpikingJelly's reader under
spikingjelly): the import stage refuses an import that disagrees with it or where it cannot
run. snnTorch's, Sinabs' and Rockpool's readers do not read their own files as written
(snnTorch's drops the late reset; Sinabs' reads LIF without norm_input and floors IAF at
−threshold; Rockpool's takes dt as min(tau_mem/(1 + r)), not the dt it wrote with): they are
reported, not binding.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _read(path: Path, type_check: bool = True):
    import warnings

    import nir

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nir.read(str(path), type_check=type_check)


def _nir_equations(path: Path, dt: float, exact: bool):
    from .nir_sim import simulate

    graph = _read(path)

    import nir

    (inp,) = [n for n in graph.nodes.values() if isinstance(n, nir.Input)]
    shape = tuple(int(v) for v in np.ravel(inp.input_type["input"]))

    def run(x: np.ndarray, timesteps: int) -> np.ndarray:
        if x.shape[1:] != shape and int(np.prod(x.shape[1:])) == int(np.prod(shape)):
            x = x.reshape(len(x), *shape)  # a flat Input takes the images flattened
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


def _spikingjelly(path: Path, dt: float):
    import warnings

    import torch
    from spikingjelly.activation_based import nir_exchange

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = nir_exchange.import_from_nir(_read(path), dt=dt, step_mode="s").eval()

    @torch.no_grad()
    def run(x: np.ndarray, timesteps: int) -> np.ndarray:
        # the graph module returns (output, state); each step is given the last state back
        xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        state, out = None, []
        for _t in range(timesteps):
            y, state = net(xt, state)
            out.append(y.reshape(len(x), -1).numpy())
        out = np.stack(out)
        return out
    return run


def _sinabs(path: Path):
    import warnings

    import torch
    import sinabs

    graph = _read(path)

    @torch.no_grad()
    def run(x: np.ndarray, timesteps: int) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = sinabs.from_nir(graph, batch_size=len(x)).eval()
        xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        seq = xt[:, None].expand(len(x), timesteps, *xt.shape[1:]).reshape(-1, *xt.shape[1:])
        y = net(seq)
        y = (y[0] if isinstance(y, tuple) else y).reshape(len(x), timesteps, -1)
        return y.transpose(0, 1).numpy()
    return run


def _rockpool(path: Path):
    import warnings

    import torch
    from rockpool.nn.modules.torch.nir import from_nir

    graph = _read(path, type_check=False)  # its Input keeps [1, T, N]: nir's types disagree
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = from_nir(graph)

    def reset():  # a nirtorch graph of Rockpool modules, each keeping its state
        for m in torch.nn.Module.modules(net):
            if type(m).__module__.startswith("rockpool") and hasattr(m, "reset_state"):
                m.reset_state()

    @torch.no_grad()
    def run(x: np.ndarray, timesteps: int) -> np.ndarray:
        reset()
        xt = torch.from_numpy(np.ascontiguousarray(x, np.float32)).flatten(1)
        y = net(xt[:, None].expand(len(x), timesteps, xt.shape[1]).contiguous())
        reset()
        while isinstance(y, tuple):  # (output, state[, record]), nested by nirtorch
            y = y[0]
        return y.transpose(0, 1).numpy()
    return run


def _framework(refs: list, module: str, title: str, make, binding: bool) -> None:
    """The reader of an installed framework as a reference (or why it is unavailable; a
    framework that is not installed binds nothing)."""
    import importlib
    import importlib.metadata

    try:
        importlib.import_module(module)
        version = importlib.metadata.version(module)
    except ImportError:
        refs.append((title, "not installed", False))
        return
    name = f"{title} {version}"
    try:
        refs.append((name, make(), binding))
    except Exception as e:
        refs.append((name, f"{type(e).__name__}: {' '.join(str(e).split())[:160]}", binding))


def references(path: Path, imported) -> list:
    """[(name, run | reason unavailable, binding)] for a NIR file read as `imported`."""
    refs = []
    conv = imported.convention
    dt = imported.dt if imported.dt is not None else 1.0
    try:
        refs.append((f"NIR equations (numpy; forward Euler, dt {dt:g}, reset in the same step)",
                     _nir_equations(path, dt, exact=False), conv in ("nir", "norse")))
        if conv == "edgeprune":
            refs.append(("edgeprune's exact node descriptions (numpy)",
                         _nir_equations(path, dt, exact=True), True))
    except Exception as e:
        refs.append(("NIR equations (numpy)", f"the nir package could not read the file "
                     f"({type(e).__name__}: {' '.join(str(e).split())[:120]})",
                     conv in ("nir", "norse", "edgeprune")))
    if conv == "snntorch" or imported.writer == "snntorch":
        _framework(refs, "snntorch", "snntorch (import_from_nir)", lambda: _snntorch(path),
                   False)
    if conv == "spikingjelly":
        _framework(refs, "spikingjelly", "spikingjelly (nir_exchange.import_from_nir)",
                   lambda: _spikingjelly(path, dt), True)
    if conv == "sinabs":
        _framework(refs, "sinabs", "sinabs (from_nir)", lambda: _sinabs(path), False)
    if conv == "rockpool":
        _framework(refs, "rockpool", "rockpool (from_nir)", lambda: _rockpool(path), False)
    return refs
