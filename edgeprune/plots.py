"""PNG plots of a search, drawn off-screen."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def imp_rounds(log: list[dict], path: Path, title: str) -> None:
    """Test accuracy after each IMP round against the round's sparsity."""
    rows = [r for r in log if r.get("kind") == "round"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([100 * r["sparsity"] for r in rows], [100 * r["test_acc"] for r in rows], "o-")
    for r in rows:
        ax.annotate(str(r["round"]), (100 * r["sparsity"], 100 * r["test_acc"]), fontsize=7,
                    xytext=(2, 3), textcoords="offset points")
    ax.set(xlabel="sparsity (%)", ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def eb_distances(log: list[dict], path: Path, tau: float, title: str) -> None:
    """Early-Bird: the largest mask distance in the window, per epoch, against tau."""
    rows = [r for r in log if r.get("kind") == "eb" and r.get("distance") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["epoch"] for r in rows], [r["distance"] for r in rows], "o-", label="max distance")
    ax.axhline(tau, color="red", ls="--", label=f"tau = {tau}")
    ax.set(xlabel="epoch", ylabel="normalized Hamming distance", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
