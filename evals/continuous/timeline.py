"""A picture of the loop: the drift score of the watched model over time, and each step of
each cycle marked on the same clock."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"), so no display is needed

from evals.continuous.events import LoopEvent, Step
from evals.drift.checks import DriftCheck

_COLOURS = {
    Step.DRIFT: "red", Step.EVALUATION: "tab:blue", Step.DECISION: "tab:purple",
    Step.JOB: "tab:orange", Step.VERSION: "tab:olive", Step.GATE: "tab:cyan",
    Step.PROMOTED: "green", Step.FAILED: "black", Step.WAITING: "grey",
    Step.TRAINING_DATA: "tab:brown",
}  # fmt: skip


def label(event: LoopEvent) -> str:
    """One line for a step: what happened and what it links to."""
    d = event.detail
    match event.step:
        case Step.DRIFT:
            return f"drift on {d['version']} (score {d['score']:.2f}; {', '.join(d['alarms'])})"
        case Step.EVALUATION:
            shown = ", ".join(f"{k} {v:.2f}" for k, v in d["metrics"].items() if "exact" in k)
            return f"{d['suite']} on {d['version']}: {shown or d['metrics']}"
        case Step.DECISION:
            return f"retrain: {', '.join(d['below'])} below floor" if d["retrain"] else "no drop"
        case Step.TRAINING_DATA:
            return f"{d['rows']} training rows ({d['corrections']} corrections)"
        case Step.JOB:
            return f"fine-tuning job on {d['base']}"
        case Step.VERSION:
            return f"candidate {event.ref} (from {d['job']})"
        case Step.GATE if d["passed"]:
            moved = [
                f"{x['metric']} {x['a']:.2f} -> {x['b']:.2f}"
                for x in d["gate"]["details"]["deltas"]
                if abs(x["b"] - x["a"]) >= 0.05 and "latency" not in x["metric"]
            ]
            return f"gate passed: {', '.join(moved) or 'no metric moved'}"
        case Step.GATE:
            return f"gate refused: {d['reason']}"
        case Step.PROMOTED:
            return f"@{d['alias']}: {d['from_version']} -> {d['to_version']}"
        case Step.WAITING:
            return f"waiting: {d['corrections']} corrections"
        case _:
            return d.get("error", "")


def write_png(model: str, events: list[LoopEvent], checks: list[DriftCheck], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(11, 5))
    for version in dict.fromkeys(c.version for c in checks):
        mine = [c for c in checks if c.version == version]
        ax.plot([c.created_at for c in mine], [c.score for c in mine], marker=".",
                label=f"drift score of {version}")  # fmt: skip
    times = [c.created_at for c in checks] + [e.created_at for e in events]
    middle = min(times) + (max(times) - min(times)) / 2 if times else None
    for i, event in enumerate(events):
        colour = _COLOURS.get(event.step, "black")
        ax.axvline(event.created_at, color=colour, alpha=0.4, linewidth=1)
        ax.annotate(
            f" {event.step.value}: {label(event)}"[:80] + " ",
            (event.created_at, 0.98 - 0.07 * (i % 13)),
            fontsize=7, color=colour, xycoords=("data", "axes fraction"), va="top",
            ha="right" if event.created_at > middle else "left",
        )  # fmt: skip
    ax.set_ylim(0, 1)
    ax.set_ylabel("drift score")
    ax.set_title(f"{model}: continuous training")
    ax.legend(loc="lower right", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
