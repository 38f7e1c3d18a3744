"""Confidence intervals and paired tests over per-example scores (bootstrap, McNemar), so that
a run reports how sure its numbers are and a gate is not flipped by noise."""

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def bootstrap_interval(scores: list[float], confidence: float = 0.95, seed: int = 0) -> Interval:
    """The mean of `scores` with a percentile bootstrap interval."""
    values = np.asarray(scores, dtype=float)
    if len(values) == 0:
        return Interval(math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (RESAMPLES, len(values)))].mean(axis=1)
    tail = (1 - confidence) / 2
    return Interval(
        float(values.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))
    )


@dataclass(frozen=True)
class PairedDelta:
    delta: Interval  # candidate minus champion, mean over paired examples
    p_value: float  # two-sided: the chance of a difference this large if there were none
    test: str  # "mcnemar" for 0/1 scores, "paired-bootstrap" otherwise

    def to_dict(self) -> dict[str, object]:
        return {"delta": self.delta.to_dict(), "p_value": self.p_value, "test": self.test}


def paired_delta(
    candidate: list[float], champion: list[float], confidence: float = 0.95, seed: int = 0
) -> PairedDelta:
    """How much `candidate` scores above `champion` on the same examples, with a paired test:
    McNemar's exact test when every score is 0 or 1, else a paired bootstrap."""
    a, b = np.asarray(candidate, dtype=float), np.asarray(champion, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores differ in length: {len(a)} vs {len(b)}")
    differences = a - b
    interval = bootstrap_interval(list(differences), confidence, seed)
    if np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all():
        gained, lost = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
        p = 1.0 if gained + lost == 0 else stats.binomtest(gained, gained + lost).pvalue
        return PairedDelta(interval, float(p), "mcnemar")
    rng = np.random.default_rng(seed)
    centred = differences - differences.mean()
    resampled = centred[rng.integers(0, len(a), (RESAMPLES, len(a)))].mean(axis=1)
    p = float((np.abs(resampled) >= abs(differences.mean())).mean()) if len(a) else 1.0
    return PairedDelta(interval, p, "paired-bootstrap")
