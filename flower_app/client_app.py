"""The Flower ClientApp: a SuperNode's device, trained with ``devices.Device.fit``.

Messages it answers:

- ``query``: which partition this node holds (cheap: no TensorFlow import), so
  the server can select devices by partition id and skip deactivated ones.
- ``train``: load the node's device (its own partition, or its own image
  folder), train the received global model on it exactly as the in-process
  engine does, and reply with the new weights, every ``DeviceMetrics`` field and
  ``setup-seconds`` (TensorFlow import, data loading and model building in this
  process: paid every round when Flower starts a fresh ClientApp process per
  message, once when a long-lived worker runs them, see ``flower_app.node``).
"""

from __future__ import annotations

import time

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from flower_app import records
from flower_app.config import node_spec

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    spec = node_spec(context.node_config, context.run_config, context.node_id)
    return Message(records.node_content(spec.partition_id, spec.num_partitions, spec.source), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    started = time.perf_counter()
    from flower_app.node import local_node  # TensorFlow: imported only by processes that train

    spec = node_spec(context.node_config, context.run_config, context.node_id)
    node = local_node(spec)
    setup_seconds = time.perf_counter() - started  # TensorFlow import, data loading, model building
    update = node.fit(records.instructions_from(msg.content))
    return Message(records.update_content(update, {"setup_seconds": setup_seconds}), reply_to=msg)
