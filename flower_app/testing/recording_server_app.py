"""The real ServerApp, noting what every reply it receives carries, for tests against real Flower processes only.

Each reply the ServerApp pulls from the SuperLink is summarised as one JSON
line in ``received.jsonl`` in the output folder: its sender, its type, the
bytes in each of its array records, the keys of each config record and, for
SecAgg+'s masked vectors, their size and the mean of their values as a
fraction of the modulus (about 0.5 for masked, uniformly random vectors; a
quantized delta near zero sits near 0.0005). A test reads it to check that
the server never held a device's own update. Nothing here is imported by the
product.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Context
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import Key
from flwr.serverapp import Grid, ServerApp

from flower_app import server_app
from flower_app.output_dir import output_dir
from flower_app.polling import PollingGrid

RECEIVED_FILE = "received.jsonl"
MODULUS = 2.0**32  # SecAggPlusWorkflow's default modulus_range, which flower_app.secagg keeps

app = ServerApp()


def summary(reply) -> dict:
    """What one reply carries, without its values."""
    record: dict = {"src": reply.metadata.src_node_id, "type": reply.metadata.message_type,
                    "error": reply.has_error()}
    if reply.has_error():
        return record
    content = reply.content
    record["arrays"] = {name: sum(len(a.data) for a in arrays.values())
                        for name, arrays in content.array_records.items()}
    record["configs"] = {name: sorted(config.keys()) for name, config in content.config_records.items()}
    for config in content.config_records.values():
        if Key.MASKED_PARAMETERS in config:
            vectors = [bytes_to_ndarray(b) for b in config[Key.MASKED_PARAMETERS]]
            values = np.concatenate([v.ravel() for v in vectors[1:]]).astype(np.float64)  # [0]: the weight
            record["masked"] = {"values": int(values.size), "mean_fraction": float(values.mean() / MODULUS)}
    return record


class RecordingGrid(PollingGrid):
    """``grid``, appending a :func:`summary` of every pulled reply to ``path``."""

    def __init__(self, grid: Grid, path):
        super().__init__(grid)
        self.path = path

    def pull_messages(self, message_ids):
        replies = list(super().pull_messages(message_ids))
        with self.path.open("a", encoding="utf-8") as handle:
            for reply in replies:
                handle.write(json.dumps(summary(reply)) + "\n")
        return replies


@app.main()
def main(grid: Grid, context: Context) -> None:
    folder = output_dir()
    folder.mkdir(parents=True, exist_ok=True)
    server_app.main(RecordingGrid(grid, folder / RECEIVED_FILE), context)
