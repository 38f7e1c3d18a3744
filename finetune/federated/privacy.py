"""The privacy budget of a DP federation: Opacus's RDP accountant for the subsampled
Gaussian mechanism, one step per completed round (sampling rate = the share of silos a round
samples, noise multiplier as configured)."""

import math

from opacus.accountants import RDPAccountant

from finetune.federated.config import DifferentialPrivacy


def epsilon_after(dp: DifferentialPrivacy, rounds: int, sample_rate: float) -> float:
    """Cumulative epsilon at `dp.delta` after `rounds` noised aggregations (inf without noise)."""
    if dp.noise_multiplier == 0:
        return math.inf
    accountant = RDPAccountant()
    accountant.history = [(dp.noise_multiplier, min(sample_rate, 1.0), rounds)]
    return float(accountant.get_epsilon(delta=dp.delta))
