"""A reusable Keras model replica with a compiled local training loop.

Building and compiling a Keras model costs far more than a round of local
training on a small device, so each worker thread owns one replica and reuses
it for every device and every round: weights are assigned, the optimizer state
is reset, and a ``tf.function`` runs a chunk of batches with no per-batch
Python work. Between chunks the caller's ``checkpoint`` runs, which is where a
pause or a stop takes effect.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from devices.messages import Weights
from devices.optimizer_state import OptimizerState, fits
from devices.precision import in_precision

ModelBuilder = Callable[[], keras.Model]
Checkpoint = Callable[[int], None]

EVAL_BATCH = 2048
# Keras draws initial weights from process-wide random state. Models are built in several threads (workers,
# warm-ups, other federations), so building one and seeding-then-building the initial global model take turns.
KERAS_RNG_LOCK = threading.RLock()
DEEP_MODEL_VARIABLES = 40
"""Models with more trainable variables than this train one compiled step at a time."""


class TrainingStopped(Exception):
    """Raised by a checkpoint to abandon local training (the run was stopped)."""


@dataclass(frozen=True)
class OptimizerSpec:
    """The local optimizer every device uses (fresh each round, or each device's own kept state)."""

    name: str = "sgd"
    momentum: float = 0.9

    def build(self) -> keras.optimizers.Optimizer:
        if self.name == "sgd":
            return keras.optimizers.SGD(learning_rate=0.01, momentum=self.momentum)
        if self.name == "adam":
            return keras.optimizers.Adam(learning_rate=0.001)
        raise ValueError(f"unknown optimizer {self.name!r}; choose sgd or adam")


@dataclass(frozen=True)
class SampleSpec:
    """What a device's stored samples look like, and what the model learns from them.

    ``shape`` is one stored sample (grey images (h, w), colour (h, w, 3), rows
    (features,)); uint8 samples are scaled by 1/255, float32 ones used as
    they are. Classification targets are int32 classes (cross-entropy on
    logits); regression targets float32 values (squared error on the single
    output). ``None`` (the default) means 28x28-style uint8 grey images for
    the model's input and classification.
    """

    shape: tuple[int, ...]
    dtype: str = "uint8"
    task: str = "classification"

    @classmethod
    def for_model(cls, model: keras.Model) -> "SampleSpec":
        return cls(tuple(model.input_shape[1:-1]))

    @property
    def target_dtype(self):
        return tf.float32 if self.task == "regression" else tf.int32

    def scaled(self, x) -> tf.Tensor:
        """Stored samples as float32 model inputs."""
        values = tf.cast(x, tf.float32)
        return values / 255.0 if self.dtype == "uint8" else values


def sample_losses(task: str, outputs, y):
    """Per-sample loss and score: cross-entropy and correctness, or squared and absolute error."""
    if task == "regression":
        error = outputs[..., 0] - y
        return tf.square(error), tf.abs(error)
    loss = keras.losses.sparse_categorical_crossentropy(y, outputs, from_logits=True)
    return loss, tf.cast(tf.equal(tf.argmax(outputs, -1, output_type=tf.int32), y), tf.float32)


@dataclass(frozen=True)
class TrainResult:
    loss: float
    accuracy: float
    steps: int
    seconds: float


def batches_per_epoch(num_samples: int, batch_size: int) -> int:
    return -(-num_samples // batch_size)


def epoch_orders(num_samples: int, epochs: int, seed: int) -> np.ndarray:
    """Sample order for ``epochs`` passes, each a fresh seeded shuffle, concatenated."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(num_samples) for _ in range(epochs)]).astype(np.int32)


def batch_plan(num_samples: int, epochs: int, batch_size: int, seed: int) -> np.ndarray:
    """The sample indices of every local step, ``[steps, batch_size]``, -1 padding each epoch's last batch.

    The same batches, in the same order, as :meth:`ModelReplica.train` draws
    from :func:`epoch_orders`: batches never straddle two epochs.
    """
    steps = batches_per_epoch(num_samples, batch_size)
    padded = np.full((epochs, steps * batch_size), -1, np.int32)
    padded[:, :num_samples] = epoch_orders(num_samples, epochs, seed).reshape(epochs, num_samples)
    return padded.reshape(epochs * steps, batch_size)


class LocalOptimizer:
    """The device's optimizer over ``variables``: fresh for every device and round, or loaded with a device's
    own state (:mod:`devices.optimizer_state`)."""

    def __init__(self, spec: OptimizerSpec, variables):
        self.optimizer = spec.build()
        self.optimizer.build(variables)
        # all-zero initial states (moments, step counters) are made in the graph, not copied from NumPy
        self._initial_state = [v.numpy() for v in self.optimizer.variables]
        self._initial_state = [None if not np.any(value) else value for value in self._initial_state]
        self._reset = tf.function(self._reset_impl, input_signature=[tf.TensorSpec([], tf.float32)], autograph=False)
        # the state: the step count and the slot variables (moments, momentum), not the learning rate
        self._state_variables = [v for v in self.optimizer.variables if v.name != "learning_rate"]
        self.fresh_state = [v.numpy() for v in self._state_variables]
        self.slot_betas = [slot_beta(self.optimizer, v.name) for v in self._state_variables[1:]]

    def _reset_impl(self, learning_rate):
        for variable, value in zip(self.optimizer.variables, self._initial_state):
            variable.assign(tf.zeros(variable.shape, variable.dtype) if value is None else value)
        self.optimizer.learning_rate.assign(learning_rate)

    def reset(self, learning_rate: float, state: OptimizerState | None = None) -> None:
        """A fresh state (one compiled call, not one per variable), or ``state`` (a device's own, or a stack's)
        when it fits."""
        self._reset(tf.constant(learning_rate, tf.float32))
        if fits(state, self.fresh_state):
            for variable, value in zip(self._state_variables, state):
                variable.assign(value)

    def state(self) -> OptimizerState:
        return [np.array(v.numpy()) for v in self._state_variables]

    def apply(self, gradients, variables) -> None:
        self.optimizer.apply_gradients(zip(gradients, variables))


def slot_beta(optimizer: keras.optimizers.Optimizer, name: str) -> float | None:
    """The decay whose bias correction a slot variable has: Adam's beta_1 (moments) or beta_2 (velocities)."""
    if not isinstance(optimizer, keras.optimizers.Adam):
        return None
    return optimizer.beta_2 if name.endswith("_velocity") else optimizer.beta_1


def with_correction(gradients, corrections):
    """SCAFFOLD's corrected gradient ``g - c_i + c``: ``corrections`` hold ``c - c_i`` (zeros otherwise)."""
    return [g + c for g, c in zip(gradients, corrections)]


def with_proximal_term(gradients, variables, anchors, mu):
    """Add the gradient of FedProx's (mu/2)||w - w_received||^2; skipped at run time when mu is 0."""
    return tf.cond(
        mu > 0,
        lambda: [g + mu * (v - a) for g, v, a in zip(gradients, variables, anchors)],
        lambda: list(gradients),
    )


def trainable_positions(model: keras.Model) -> list[int]:
    """Where each trainable variable sits in ``model.weights`` (the order of ``get_weights``)."""
    positions = {id(v): i for i, v in enumerate(model.weights)}
    return [positions[id(v)] for v in model.trainable_variables]


class ModelReplica:
    """One model, one optimizer and their compiled train/evaluate functions."""

    def __init__(
        self, build_model: ModelBuilder, optimizer: OptimizerSpec, steps_per_call: int = 25,
        samples: SampleSpec | None = None, precision: str = "float32",
    ):
        """``precision`` ``bfloat16`` trains in mixed precision: float32 weights, bfloat16 compute."""
        with KERAS_RNG_LOCK:
            self.model = in_precision(build_model(), precision)
        self.samples = samples or SampleSpec.for_model(self.model)
        self.optimizer = LocalOptimizer(optimizer, self.model.trainable_variables)
        # FedProx: the weights received this round and the proximal weight mu
        self._anchors = [tf.Variable(v.value, trainable=False) for v in self.model.trainable_variables]
        self._proximal_mu = tf.Variable(0.0, trainable=False)
        # SCAFFOLD: c - c_i for each trainable variable (zeros for every other strategy)
        self._corrections = [tf.Variable(tf.zeros_like(v.value), trainable=False)
                             for v in self.model.trainable_variables]
        self._trainable_positions = trainable_positions(self.model)
        self.steps_per_call = steps_per_call
        image = tf.TensorSpec([None, *self.samples.shape], tf.as_dtype(self.samples.dtype))
        labels = tf.TensorSpec([None], self.samples.target_dtype)
        scalar = tf.TensorSpec([], tf.int32)
        # no AutoGraph (as for stacks): no Python control flow over tensors, and converting the source costs
        # seconds of Python on a process's first trace
        self._train_steps = tf.function(
            self._train_steps_impl,
            input_signature=[image, labels, tf.TensorSpec([None], tf.int32), scalar, scalar, scalar, scalar],
            autograph=False,
        )
        # a deep model's step loop takes minutes to compile (MobileNetV2: ~60 s, one step ~16 s)
        self.step_by_step = len(self.model.trainable_variables) > DEEP_MODEL_VARIABLES
        self._train_one = tf.function(self._step, input_signature=[image, labels, tf.TensorSpec([None], tf.int32),
                                                                  scalar, scalar, scalar], autograph=False)
        self._evaluate_batch = tf.function(self._evaluate_batch_impl, input_signature=[image, labels], autograph=False)
        self._predict_batch = tf.function(
            self._predict_impl, input_signature=[tf.TensorSpec([None, *self.samples.shape], tf.float32)],
            autograph=False,
        )

    # -- weights ---------------------------------------------------------
    def get_weights(self) -> Weights:
        return [np.array(v.numpy()) for v in self.model.weights]

    def set_weights(self, weights: Weights, anchor: Weights | None = None) -> None:
        """Load ``weights``; they, or ``anchor`` when given (Ditto's global model), become the anchor of the
        proximal term (FedProx's, Ditto's)."""
        if anchor is not None:
            self.model.set_weights(anchor)
            anchors = [variable.numpy() for variable in self.model.trainable_variables]  # copies
            self.model.set_weights(weights)
        else:
            self.model.set_weights(weights)
            anchors = [variable.value for variable in self.model.trainable_variables]
        for variable, value in zip(self._anchors, anchors):
            variable.assign(value)

    def reset_optimizer(self, learning_rate: float, state: OptimizerState | None = None) -> None:
        """A fresh optimizer, or one with a device's kept ``state``."""
        self.optimizer.reset(learning_rate, state)

    def optimizer_state(self) -> OptimizerState:
        return self.optimizer.state()

    # -- compiled steps ----------------------------------------------------
    def _model_inputs(self, values):
        return tf.reshape(values, [-1, *self.model.input_shape[1:]])

    def _forward_loss(self, x, y, training):
        """Outputs, summed loss and summed score (correct predictions, or absolute errors) of a batch."""
        outputs = self.model(self._model_inputs(self.samples.scaled(x)), training=training)
        outputs = tf.cast(outputs, tf.float32)  # the loss is float32 in any precision
        losses, scores = sample_losses(self.samples.task, outputs, y)
        return outputs, tf.reduce_sum(losses), tf.reduce_sum(scores)

    def _step(self, x, y, order, samples_per_epoch, batch_size, step):
        """One local step at ``step`` of the epochs' orders: summed loss, score and batch size."""
        steps_per_epoch = (samples_per_epoch + batch_size - 1) // batch_size
        epoch_start = (step // steps_per_epoch) * samples_per_epoch
        start = epoch_start + (step % steps_per_epoch) * batch_size
        end = tf.minimum(start + batch_size, epoch_start + samples_per_epoch)
        batch = order[start:end]
        xb, yb = tf.gather(x, batch), tf.gather(y, batch)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            _, loss_sum, correct = self._forward_loss(xb, yb, training=True)
            loss = loss_sum / tf.cast(end - start, tf.float32)
        gradients = with_correction(tape.gradient(loss, variables), self._corrections)
        self.optimizer.apply(with_proximal_term(gradients, variables, self._anchors, self._proximal_mu), variables)
        return loss_sum, correct, end - start

    def _train_steps_impl(self, x, y, order, samples_per_epoch, batch_size, first_step, num_steps):
        def step_body(step, loss_total, correct_total, seen):
            loss_sum, correct, count = self._step(x, y, order, samples_per_epoch, batch_size, step)
            return step + 1, loss_total + loss_sum, correct_total + correct, seen + count

        _, loss_total, correct_total, seen = tf.while_loop(
            lambda step, *totals: step < first_step + num_steps, step_body,
            [first_step, tf.constant(0.0), tf.constant(0.0), tf.constant(0)])
        return loss_total, correct_total, seen

    def _run_steps(self, x, y, order, samples, batch_size, first, count):
        """``count`` steps from ``first``: in one compiled loop, or step by step for deep models."""
        if not self.step_by_step:
            return self._train_steps(x, y, order, samples, batch_size, first, count)
        totals = [0.0, 0.0, 0]
        for step in range(first, first + count):
            for i, value in enumerate(self._train_one(x, y, order, samples, batch_size, step)):
                totals[i] += value
        return totals

    def _evaluate_batch_impl(self, x, y):
        outputs, loss_sum, _ = self._forward_loss(x, y, training=False)
        if self.samples.task == "regression":
            return loss_sum, outputs[:, 0]
        return loss_sum, tf.cast(tf.argmax(outputs, -1, output_type=tf.int32), tf.float32)

    def _predict_impl(self, inputs):
        outputs = tf.cast(self.model(self._model_inputs(inputs), training=False), tf.float32)
        return outputs if self.samples.task == "regression" else tf.nn.softmax(outputs)

    # -- public API ----------------------------------------------------------
    def train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        epochs: int,
        batch_size: int,
        seed: int,
        checkpoint: Checkpoint = lambda steps: None,
        proximal_mu: float = 0.0,
        correction: Weights | None = None,
    ) -> TrainResult:
        """Train the current weights on (x, y) in place; ``checkpoint`` runs between chunks.

        ``correction`` (SCAFFOLD's ``c - c_i``, shaped like :meth:`get_weights`) is added to every gradient.
        """
        started = time.perf_counter()
        self._proximal_mu.assign(proximal_mu)
        for variable, position in zip(self._corrections, self._trainable_positions):
            variable.assign(tf.zeros_like(variable) if correction is None else correction[position])
        total_steps = batches_per_epoch(len(x), batch_size) * epochs
        x_t, y_t = tf.constant(x), tf.constant(y, self.samples.target_dtype)
        order = tf.constant(epoch_orders(len(x), epochs, seed))
        loss_total = correct_total = 0.0
        seen = 0
        for first in range(0, total_steps, self.steps_per_call):
            checkpoint(first)
            count = min(self.steps_per_call, total_steps - first)
            loss, correct, num = self._run_steps(x_t, y_t, order, len(x), batch_size, first, count)
            loss_total += float(loss)
            correct_total += float(correct)
            seen += int(num)
        checkpoint(total_steps)
        return TrainResult(
            loss=loss_total / max(seen, 1),
            accuracy=self._accuracy(correct_total, seen),
            steps=total_steps,
            seconds=time.perf_counter() - started,
        )

    def _accuracy(self, correct: float, seen: int) -> float:
        return correct / max(seen, 1) if self.samples.task == "classification" else float("nan")

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float, np.ndarray]:
        """Mean loss, accuracy (NaN for a regression) and the predictions of the current weights on (x, y).

        Predictions are class indices (int32) or, for a regression, predicted values (float32).
        """
        if len(x) == 0:
            return float("nan"), float("nan"), np.zeros(0, np.int32)
        loss_total = 0.0
        predictions = []
        for start in range(0, len(x), EVAL_BATCH):
            loss, predicted = self._evaluate_batch(x[start:start + EVAL_BATCH], y[start:start + EVAL_BATCH])
            loss_total += float(loss)
            predictions.append(predicted.numpy())
        predicted = np.concatenate(predictions)
        if self.samples.task == "regression":
            return loss_total / len(x), float("nan"), predicted
        predicted = predicted.astype(np.int32)
        return loss_total / len(x), float(np.mean(predicted == y)), predicted

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (or predicted values, shape (n, 1)) for float inputs already scaled, e.g.
        images in [0, 1] of shape (n, height, width[, 3]) or standardised rows (n, features)."""
        return self._predict_batch(np.asarray(images, np.float32)).numpy()
