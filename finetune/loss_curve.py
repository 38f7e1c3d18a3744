"""The loss-curve picture of a training run, drawn from the Trainer's log history."""

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"), so no display is needed


def plot_loss_curve(history: list[dict[str, Any]], path: Path) -> Path:
    """Train and eval loss against the optimizer step, as a PNG at `path`."""
    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    for key, label in (("loss", "train"), ("eval_loss", "eval")):
        points = [(entry["step"], entry[key]) for entry in history if key in entry]
        if points:
            steps, values = zip(*points, strict=True)
            axes.plot(steps, values, marker="." if key == "eval_loss" else None, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
