"""Privacy accounting for DP-FedAvg with Google's dp-accounting library (RDP accountant)."""

from __future__ import annotations

import dp_accounting
from dp_accounting import rdp

RDP_ORDERS = tuple(range(2, 128)) + (256, 512)  # integer orders: exact and warning-free


class PrivacyAccountant:
    """Composes one subsampled Gaussian mechanism per round and reports epsilon for ``delta``.

    Each round releases an aggregate with Gaussian noise of ``noise_multiplier``
    times the clipping norm (divided by the number of devices averaged, as in
    McMahan et al. 2018), over devices sampled with probability ``sampling_rate``
    (treated as Poisson sampling, the standard approximation).
    """

    def __init__(self, delta: float):
        self.delta = delta
        self._accountant = rdp.RdpAccountant(list(RDP_ORDERS))

    def spend_round(self, noise_multiplier: float, sampling_rate: float) -> float:
        """Record one round and return the epsilon spent so far."""
        event = dp_accounting.GaussianDpEvent(noise_multiplier)
        if sampling_rate < 1.0:
            event = dp_accounting.PoissonSampledDpEvent(sampling_rate, event)
        self._accountant.compose(event)
        return float(self._accountant.get_epsilon(self.delta))


def epsilon_after(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """Epsilon after ``rounds`` identical rounds (for planning and tests)."""
    accountant = PrivacyAccountant(delta)
    epsilon = float("inf")
    for _ in range(rounds):
        epsilon = accountant.spend_round(noise_multiplier, sampling_rate)
    return epsilon
