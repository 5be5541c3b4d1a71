"""Named tensors on disk as safetensors: no pickle, so loading runs no code."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .bounded_read import GiB, Budget, regular_size
from .errors import UserError

TENSOR_FILE_BYTES = 4 * GiB  # weights, masks and per-epoch snapshots of one artifact


def save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def load(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file. Nothing in it is compressed and its header's offsets
    must cover the file exactly, so the file's size is what loading it costs."""
    Budget("a safetensors file", TENSOR_FILE_BYTES).take(
        f"tensor file {path}", regular_size(path, "tensor file"))
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable safetensors file: {e}") from None


def group(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors stored under `prefix/` (several state dicts can share one file)."""
    p = prefix + "/"
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}
