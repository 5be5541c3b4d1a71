"""Early-Bird stop rule (You et al., 2020): the mask drawn at the start of each epoch has
stopped moving when its normalized Hamming distance to each of the previous q-1 masks is
below tau."""
from __future__ import annotations

from collections import deque

from .. import masks as masklib


class EarlyBird:
    def __init__(self, q: int = 5, tau: float = 0.02):
        self.q, self.tau = q, tau
        self.window: deque = deque(maxlen=q)

    def push(self, mask: masklib.Masks) -> float | None:
        """Add the newest mask; return the largest distance to the q-1 before it, or None
        while fewer than q masks have been seen."""
        self.window.append(mask)
        if len(self.window) < self.q:
            return None
        newest = self.window[-1]
        return max(masklib.hamming(newest, m) for m in list(self.window)[:-1])

    def converged(self, distance: float | None) -> bool:
        return distance is not None and distance < self.tau
