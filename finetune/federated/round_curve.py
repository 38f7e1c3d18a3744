"""The per-round picture of a federated run: the silos' weighted train loss per round (and
the cumulative DP epsilon, where DP was on)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"), so no display is needed

from finetune.federated.rounds import RoundRecord


def plot_round_curve(records: list[RoundRecord], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    rounds = [r.round for r in records]
    axes.plot(rounds, [r.train_loss for r in records], marker="o", label="train loss")
    axes.set_xlabel("round")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    if any(r.epsilon is not None for r in records):
        epsilon = axes.twinx()
        epsilon.plot(
            rounds, [r.epsilon for r in records], color="tab:red", marker=".", label="epsilon"
        )
        epsilon.set_ylabel("epsilon (cumulative)")
    axes.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
