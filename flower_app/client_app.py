"""The Flower ClientApp: a SuperNode's device, trained with ``devices.Device.fit``.

Messages it answers:

- ``query``: which partition this node holds and how many training samples
  (cheap: no TensorFlow import), so the server can select devices by
  partition id, skip deactivated ones and bound each reply's ``num-examples``.
- ``train``: load the node's device (its own partition, or its own files:
  ``flower_app.byod``), train the received global model on it exactly as the in-process
  engine does, and reply with what ``Device.respond`` sends in-process (the
  clipped, noised, compressed delta), every ``DeviceMetrics`` field and
  ``setup-seconds`` (TensorFlow import, data loading and model building in this
  process: paid every round when Flower starts a fresh ClientApp process per
  message, once when a long-lived worker runs them, see ``flower_app.node``).
  Under secure aggregation the train messages are Flower's SecAgg+ rounds:
  ``secaggplus_mod`` (through ``flower_app.secagg.secure_mod``) answers the
  key stages itself and masks the delta this function returns in the
  masked-vector stage, so the update never leaves the node unmasked.
"""

from __future__ import annotations

import time

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from data.sources import load_source
from engine.setup import device_indices
from flower_app import records, secagg
from flower_app.config import NodeSpec, node_spec

app = ClientApp()


def declared_samples(spec: NodeSpec) -> int:
    """How many samples this node trains on (its own files: all of them, an upper bound)."""
    if spec.data:
        from flower_app.byod import PREPROCESSING_KEY, node_arrays

        return len(node_arrays(spec.data, str(dict(spec.run)[PREPROCESSING_KEY]))[1])
    if spec.image_folder:
        from data.datasets import CLASS_NAMES
        from flower_app.image_folder import load_image_folder

        return len(load_image_folder(spec.image_folder, CLASS_NAMES[str(dict(spec.run)["dataset"])])[1])
    config = spec.federation()
    dataset = load_source(config.dataset, config.data_dir, config.source_options)
    train, _ = device_indices(dataset.y_train, config, dataset.train_groups)[spec.partition_id]
    return len(train)


@app.query()
def query(msg: Message, context: Context) -> Message:
    spec = node_spec(context.node_config, context.run_config, context.node_id)
    content = records.node_content(spec.partition_id, spec.num_partitions, spec.source, declared_samples(spec))
    return Message(content, reply_to=msg)


@app.train(mods=[secagg.secure_mod])
def train(msg: Message, context: Context) -> Message:
    started = time.perf_counter()
    from flower_app.node import local_node  # TensorFlow: imported only by processes that train

    spec = node_spec(context.node_config, context.run_config, context.node_id)
    node = local_node(spec)
    setup_seconds = time.perf_counter() - started  # TensorFlow import, data loading, model building
    if secagg.is_secure(msg.content):  # SecAgg+'s masked-vector stage: secaggplus_mod masks what we return
        instructions, weight = secagg.secure_instructions(msg.content)
        update = node.respond_with_state(instructions, context.state)  # FedPer's head, Ditto's v: kept here too
        return Message(secagg.secure_reply(update, weight, {"setup_seconds": setup_seconds}), reply_to=msg)
    update = node.respond_with_state(records.instructions_from(msg.content), context.state)
    return Message(records.update_content(update, {"setup_seconds": setup_seconds}), reply_to=msg)
