"""`model.pt`: a self-describing checkpoint that loads with `torch.load(weights_only=True)`.

It holds the ModelSpec (architecture, neuron parameters, T, encoding, input shape, classes,
normalization) as plain data next to the state_dict, so no user code and no pickle is needed.
"""
from __future__ import annotations

import math
import os
import pickle
import zipfile
from pathlib import Path

import torch

from .bounded_read import GiB, MiB, Budget, open_regular, open_zip, shown, take_members
from .errors import UserError
from .models import SNN, ModelSpec

FORMAT = "edgeprune.model/1"
# What loading a model.pt may cost, as its zip directory declares it, before a byte is read: its
# records (a VGG16 of width 1 is ~60 MB), and the pickled structure among them (data.pkl: the
# description and the state_dict's names, a few KiB), which torch unpickles in Python.
MODEL_BYTES = 1 * GiB
MODEL_PICKLE_BYTES = 16 * MiB


def save(path: Path, spec: ModelSpec, model: torch.nn.Module) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "spec": spec.to_dict(), "state_dict": state}, path)


def load(path: Path, device: str = "cpu") -> tuple[ModelSpec, SNN]:
    """Rebuild the network from a model.pt without unpickling code, at a bounded cost: the
    records' sizes are checked in the zip directory before torch reads them, and the network
    its description asks for is checked against the stored tensors before it is built."""
    path = Path(path)
    with open_regular(path, "model file") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise UserError(f"model file {path} is empty")
        _check_records(f, path)
        try:
            blob = torch.load(f, map_location=device, weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
            raise UserError(f"{path} is not a plain edgeprune checkpoint and was not loaded "
                            f"(it would need unpickling code: {first[:100]}); if you trust it, "
                            "bring it in with `edgeprune import-model --allow-pickle`") from None
        except Exception as e:
            raise UserError(f"{path} is not a readable torch checkpoint ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"{path} is not an edgeprune model.pt (expected format {FORMAT}); "
                        "for your own Norse model use --model-def FILE.py:FUNCTION")
    if not isinstance(blob.get("state_dict"), dict):
        raise UserError(f"{path} holds no state_dict")
    try:
        spec = ModelSpec.from_dict(blob["spec"])
        _check_fits(spec, blob["state_dict"], path)
        model = spec.build().to(device)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except Exception as e:  # a description we did not write: any failure means a bad file
        raise UserError(f"{path}: its model description is malformed "
                        f"({type(e).__name__}: {str(e)[:120]})") from None
    try:
        model.load_state_dict(blob["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: weights do not fit the {spec.arch} architecture it names "
                        f"({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})") \
            from None
    return spec, model


def _check_records(f, path: Path) -> None:
    """The sizes the zip directory declares, within the budgets. Only torch's zip format is
    read: the legacy format declares its storages' sizes inside the pickle, unchecked."""
    if not zipfile.is_zipfile(f):
        raise UserError(f"{path} is not a readable torch checkpoint (not torch's zip format)")
    where = f"model file {path}"
    with open_zip(f, where) as z:
        pickles = [n for n in z.namelist() if n.endswith("data.pkl")]
        take_members(z, where, Budget("the pickled part of a model.pt", MODEL_PICKLE_BYTES),
                     pickles)
        take_members(z, where, Budget("a model.pt", MODEL_BYTES))
    f.seek(0)


def _check_fits(spec: ModelSpec, state: dict, path: Path) -> None:
    """The network `spec` describes, built on the meta device (shapes only, no memory), must
    hold exactly the stored tensors: a description asking for a far bigger network than the
    file holds (width 150 in a file of 360 KB) is refused before that network is allocated."""
    with torch.device("meta"):
        wanted = {k: list(v.shape) for k, v in spec.build().state_dict().items()}
    stored = {k: list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
              for k, v in state.items()}
    if wanted == stored:
        return
    missing = [k for k in wanted if k not in stored]
    extra = [k for k in stored if k not in wanted]
    wrong = [k for k in wanted if k in stored and wanted[k] != stored[k]]
    detail = (f"{shown(wrong[0])} is {stored[wrong[0]]} in the file but its description needs "
              f"{wanted[wrong[0]]}" if wrong else
              f"missing {shown(missing[0])}" if missing else f"unexpected {shown(extra[0])}")
    needs = sum(math.prod(s) for s in wanted.values())
    raise UserError(f"weights do not fit the {spec.arch} architecture it names ({detail}; the "
                    f"description needs {needs:,} numbers): refused before building it")
