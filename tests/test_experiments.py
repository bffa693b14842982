"""Experiment files: --config run.toml, runs --show (round trip), sweeps, TensorBoard event files."""

from __future__ import annotations

import io
import json
import tomllib

import pytest

from engine.cli import main as cli_main
from engine.config import ConfigError, FederationConfig
from engine.experiments import config_to_toml, config_values, load_config
from engine.store import RunStore


def test_every_field_round_trips_through_toml(tmp_path):
    config = FederationConfig(model="mlp", num_devices=7, rounds=None, strategy="krum", strategy_params={"f": 2.0},
                              faults={3: "scale", 5: "crash"}, slowdowns={1: 2.5}, round_deadline=4.0,
                              data_dir="/data/it's \"here\"", xla=True, train_samples=700)
    text = config_to_toml(config, header="a run\nof mine")
    assert text.startswith("# a run\n# of mine\n") and "rounds = 0  # until stopped" in text
    assert 'faults = { 3 = "scale", 5 = "crash" }' in text and "# clip_norm is not set" in text
    path = tmp_path / "run.toml"
    path.write_text(text)
    assert load_config(path) == config
    assert load_config(path).problems() == []


def test_unknown_settings_and_wrong_types_are_named():
    with pytest.raises(ConfigError) as error:
        config_values({"num_devices": "ten", "devices": 3, "faults": {"x": "nan"}, "xla": 1}, "run.toml")
    problems = error.value.problems
    assert problems[0].startswith("run.toml: unknown setting(s) devices; settings are the FederationConfig fields:")
    assert "run.toml: num_devices must be a whole number, got 'ten'" in problems
    assert "run.toml: xla must be true or false, got 1" in problems
    assert "run.toml: faults must be keyed by device number, got ['x']" in problems
    assert config_values({"learning_rate": 1, "rounds": 0}) == {"learning_rate": 1, "rounds": None}


def test_bad_config_files_exit_2_with_one_line(tmp_path, capsys):
    broken = tmp_path / "broken.toml"
    broken.write_text("num_devices = = 3")
    for path, message in [(broken, "is not valid TOML"), (tmp_path / "none.toml", "does not exist")]:
        with pytest.raises(SystemExit) as exited:
            cli_main(["run", "--config", str(path)])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_cli_options_override_the_file_and_runs_show_prints_a_config_that_run_accepts(data_dir, tmp_path):
    runs = str(tmp_path / "runs")
    path = tmp_path / "run.toml"
    path.write_text('model = "mlp"\nnum_devices = 3\nrounds = 3\ntrain_samples = 600\ntest_samples = 200\n'
                    'strategy = "fedprox"\nstrategy_params = { proximal_mu = 0.1 }\nfaults = { 2 = "nan" }\n')
    out = io.StringIO()
    assert cli_main(["run", "--config", str(path), "--rounds", "1", "--seed", "4", "--json",
                     "--runs-dir", runs], out=out) == 0
    summary = json.loads(out.getvalue().splitlines()[-1])
    stored = RunStore(runs).load_config(summary["run_id"])
    assert (stored.rounds, stored.seed, stored.num_devices, stored.strategy_params, stored.faults) == (
        1, 4, 3, {"proximal_mu": 0.1}, {2: "nan"})
    shown = io.StringIO()
    assert cli_main(["runs", "--show", summary["run_id"], "--runs-dir", runs], out=shown) == 0
    tomllib.loads(shown.getvalue())  # valid TOML
    again = tmp_path / "again.toml"
    again.write_text(shown.getvalue())
    assert load_config(again) == stored


def test_a_sweep_runs_the_grid_records_every_run_and_prints_the_table(data_dir, tmp_path, capsys):
    runs = str(tmp_path / "runs")
    path = tmp_path / "sweep.toml"
    path.write_text('target = 0.5\n[base]\nmodel = "mlp"\nnum_devices = 3\nrounds = 1\ntrain_samples = 600\n'
                    'test_samples = 200\n[grid]\nstrategy = ["fedavg", "fedmedian"]\nlocal_epochs = [1, 2]\n')
    out = io.StringIO()
    assert cli_main(["sweep", str(path), "--runs-dir", runs], out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["run", "id", "strategy", "local_epochs", "final", "best", "to", "0.5", "MB",
                                "epsilon"]
    assert [line.split()[1:3] for line in lines[1:]] == [["fedavg", "1"], ["fedavg", "2"], ["fedmedian", "1"],
                                                          ["fedmedian", "2"]]
    stored = RunStore(runs).list_runs()
    assert len(stored) == 4 and {r.label for r in stored} >= {"sweep strategy=fedmedian local_epochs=2"}
    assert {line.split()[0] for line in lines[1:]} == {r.run_id for r in stored}


def test_an_impossible_sweep_point_stops_the_sweep_before_anything_runs(tmp_path, capsys):
    path = tmp_path / "sweep.toml"
    path.write_text('[base]\nnum_devices = 4\n[grid]\nstrategy = ["fedavg", "bulyan"]\n')
    with pytest.raises(SystemExit) as exited:
        cli_main(["sweep", str(path), "--no-save"])
    assert exited.value.code == 2
    assert "(strategy=bulyan): bulyan with f=1 needs at least 4f+3" in capsys.readouterr().err


def test_tensorboard_event_files_hold_the_round_scalars(data_dir, tmp_path):
    import tensorflow as tf

    out = io.StringIO()
    assert cli_main(["run", "--model", "mlp", "--devices", "3", "--train-samples", "600", "--test-samples", "200",
                     "--rounds", "2", "--clip", "1", "--local-noise", "0.5", "--tensorboard", str(tmp_path / "tb"),
                     "--json", "--runs-dir", str(tmp_path / "runs")], out=out) == 0
    run_id = json.loads(out.getvalue().splitlines()[-1])["run_id"]
    files = list((tmp_path / "tb" / run_id).glob("events.out.tfevents.*"))
    assert len(files) == 1
    scalars: dict[str, dict[int, float]] = {}
    for event in tf.compat.v1.train.summary_iterator(str(files[0])):
        for value in event.summary.value:
            scalars.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    rounds = [json.loads(line) for line in out.getvalue().splitlines()[:-1]]
    for tag in ("global/accuracy", "bytes/up", "bytes/down", "privacy/epsilon", "device/0/accuracy",
                "device/2/loss"):
        assert set(scalars[tag]) == {1, 2}, tag
    assert scalars["global/accuracy"][2] == pytest.approx(rounds[1]["global_accuracy"])
    assert scalars["privacy/epsilon"][2] == pytest.approx(rounds[1]["epsilon"]) and rounds[1]["epsilon"] > 0
    assert scalars["bytes/up"][1] == rounds[0]["bytes_up"]


def test_a_config_file_leaves_the_model_dependent_defaults_to_the_model(tmp_path):
    from engine.cli import build_parser, with_config_file

    path = tmp_path / "run.toml"
    path.write_text('model = "linear"\nrounds = 3\n')
    parser = build_parser()
    argv = ["run", "--config", str(path)]
    from_file = with_config_file(parser, parser.parse_args(argv), argv)
    plain = parser.parse_args(["run", "--model", "linear", "--rounds", "3"])
    assert (from_file.model, from_file.rounds) == ("linear", 3)
    for name in ("optimizer", "learning_rate", "momentum"):  # unset in the file: the model's own default applies
        assert getattr(from_file, name) == getattr(plain, name), name
