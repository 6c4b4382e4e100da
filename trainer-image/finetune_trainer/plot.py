"""loss.png: training and validation loss over steps, from the trainer's log history."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def loss_curves(
    log_history: list[dict[str, Any]],
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """``(train, eval)`` as (step, loss) pairs, in step order."""
    train = [(int(e["step"]), float(e["loss"])) for e in log_history if "loss" in e and "step" in e]
    evals = [
        (int(e["step"]), float(e["eval_loss"]))
        for e in log_history
        if "eval_loss" in e and "step" in e
    ]
    return sorted(train), sorted(evals)


def plot_losses(log_history: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Draw the curves into ``path`` (PNG). Uses the Agg backend: pods have no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = loss_curves(log_history)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="validation loss", color="tab:orange")
    if not train and not evals:
        ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
