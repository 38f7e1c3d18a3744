"""The drift tests, one per signal, from scipy.stats: two-sample Kolmogorov-Smirnov on
numbers and on the principal components of prompt embeddings, chi-squared on finish reasons,
Mann-Whitney U on feedback ratings. Each gives an effect size in [0, 1] and a p-value."""

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from evals.drift.config import DriftConfig, Signal

PCA_FIT_ROWS = 4096  # rows the principal components are fitted on; projecting is cheap


@dataclass
class Sample:
    """One side of a comparison. A field is None where that side cannot say (a data file
    has prompts but no latencies)."""

    embeddings: np.ndarray  # (n, dim), unit rows
    prompt_tokens: np.ndarray | None = None
    completion_tokens: np.ndarray | None = None
    latency: np.ndarray | None = None
    finish_reasons: list[str] | None = None
    ratings: np.ndarray = field(default_factory=lambda: np.empty(0))

    def __len__(self) -> int:
        return len(self.embeddings)


@dataclass(frozen=True)
class SignalResult:
    signal: Signal
    effect: float  # KS distance, Cramér's V or |rank biserial|: 0 = same, 1 = disjoint
    p_value: float
    reference_n: int
    window_n: int


def ks(signal: Signal, reference: np.ndarray, window: np.ndarray) -> SignalResult:
    result = stats.ks_2samp(reference, window)
    return SignalResult(
        signal, float(result.statistic), float(result.pvalue), len(reference), len(window)
    )


def embedding_shift(
    reference: np.ndarray, window: np.ndarray, components: int, seed: int = 0
) -> SignalResult:
    """KS on each of the leading principal components of both samples pooled; the smallest
    p-value, Bonferroni-corrected for the components. The components are fitted without
    knowing which side a row is from, so under no drift the test keeps its level."""
    n = len(reference) + len(window)
    rng = np.random.default_rng(seed)
    rows = rng.choice(n, min(n, PCA_FIT_ROWS), replace=False)
    in_reference = rows < len(reference)
    fit = np.concatenate(
        [reference[rows[in_reference]], window[rows[~in_reference] - len(reference)]]
    )
    mean = fit.mean(axis=0)
    k = min(components, fit.shape[1], len(fit) - 1)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    axes = vt[:k].T
    offset = mean @ axes
    ref, win = reference @ axes - offset, window @ axes - offset
    tests = [stats.ks_2samp(ref[:, i], win[:, i]) for i in range(k)]
    best = min(tests, key=lambda t: t.pvalue)
    return SignalResult(
        "embedding",
        float(max(t.statistic for t in tests)),
        float(min(1.0, best.pvalue * k)),
        len(reference),
        len(window),
    )


def categories(signal: Signal, reference: list[str], window: list[str]) -> SignalResult:
    ref, win = Counter(reference), Counter(window)
    labels = sorted(ref.keys() | win.keys())
    if len(labels) < 2:
        return SignalResult(signal, 0.0, 1.0, len(reference), len(window))
    table = np.array([[ref[label] for label in labels], [win[label] for label in labels]])
    chi2, p, _, _ = stats.chi2_contingency(table)
    cramers_v = float(np.sqrt(chi2 / table.sum()))  # two rows: min(r, c) - 1 == 1
    return SignalResult(signal, min(1.0, cramers_v), float(p), len(reference), len(window))


def ratings_shift(reference: np.ndarray, window: np.ndarray) -> SignalResult:
    if np.all(reference == reference[0]) and np.all(window == reference[0]):
        return SignalResult("feedback", 0.0, 1.0, len(reference), len(window))
    result = stats.mannwhitneyu(reference, window, alternative="two-sided")
    biserial = 1.0 - 2.0 * float(result.statistic) / (len(reference) * len(window))
    return SignalResult(
        "feedback", abs(biserial), float(result.pvalue), len(reference), len(window)
    )


def compare(reference: Sample, window: Sample, config: DriftConfig) -> list[SignalResult]:
    """Every signal both sides can speak to."""
    results = [embedding_shift(reference.embeddings, window.embeddings, config.components)]
    for signal in ("prompt_tokens", "completion_tokens", "latency"):
        ref, win = getattr(reference, signal), getattr(window, signal)
        if ref is not None and win is not None:
            results.append(ks(signal, ref, win))
    if reference.finish_reasons is not None and window.finish_reasons is not None:
        results.append(categories("finish_reason", reference.finish_reasons, window.finish_reasons))
    if min(len(reference.ratings), len(window.ratings)) >= config.min_ratings:
        results.append(ratings_shift(reference.ratings, window.ratings))
    return results


@dataclass(frozen=True)
class Verdict:
    drifted: bool
    score: float  # the largest effect among the deciding signals
    threshold: float  # the per-signal p-value below which a deciding signal counts
    alarms: list[Signal]


def decide(results: list[SignalResult], config: DriftConfig) -> Verdict:
    """Drift when a deciding signal is both significant at alpha / (deciding signals tested),
    so that the window's false-alarm rate stays at most alpha, and at least `min_effect`."""
    deciding = [r for r in results if r.signal in config.deciding]
    threshold = config.alpha / max(1, len(deciding))
    alarms = [r.signal for r in deciding if r.p_value < threshold and r.effect >= config.min_effect]
    score = max((r.effect for r in deciding), default=0.0)
    return Verdict(bool(alarms), score, threshold, alarms)
