"""Reading a framework module's neuron settings: each must be one number for the layer."""
from __future__ import annotations

import torch

from ..errors import UserError


def one_number(m, name: str) -> float | None:
    """`m.<name>` as a float (a number, or a tensor of one element); None where it is None or
    absent. Per-neuron values are refused: the neuron kinds hold one value per layer."""
    v = getattr(m, name, None)
    if v is None:
        return None
    t = torch.as_tensor(v).detach().float()
    if t.numel() != 1:
        raise UserError(f"its {name} is not one number")
    return float(t)
