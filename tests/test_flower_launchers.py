"""The launchers that make Flower rounds fast: argument handling of the SuperNode and worker scripts."""

from __future__ import annotations

import importlib.util
import time

import pytest

from flower_app.loopback import PROJECT_ROOT
from flower_app.polling import poll_seconds


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", PROJECT_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_supernode_launcher_takes_its_option_and_passes_the_rest_to_flower():
    launcher = load_script("supernode")
    seconds, rest = launcher.split_argv(["--superlink", "h:1", "--fleet-poll-interval", "0.2", "--insecure"])
    assert seconds == 0.2 and rest == ["--superlink", "h:1", "--insecure"]
    assert launcher.split_argv(["--fleet-poll-interval=0.05"]) == (0.05, [])
    assert launcher.split_argv([]) == (launcher.DEFAULT_SECONDS, [])
    with pytest.raises(SystemExit, match="fleet-poll-interval"):
        launcher.split_argv(["--fleet-poll-interval", "5"])
    capped = launcher.capped_time(0.01)
    started = time.perf_counter()
    capped.sleep(3)  # Flower's 3 s wait, capped
    assert time.perf_counter() - started < 1 and capped.time is time.time


def test_worker_options_are_checked():
    worker = load_script("clientapp_worker")
    args = worker.parse_args(["--runtime-api-address", "127.0.0.1:9094", "--insecure"])
    assert args.poll_interval == 0.05 and args.token is None
    with pytest.raises(SystemExit):
        worker.parse_args(["--runtime-api-address", "127.0.0.1:9094", "--poll-interval", "0"])


def test_server_poll_interval_comes_from_the_environment():
    assert poll_seconds({}) == 0.05 and poll_seconds({"FL_FLOWER_POLL_SECONDS": "0.5"}) == 0.5
    with pytest.raises(ValueError, match="FL_FLOWER_POLL_SECONDS"):
        poll_seconds({"FL_FLOWER_POLL_SECONDS": "soon"})
