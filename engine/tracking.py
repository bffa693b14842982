"""Experiment tracking: each completed round as TensorBoard scalars (``--tensorboard DIR``), with ``tf.summary``.

``tf.summary.scalar`` lives in the ``tensorboard`` package, which is not a
requirement; ``tf.summary.write`` with the scalar plugin's metadata writes the
same record with TensorFlow alone. Viewing needs ``pip install tensorboard``.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR,
).SerializeToString()

from engine.results import RoundResult


def round_scalars(result: RoundResult) -> dict[str, float]:
    """The scalars logged for one round: global and per-device metrics, bytes, epsilon."""
    scalars = {
        "global/accuracy": result.global_accuracy,
        "global/loss": result.global_loss,
        "bytes/up": float(result.bytes_up),
        "bytes/down": float(result.bytes_down),
        "bytes/compression_ratio": result.compression_ratio,
        "round/seconds": result.seconds,
        "round/devices": float(len(result.devices)),
        "round/problems": float(len(result.problems)),
    }
    if result.epsilon is not None:
        scalars["privacy/epsilon"] = result.epsilon
    for device in result.devices:
        scalars[f"device/{device.device_id}/accuracy"] = device.accuracy
        scalars[f"device/{device.device_id}/loss"] = device.loss
        scalars[f"device/{device.device_id}/train_loss"] = device.train_loss
    return scalars


class TensorBoardLog:
    """One run's TensorBoard event files in ``folder/run_name``; step = round."""

    def __init__(self, folder: str, run_name: str):
        self.path = Path(folder).expanduser() / run_name
        self._writer = tf.summary.create_file_writer(str(self.path))

    def write(self, result: RoundResult) -> None:
        """Log the round; ``OSError`` when the events cannot be written."""
        try:
            with self._writer.as_default(step=result.round):
                for tag, value in round_scalars(result).items():
                    tf.summary.write(tag, tf.constant(value, tf.float32), metadata=SCALAR_METADATA)
            self._writer.flush()
        except tf.errors.OpError as error:
            raise OSError(f"{self.path}: {error.message}") from error

    def close(self) -> None:
        self._writer.close()
