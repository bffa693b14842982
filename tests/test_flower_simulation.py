"""The same ServerApp and ClientApp under Flower's simulation runtime (Ray), started by ``flwr run``.

A ``--simulation`` SuperLink on a free port of 127.0.0.1 and ``flwr run . loopback``
on it with two virtual SuperNodes (the fewest that show each trains its own
partition): Flower runs the ClientApp in a Ray actor and the ServerApp over its
in-memory grid, with no code path of its own in the app.
"""

from __future__ import annotations

import pytest

NUM_SUPERNODES = 2
RUN_CONFIG = {"num-server-rounds": 1, "model": "mlp", "train-samples": 400, "test-samples": 200,
              "min-devices": NUM_SUPERNODES, "results-file": "rounds.jsonl"}


@pytest.mark.timeout(600)  # Ray on a loaded 2-core machine can take minutes to start
def test_the_app_runs_one_round_under_the_simulation_runtime(tmp_path, data_dir, fashion):
    import ray  # noqa: F401  # flwr[simulation]: fails loudly when the runtime is missing

    from engine.setup import build_devices
    from flower_app.config import federation_config
    from flower_app.processes import processes_tagged
    from flower_app.simulation import SimulationDeployment

    with SimulationDeployment(tmp_path, NUM_SUPERNODES, data_dir=data_dir) as simulation:
        outcome = simulation.run(RUN_CONFIG, timeout=540)
        simulation.stop()  # Ray's own processes may need its SIGKILL: checked below that none is left
    context = f"{outcome.output[-3000:]}\n{simulation.log('superlink')[-2000:]}"
    assert outcome.returncode == 0 and [r["round"] for r in outcome.rounds] == [1], context
    record = outcome.rounds[0]
    assert record["selected"] == list(range(NUM_SUPERNODES)) and record["problems"] == [], record
    devices = build_devices(fashion, federation_config(RUN_CONFIG, num_devices=NUM_SUPERNODES))
    assert {k: d["samples"] for k, d in record["devices"].items()} == {
        str(d.device_id): d.data.num_train for d in devices}  # each virtual node trained its own partition
    assert record["global_accuracy"] > 0.3  # chance is 0.1
    assert sum(map(sum, record["confusion"])) == RUN_CONFIG["test-samples"]
    assert processes_tagged(simulation.tag) == []
