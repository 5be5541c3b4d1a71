"""Loading what a user brings: the Python file that defines their network (run, since they asked
for it) and their weights (read without unpickling code unless they opt in)."""
from __future__ import annotations

import importlib.util
import pickle
import sys
import uuid
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError


def load_definition(model_def: str) -> nn.Module:
    """`FILE.py:FUNCTION` -> the module the function returns. The file runs (the user asked for
    that); its folder is on sys.path only while it is imported, so it can import siblings."""
    if ":" not in model_def:
        raise UserError(f"--model-def {model_def!r}: expected FILE.py:FUNCTION")
    file, func = model_def.rsplit(":", 1)
    path = Path(file)
    if not path.is_file():
        raise UserError(f"model definition file {path} does not exist")
    name = f"_edgeprune_user_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"{path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    sys.modules[name] = module  # dataclasses and pickling look the module up while it runs
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise UserError(f"importing {path} failed: {type(e).__name__}: {e}") from None
    finally:
        sys.path.remove(folder)
        sys.modules.pop(name, None)
    fn = getattr(module, func, None)
    if not callable(fn):
        raise UserError(f"{path} has no function {func!r}")
    try:
        model = fn()
    except Exception as e:
        raise UserError(f"{path}:{func}() failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{path}:{func}() returned a {type(model).__name__}, not a torch nn.Module")
    return model


def load_weights(path: Path, allow_pickle: bool = False):
    """A state_dict (dict of tensors), or with allow_pickle possibly a whole pickled nn.Module.
    Without allow_pickle only torch's weights-only loader runs: no code in the file executes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"state_dict file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not allow_pickle:
            first = (str(e).strip().splitlines() or ["unsafe content"])[0][:120]
            raise UserError(f"{path} needs unpickling code to load ({first}); it was not "
                            "loaded. Pass --allow-pickle only if you trust the file") from None
        print(f"warning: {path} is unpickled with code execution (--allow-pickle)",
              file=sys.stderr)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:
            raise UserError(f"{path} could not be unpickled: {type(e2).__name__}: {e2}") from None
    except Exception as e:
        raise UserError(f"{path} is not a readable torch file ({type(e).__name__})") from None
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state_dict (a dict of tensors)")
    return obj
