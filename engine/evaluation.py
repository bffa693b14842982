"""Which server test samples the global model is evaluated on in a round.

Evaluating all 10,000 test images costs more than training a round of 100
small devices, so a run can evaluate on a fixed random sample each round
(``eval_samples``) and on the whole test set every ``full_eval_every`` rounds
and after its last round. The sample is drawn once per run, so the per-round
curve compares like with like; every round records how many samples it used.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from engine.setup import ServerTestSet


def evaluation_sample(num_test: int, eval_samples: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of the fixed per-round sample, or None when every round evaluates all ``num_test``."""
    if eval_samples is None or eval_samples >= num_test:
        return None
    return np.sort(np.random.default_rng([seed, 3]).choice(num_test, size=eval_samples, replace=False))


def evaluates_everything(server_round: int, last: bool, full_eval_every: int) -> bool:
    """Whether a round that would evaluate a sample evaluates the whole test set instead."""
    return last or server_round % full_eval_every == 0


def warm_up_samples(num_test: int, batch: int) -> int:
    """How many test samples to evaluate ahead of round 1 so that every batch shape the round's evaluation
    uses has run once (a full batch and the last, shorter one): the first run of a shape allocates its
    activations (hundreds of MB for a CNN at 2,048 images), which otherwise lands in round 1."""
    if num_test <= batch:
        return num_test
    return batch + num_test % batch


@dataclass(frozen=True)
class RoundTestSets:
    """The whole test set and the per-round sample (the same object when there is no sample)."""

    full: ServerTestSet
    sample: ServerTestSet
    full_eval_every: int

    @classmethod
    def of(cls, test_set: ServerTestSet, eval_samples: int | None, full_eval_every: int, seed: int) -> "RoundTestSets":
        indices = evaluation_sample(len(test_set.y), eval_samples, seed)
        return cls(test_set, test_set if indices is None else replace(test_set, x=test_set.x[indices], y=test_set.y[indices]), full_eval_every)

    def for_round(self, server_round: int, last: bool) -> ServerTestSet:
        if self.sample is self.full or evaluates_everything(server_round, last, self.full_eval_every):
            return self.full
        return self.sample
