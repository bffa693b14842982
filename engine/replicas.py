"""How a federation builds its models: the server's, one device's, a stack of devices; and which it trains with.

The server's models (evaluation, prediction) are float32 whatever the devices
compute in; devices train in the federation's precision, one by one or as
vectorised stacks when the model allows it (``devices.stacked_layers``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras

from devices.stacked import StackedReplica
from devices.stacked_layers import NotStackable, compiles_well, stack_plan
from devices.trainer import KERAS_RNG_LOCK, ModelReplica, OptimizerSpec, SampleSpec
from engine.config import FederationConfig
from engine.model_defaults import ModelError


@dataclass(frozen=True)
class Replicas:
    """Builds the federation's compiled models from one model builder and one optimizer."""

    build_model: Callable[[], keras.Model]
    optimizer: OptimizerSpec
    samples: SampleSpec
    precision: str
    xla: bool
    template: keras.Model | None = None  # a built model whose layers and shapes stacks read (the server's)

    def server(self) -> ModelReplica:
        """A float32 replica: the server evaluates and predicts in full precision."""
        return ModelReplica(self.build_model, self.optimizer, samples=self.samples)

    def device(self) -> ModelReplica:
        """A replica for devices trained one by one, in the federation's precision."""
        return ModelReplica(self.build_model, self.optimizer, samples=self.samples, precision=self.precision)

    def stack(self, width: int) -> StackedReplica:
        """``width`` devices trained as one vectorised computation."""
        return StackedReplica(self.build_model, self.optimizer, width, xla=self.xla, samples=self.samples,
                              precision=self.precision, template=self.template)

    def first_server(self, seed: int, model: str, input_shape: tuple) -> ModelReplica:
        """The server's first replica, whose weights are the initial global model: the same for the same
        ``seed`` whatever other threads are building. A model that does not fit the data raises
        :class:`ModelError` naming ``model`` and ``input_shape``."""
        with KERAS_RNG_LOCK:
            keras.utils.set_random_seed(seed)
            try:
                return self.server()
            except (ModelError, ValueError) as error:
                raise ModelError(f"model {model!r} cannot be built for inputs {input_shape}: "
                                 f"{str(error).splitlines()[0]}") from None


def training_mode(model: keras.Model, config: FederationConfig) -> tuple[bool, str]:
    """Whether a round's devices train as stacks, and a one-line note saying how and why."""
    threads = f"on {config.workers} worker thread{'s' * (config.workers > 1)}"
    if config.stack_width == 1:
        return False, f"Devices train one by one {threads}."
    try:
        ops = stack_plan(model)
    except NotStackable as reason:
        return False, f"Devices train one by one {threads} ({reason})."
    compiled = ", compiled with XLA" if config.xla and compiles_well(ops) else ""
    return True, f"Devices train vectorised, up to {config.stack_width} per stack{compiled}, {threads}."
