"""Learning quality of the CLI defaults, run exactly as a user runs the CLI.

1. CNN, 10 IID devices, 1 local epoch, batch 32, 5 rounds: target >= 0.87.
2. The same with ``--partition dirichlet --alpha 0.5``: must learn, and the
   per-device accuracies must differ visibly.

    FL_DATA_DIR=../shared/datasets python -m benchmarks.learning_quality
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

RUNS = {
    "iid": ["--partition", "iid"],
    "dirichlet-0.5": ["--partition", "dirichlet", "--alpha", "0.5"],
}
COMMON = ["run", "--model", "cnn", "--devices", "10", "--rounds", "5", "--local-epochs", "1", "--batch-size", "32",
          "--json"]


def main() -> None:
    summary = {}
    for name, extra in RUNS.items():
        output = subprocess.run(
            [sys.executable, "-m", "engine", *COMMON, *extra],
            capture_output=True, text=True, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        ).stdout
        rounds = [json.loads(line) for line in output.splitlines()][:-1]
        device_accuracies = [d["accuracy"] for d in rounds[-1]["devices"]]
        summary[name] = {
            "accuracy_per_round": [round(r["global_accuracy"], 4) for r in rounds],
            "device_accuracy_min": round(min(device_accuracies), 4),
            "device_accuracy_max": round(max(device_accuracies), 4),
            "seconds_per_round": round(sum(r["seconds"] for r in rounds) / len(rounds), 2),
        }
        print(f"{name:>14}: accuracy by round {summary[name]['accuracy_per_round']}, device accuracy "
              f"{summary[name]['device_accuracy_min']}..{summary[name]['device_accuracy_max']}", flush=True)
    print(json.dumps({"benchmark": "learning_quality", **summary}))


if __name__ == "__main__":
    main()
