"""The device side of personalisation: each device's own model, trained and evaluated on its own data.

After a device has trained the global update it sends, it builds its
personalised model and evaluates it on its local test split (the same split
the received global model is evaluated on, so the two accuracies compare):

- ``finetune``: ``steps`` local steps from the received global model; the
  result is thrown away after evaluation (nothing kept, nothing sent).
- ``fedper``: the device's model *is* its personalised model: the received
  body under its own head (kept between rounds), trained; the head never
  leaves the device (:meth:`devices.device.Device.encode` sends the body only).
- ``ditto``: the device's personal model v (kept between rounds; the received
  global model the first time) trained for the round's local epochs with the
  proximal term ``lambda/2 ||v - w||^2`` toward the received global model w.

One function per way of training: :func:`personalize_one` on a single
replica, :func:`personalize_stack` on a stack of devices at once (the same
steps, vectorised; ``tests/test_personalization.py`` checks they agree).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from devices.messages import TrainInstructions, Weights
from devices.personal_weights import finetune_indices, split_weights, with_own_head

if TYPE_CHECKING:
    from devices.device import Device
    from devices.stacked import StackedReplica
    from devices.trainer import ModelReplica

Scores = tuple[float, float]  # (loss, accuracy) on the local test split
NO_SCORES: Scores = (float("nan"), float("nan"))


def starting_weights(device: Device, instructions: TrainInstructions) -> Weights:
    """Where the device's local training starts: under FedPer its own head on the received body."""
    personal = instructions.personal
    if personal is None or personal.mode != "fedper":
        return instructions.weights
    return with_own_head(instructions.weights, device.head, personal.head)


def sent_part(weights: Weights, instructions: TrainInstructions) -> Weights:
    """What of a full weight list leaves the device: under FedPer the body only."""
    personal = instructions.personal
    if personal is None or personal.mode != "fedper":
        return weights
    return split_weights(weights, personal.head)[0]


def _finetune_samples(device: Device, instructions: TrainInstructions):
    data = device.data
    chosen = finetune_indices(data.num_train, instructions.batch_size, instructions.personal.steps, instructions.seed)
    return data.x_train[chosen], data.y_train[chosen]


def personalize_one(
    device: Device, instructions: TrainInstructions, replica: ModelReplica, trained: Weights, local: Scores,
    checkpoint: Callable[[int], None],
) -> Scores:
    """The device's personalised model's (loss, accuracy) on its local test split, its state updated.

    ``trained`` is the model the device trained this round (and sends), ``local`` its scores.
    """
    personal = instructions.personal
    data = device.data
    if personal is None:
        return NO_SCORES
    if personal.mode == "fedper":
        device.head = split_weights(trained, personal.head)[1]
        return local
    if personal.mode == "finetune":
        x, y = _finetune_samples(device, instructions)
        replica.set_weights(instructions.weights)
        epochs, mu = 1, 0.0
    else:  # ditto
        x, y = data.x_train, data.y_train
        replica.set_weights(device.personal_model or instructions.weights, anchor=instructions.weights)
        epochs, mu = instructions.local_epochs, personal.lam
    replica.reset_optimizer(instructions.learning_rate)
    replica.train(x, y, epochs=epochs, batch_size=instructions.batch_size, seed=instructions.seed + 1,
                  checkpoint=checkpoint, proximal_mu=mu)
    if personal.mode == "ditto":
        device.personal_model = replica.get_weights()
    return replica.evaluate(data.x_test, data.y_test)[:2]


def personalize_stack(
    devices: Sequence[Device], instructions: Sequence[TrainInstructions], stack: StackedReplica,
    trained: Sequence[Weights], local: Sequence[Scores], checkpoint: Callable[[int], None],
) -> list[Scores]:
    """:func:`personalize_one` for a stack of devices that received the same model, trained side by side."""
    first = instructions[0]
    personal = first.personal
    if personal is None:
        return [NO_SCORES] * len(devices)
    if personal.mode == "fedper":
        for device, weights in zip(devices, trained):
            device.head = split_weights(weights, personal.head)[1]
        return list(local)
    if personal.mode == "finetune":
        samples = [_finetune_samples(device, instr) for device, instr in zip(devices, instructions)]
        stack.load(first.weights)
        epochs, mu = 1, 0.0
    else:  # ditto
        samples = [(device.data.x_train, device.data.y_train) for device in devices]
        stack.load_each([device.personal_model or first.weights for device in devices], [first.weights] * len(devices))
        epochs, mu = first.local_epochs, personal.lam
    stack.reset_optimizer(first.learning_rate)
    stack.train(samples, epochs=epochs, batch_size=first.batch_size, seeds=[i.seed + 1 for i in instructions],
                checkpoint=checkpoint, proximal_mu=mu)
    if personal.mode == "ditto":
        for device, weights in zip(devices, stack.get_weights()):
            device.personal_model = weights
    return stack.evaluate([(device.data.x_test, device.data.y_test) for device in devices])
