"""``python -m flower_app.loopback``: one loopback Flower run and the same workload in-process, seconds per round.

The Flower run goes through ``flwr run`` on a :class:`flower_app.loopback.LocalDeployment`
(a SuperLink and N SuperNodes on 127.0.0.1, TLS and SuperNode authentication unless
``--insecure``); :func:`in_process_rounds` runs its run config on the in-process engine.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Mapping

from flower_app.loopback import ISOLATION_MODES, LocalDeployment


def in_process_rounds(
    run_config: Mapping[str, object], num_devices: int, data_dir: str | None, workers: int | None = None
) -> list[dict]:
    """The same workload on the in-process engine (``workers`` threads; None: the engine's default)."""
    from engine.federation import Federation
    from flower_app.config import federation_config

    config = federation_config(run_config, num_devices=num_devices, data_dir=data_dir)
    if workers is not None:
        config = config.with_changes(workers=workers)
    snapshot = Federation(config).run_to_end()
    return [{"round": r.round, "global_accuracy": r.global_accuracy, "seconds": r.seconds,
             "train_seconds": r.train_seconds} for r in snapshot.history]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flower_app.loopback",
        description="Run the Flower app on a SuperLink and N SuperNodes on 127.0.0.1, "
                    "then the same workload in-process, and print seconds per round.",
    )
    parser.add_argument("--supernodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-samples", type=int, default=3000)
    parser.add_argument("--test-samples", type=int, default=1000)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--workdir", default=None, help="default: a new folder under /tmp")
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument("--insecure", action="store_true",
                        help="no TLS and no SuperNode authentication (quick local tries only)")
    parser.add_argument("--isolation", choices=ISOLATION_MODES, default="process",
                        help="process (default): one long-lived ClientApp worker per SuperNode; "
                             "subprocess: Flower's default, a new ClientApp process per message")
    args = parser.parse_args(argv)

    import tempfile

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="flower-loopback-"))
    run_config = {
        "num-server-rounds": args.rounds, "model": args.model, "train-samples": args.train_samples,
        "test-samples": args.test_samples, "min-devices": args.supernodes,
        "results-file": "rounds.jsonl",  # inside the deployment's output folder
    }
    with LocalDeployment(workdir, args.supernodes, secure=not args.insecure, isolation=args.isolation) as deployment:
        outcome = deployment.run(run_config)
        left = deployment.stop()
    if outcome.returncode != 0 or len(outcome.rounds) != args.rounds:
        print(outcome.output[-4000:], file=sys.stderr)
        print(f"Flower run failed; logs in {workdir}", file=sys.stderr)
        return 1
    print(f"Flower, {args.supernodes} SuperNodes on 127.0.0.1 ({outcome.seconds:.1f} s for `flwr run`, "
          f"{len(left)} leftover processes):")
    for r in outcome.rounds:
        setup = [d.get("setup_seconds") or 0.0 for d in r["devices"].values()]
        train = [d["seconds"] for d in r["devices"].values()]
        print(f"  round {r['round']}: accuracy {r['global_accuracy']:.4f}, {r['seconds']:.2f} s "
              f"(per device: ClientApp start-up {min(setup):.1f}-{max(setup):.1f} s, "
              f"local training {min(train):.2f}-{max(train):.2f} s)")
    if not args.skip_in_process:
        for workers in (1, args.supernodes):
            print(f"In-process engine, {args.supernodes} devices, {workers} worker thread(s):")
            for r in in_process_rounds(run_config, args.supernodes, os.environ.get("FL_DATA_DIR"), workers):
                print(f"  round {r['round']}: accuracy {r['global_accuracy']:.4f}, {r['seconds']:.2f} s")
    return 0


