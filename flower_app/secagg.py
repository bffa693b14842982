"""Secure aggregation on Flower with Flower's own SecAgg+ (``SecAggPlusWorkflow`` and ``secaggplus_mod``).

In-process, secure aggregation is simulated (``devices.secure_aggregation``):
real masking arithmetic, but the pairwise seeds come from a shared secret and
the whole federation is one process. On Flower the devices run Flower's SecAgg+
protocol (Bell et al. 2020) with the ServerApp: key agreement, Shamir shares of
every mask seed, masked quantized vectors, then unmasking from the shares of at
least :data:`RECONSTRUCTION_THRESHOLD` of each device's neighbours. The
ServerApp only ever holds the masked vectors and their unmasked weighted sum;
a device that drops after sending its keys is still unmasked from the others'
shares.

Flower's protocol speaks the legacy ``FitIns``/``FitRes`` records
(``fitins.parameters``, ``fitres.num_examples`` ...): the workflow asks a
legacy ``Strategy`` for each node's ``FitIns`` and hands it the results whose
parameters are the unmasked weighted mean. :class:`_FitInsByNode` is that
strategy for one round of the engine's loop: the engine's instructions go down
as ``FitIns`` (the global model, our train config and the device's weight, the
same share of the round ``engine.rounds.RoundRunner.secure_plans`` gives
in-process), and what comes back is the mean of the devices' *deltas*
(clipped, noised and compressed as instructed, like the in-process masked
delta). The ClientApp replies with ``fitres`` records: ``num_examples`` is its
weight, the parameters its delta (masked and removed by ``secaggplus_mod``
before the reply leaves the node), the metrics its ``DeviceMetrics``.

What the mod quantizes: each weighted delta clipped to [-:data:`CLIPPING_RANGE`,
:data:`CLIPPING_RANGE`] on Flower's default 2^22 levels, so the sum is exact up
to about 4e-6 per weight per device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.compat.common import recorddict_compat as compat

from devices.messages import EncodedUpdate, TrainInstructions, Weights
from flower_app import records, wire

SECURE_WEIGHT = "secure-weight"  # the device's share of the round, in the FitIns config
RECONSTRUCTION_THRESHOLD = 2 / 3  # of each device's shares needed to unmask it (at least 2)
CLIPPING_RANGE = 8.0  # Flower's default: weighted deltas are clipped to +-8 before quantization
FITINS_CONFIG = "fitins.config"


# -- the ClientApp's side ------------------------------------------------------------------
def secure_mod(msg: Message, context: Context, call_next):
    """Flower's ``secaggplus_mod`` for the messages of a SecAgg+ round; every other message passes through."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_secure(content: RecordDict) -> bool:
    """Whether a train message is SecAgg+'s masked-vector stage (legacy ``FitIns`` records)."""
    return FITINS_CONFIG in content.config_records


def secure_instructions(content: RecordDict) -> tuple[TrainInstructions, float]:
    """The engine's instructions in a SecAgg+ train message, and the device's weight in the sum."""
    fitins = compat.recorddict_to_fitins(content, keep_input=True)
    config = dict(fitins.config)
    weight = float(config.pop(SECURE_WEIGHT))
    (packed,) = parameters_to_ndarrays(fitins.parameters)  # the global model as one array (fit_ins)
    ours = RecordDict({records.ARRAYS: ConfigRecord({wire.PACKED: packed.tobytes()}),
                       records.CONFIG: ConfigRecord(config)})
    return records.instructions_from(ours), weight


def secure_reply(update: EncodedUpdate, weight: float, extras: Mapping[str, float] | None = None) -> RecordDict:
    """The ``fitres`` records ``secaggplus_mod`` masks: the sent delta, the weight, our metrics."""
    from devices.codec import decode_delta

    delta = [np.asarray(d, np.float32) for d in decode_delta(update.payload)]
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(delta), weight,  # type: ignore[arg-type]
                    records.update_metrics(update, extras))
    return compat.fitres_to_recorddict(fitres, keep_input=False)


# -- the ServerApp's side ------------------------------------------------------------------
def fit_ins(instructions: TrainInstructions, weight: float) -> FitIns:
    """A device's SecAgg+ ``FitIns``: the global model (packed as one tensor, :mod:`flower_app.wire`: fewer
    message parts), our train config and its weight in the sum."""
    config = dict(records.instructions_content(instructions).config_records[records.CONFIG])
    packed = np.frombuffer(wire.pack(instructions.weights), np.uint8)
    return FitIns(ndarrays_to_parameters([packed]),
                  {**config, SECURE_WEIGHT: float(weight)})


@dataclass
class SecureOutcome:
    """One SecAgg+ round as the ServerApp saw it."""

    mean_delta: Weights | None  # the weighted mean of the summed devices' deltas (None: the protocol halted)
    metrics: dict[int, Mapping[str, object]] = field(default_factory=dict)  # node -> its reported metrics
    masked: dict[int, np.ndarray] = field(default_factory=dict)  # node -> the masked vector it sent (bytes)


def _legacy_strategy(fitins: dict[int, FitIns], outcome: SecureOutcome, grid):
    """The legacy ``Strategy`` ``SecAggPlusWorkflow`` drives: this round's FitIns; the unmasked results."""
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.strategy import Strategy

    class FitInsByNode(Strategy):
        def initialize_parameters(self, client_manager):
            return None

        def configure_fit(self, server_round, parameters, client_manager):
            return [(GridClientProxy(node, grid, 0), ins) for node, ins in fitins.items()]

        def aggregate_fit(self, server_round, results, failures):
            for proxy, result in results:
                outcome.metrics[proxy.node_id] = dict(result.metrics)
            if results:  # every result carries the same unmasked weighted mean
                outcome.mean_delta = [np.asarray(a) for a in parameters_to_ndarrays(results[0][1].parameters)]
            return None, {}

        def configure_evaluate(self, server_round, parameters, client_manager):
            return []

        def aggregate_evaluate(self, server_round, results, failures):
            return None, {}

        def evaluate(self, server_round, parameters):
            return None

    return FitInsByNode()


class _MaskedVectors:
    """The grid, noting the masked vector each node sends (what the server receives of its update)."""

    def __init__(self, grid, outcome: SecureOutcome):
        self._grid = grid
        self._outcome = outcome

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            configs = None if reply.has_error() else reply.content.config_records.get(RECORD_KEY_CONFIGS)
            if configs is not None and Key.MASKED_PARAMETERS in configs:
                vectors = configs[Key.MASKED_PARAMETERS]
                self._outcome.masked[reply.metadata.src_node_id] = np.frombuffer(b"".join(vectors), np.uint8)
        return replies


def secure_round(grid, fitins: dict[int, FitIns], server_round: int, timeout: float) -> SecureOutcome:
    """Run Flower's ``SecAggPlusWorkflow`` for one round of the engine's loop (node id -> its FitIns)."""
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey

    outcome = SecureOutcome(None)
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            strategy=_legacy_strategy(fitins, outcome, grid))
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()  # unused: each FitIns carries the model
    workflow = SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=RECONSTRUCTION_THRESHOLD,
                                  max_weight=1.0, clipping_range=CLIPPING_RANGE, timeout=timeout)
    workflow(_MaskedVectors(grid, outcome), context)
    return outcome
