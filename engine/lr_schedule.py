"""The devices' learning rate across rounds (``--lr-schedule``): constant, or a cosine decay over the run.

Decaying the rate over the rounds the run was started with, as centralised
training anneals over its epochs, lets the last rounds settle where the updates
disagree (label skew); on IID data the annealed last rounds mostly make less
progress (see README "Learning quality" for the measured figures).
No TensorFlow here: the configuration imports this module.
"""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "cosine")


def round_factor(schedule: str, server_round: int, rounds: int | None) -> float:
    """The factor on the base learning rate in round ``server_round`` (1-based) of a run of ``rounds``.

    ``cosine``: ``(1 + cos(pi * (r - 1) / rounds)) / 2``, from 1 in round 1 down to
    ``(1 + cos(pi * (rounds - 1) / rounds)) / 2`` in the last round (0.095 for 5 rounds; it never reaches 0),
    and that last value in any round after it (a run extended past its planned rounds). A run without a
    planned end (``rounds`` None) has nothing to decay over: 1.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"learning-rate schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
    if server_round < 1:
        raise ValueError(f"rounds are counted from 1, got {server_round}")
    if schedule == "constant" or rounds is None:
        return 1.0
    step = min(server_round, rounds) - 1
    return 0.5 * (1.0 + math.cos(math.pi * step / rounds))


def round_learning_rate(learning_rate: float, schedule: str, server_round: int, rounds: int | None) -> float:
    """The devices' learning rate in ``server_round``: the base rate times :func:`round_factor`."""
    return learning_rate * round_factor(schedule, server_round, rounds)
