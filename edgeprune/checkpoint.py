"""`model.pt`: a self-describing checkpoint that loads with `torch.load(weights_only=True)`.

It holds the ModelSpec (architecture, neuron parameters, T, encoding, input shape, classes,
normalization) as plain data next to the state_dict, so no user code and no pickle is needed.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch

from .diskspace import write_bytes
from .errors import UserError
from .models import SNN, ModelSpec

FORMAT = "edgeprune.model/1"


def save(path: Path, spec: ModelSpec, model: torch.nn.Module) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_torch(path, {"format": FORMAT, "spec": spec.to_dict(), "state_dict": state})


def save_torch(path: Path, obj) -> None:
    """torch.save, atomically and safe on a full disk: serialized in memory first (torch's own
    file writer fails a full disk with a RuntimeError and leaves its half file), then written
    by `diskspace.write_bytes`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getbuffer())


def load(path: Path, device: str = "cpu") -> tuple[ModelSpec, SNN]:
    """Rebuild the network from a model.pt without unpickling code."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"model file {path} does not exist")
    if path.stat().st_size == 0:
        raise UserError(f"model file {path} is empty")
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
        raise UserError(f"{path} is not a plain edgeprune checkpoint and was not loaded "
                        f"(it would need unpickling code: {first[:100]}); if you trust it, "
                        "bring it in with `edgeprune import-model --allow-pickle`") from None
    except Exception as e:
        raise UserError(f"{path} is not a readable torch checkpoint "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"{path} is not an edgeprune model.pt (expected format {FORMAT}); "
                        "for your own Norse model use --model-def FILE.py:FUNCTION")
    try:
        spec = ModelSpec.from_dict(blob["spec"])
        model = spec.build().to(device)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except Exception as e:  # a description we did not write: any failure means a bad file
        raise UserError(f"{path}: its model description is malformed "
                        f"({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(blob.get("state_dict"), dict):
        raise UserError(f"{path} holds no state_dict")
    try:
        model.load_state_dict(blob["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: weights do not fit the {spec.arch} architecture it names "
                        f"({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})") \
            from None
    return spec, model
