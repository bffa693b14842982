"""Settings declared once: the CLI, validation, env defaults, Flower run config and dashboard keys generated from them.

Bad options are run through the CLI's ``main`` in-process (the same parser and
checks as ``python -m engine``, which tests/test_cli.py runs as a subprocess):
each must exit 2 with exactly one line on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields

import pytest

from app.defaults import default_config, env_variables
from app.setup_helpers import widget_key, widget_values
from engine.cli import build_parser, config_from_args, main
from engine.cli_options import add_setting_options, flag_of, setting_values
from engine.config import FederationConfig
from engine.settings import AT_LEAST_ONE, POSITIVE, Bounds, declared_settings, kinds, parse_setting, setting
from engine.strategies import STRATEGIES
from flower_app.config import NOT_IN_RUN_CONFIG, RUN_DEFAULTS, federation_config, run_keys
from flower_app.backend import run_config_for

BAD_OPTIONS = [
    (["--devices", "0"], "Number of devices must be >= 1"),
    (["--devices", "1000000000"], "1000000000 devices need at least as many training samples"),
    (["--devices", "3", "--train-samples", "2"], "3 devices need at least as many training samples"),
    (["--seed", "-1"], "Random seed must be in [0, 4294967295]"),
    (["--seed", "1e23"], "expected a whole number, got '1e23'"),
    (["--seed", "99999999999"], "Random seed must be in [0, 4294967295]"),
    (["--noise", "inf"], "must be a finite number, got inf"),
    (["--lr", "nan"], "Learning rate must be a finite number"),
    (["--lr", "abc"], "expected a number, got 'abc'"),
    (["--lr", "0"], "Learning rate must be > 0"),
    (["--clip", "-1"], "Clipping norm must be > 0"),
    (["--deadline", "nan"], "must be a finite number"),
    (["--noise", "1"], "needs a clipping norm"),
    (["--dp-delta", "1"], "DP delta must be in (0, 1)"),
    (["--fraction", "0"], "must be in (0, 1]"),
    (["--momentum", "1"], "Momentum must be in [0, 1)"),
    (["--local-test-fraction", "1"], "Local test share must be in [0, 1)"),
    (["--topk-fraction", "0"], "Top-k fraction kept must be in (0, 1]"),
    (["--rounds", "-1"], "Rounds must be >= 1"),
    (["--rounds", "abc"], "expected a whole number"),
    (["--batch-size", "0"], "Batch size must be >= 1"),
    (["--workers", "0"], "must be >= 1"),
    (["--train-samples", "-5"], "must be >= 1"),
    (["--partition", "zigzag"], "must be one of iid, dirichlet, shards, quantity"),
    (["--dataset", "cifar"], "is neither a built-in name (fashion-mnist, mnist)"),
    (["--compression", "zip"], "must be one of none, q8"),
    (["--model", "resnet"], "model must be one of cnn, mlp"),
    (["--strategy", "fedfoo"], "must be one of fedavg"),
    (["--strategy-param", "mu"], "expected NAME=VALUE"),
    (["--strategy-param", "nope=1"], "no parameter nope"),
    (["--fault", "x"], "expected DEVICE=FAULT"),
    (["--fault", "1=bogus"], "fault 'bogus' must be one of"),
    (["--fault", "99=nan"], "device 99, which does not exist"),
    (["--slowdown", "1=inf"], "slowdown must be a positive number"),
    (["--slowdown", "1=abc"], "expected DEVICE=FACTOR"),
    (["--partition", "shards", "--devices", "100", "--shards-per-device", "100", "--train-samples", "5000"],
     "more shards than training samples"),
    (["--xla=1"], "ignored explicit argument"),
    (["--bogus"], "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize("args, message", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_each_bad_option_exits_2_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["run", *args])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ") and lines[0].endswith("(see python -m engine run --help)")
    assert message in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_a_missing_command_is_one_line_too(capsys):
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: the following arguments are required: COMMAND (see python -m engine --help)"]


def test_help_shows_each_default_once(capsys):
    for command in ("export", "run", "resume"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: None)" not in text and "(default: [])" not in text
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.count("(default: the last completed round)") == 1


# -- generated from the declarations ---------------------------------------------------------------
def run_options() -> dict[str, argparse.Action]:
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    return {action.dest: action for action in run._actions}


def test_every_declared_field_has_a_cli_option_env_variable_run_config_key_and_widget():
    options, variables, keys = run_options(), set(env_variables().values()), run_keys()
    widgets = widget_values(FederationConfig(), {})
    config_kinds = kinds(FederationConfig)
    for f, spec in declared_settings(FederationConfig):
        assert flag_of(f, spec) in options[f.name].option_strings
        assert options[f.name].help.startswith(spec.help), f.name
        if not config_kinds[f.name].collection:
            assert f.name in variables, f.name
        assert f.name in keys or f.name in NOT_IN_RUN_CONFIG, f.name
        assert widget_key(f.name) in widgets or f.name in ("rounds", "round_deadline", "clip_norm", "faults",
                                                            "slowdowns", "strategy_params"), f.name
    assert {field.name for field in fields(FederationConfig)} == {f.name for f, _ in
                                                                  declared_settings(FederationConfig)}


def test_existing_names_are_kept():
    options = run_options()
    for dest, flag in {"num_devices": "--devices", "learning_rate": "--lr", "clip_norm": "--clip",
                       "noise_multiplier": "--noise", "local_noise_multiplier": "--local-noise",
                       "round_deadline": "--deadline", "faults": "--fault", "slowdowns": "--slowdown",
                       "strategy_params": "--strategy-param", "xla": "--xla",
                       "secure_aggregation": "--secure-aggregation"}.items():
        assert flag in options[dest].option_strings
    for name in ("fedprox", "proximal_mu=0.01", "fedtrimmedavg"):
        assert name in options["strategy"].help  # each strategy's parameters stay listed
    assert {"num-server-rounds", "learning-rate", "min-devices", "strategy-params", "faults", "results-file",
            "wait-timeout", "round-timeout", "deactivated-file"} <= set(RUN_DEFAULTS)
    assert {"FL_DEFAULT_DEVICES", "FL_DEFAULT_LEARNING_RATE", "FL_DEFAULT_ROUNDS", "FL_DEFAULT_SEED"} \
        <= set(env_variables())


UNUSUAL = FederationConfig(
    dataset="mnist", data_dir="/data", train_samples=1200, test_samples=300, local_test_fraction=0.2, num_devices=4,
    partition="dirichlet", alpha=0.3, shards_per_device=3, quantity_alpha=0.7, model="mlp", strategy="fedprox",
    strategy_params={"proximal_mu": 0.05}, rounds=7, local_epochs=2, batch_size=16, learning_rate=0.01,
    optimizer="sgd", momentum=0.5, optimizer_state="kept", min_devices=2, fraction=0.5, seed=5, workers=3, stack_width=2, xla=True,
    faults={1: "nan", 3: "crash"}, slowdowns={0: 2.5}, dropout=0.1, round_deadline=4.0, clip_norm=1.5,
    noise_multiplier=0.3, local_noise_multiplier=0.2, dp_delta=1e-6, secure_aggregation=True, compression="q8",
    topk_fraction=0.2, tensorboard="/tmp/tb", precision="bfloat16", eval_samples=100, full_eval_every=2,
    image_size=20, color="grey", target="label", task="classification", device_column="site", model_weights="/w.h5",
    personalize="ditto", finetune_steps=5, ditto_lambda=0.5,
)


def test_every_field_differs_from_its_default_in_the_round_trip_config():
    default = FederationConfig()
    assert [f.name for f in fields(FederationConfig) if getattr(UNUSUAL, f.name) == getattr(default, f.name)] == []
    assert UNUSUAL.problems() == []


def test_config_to_run_config_to_config_is_the_identity():
    assert federation_config(run_config_for(UNUSUAL), UNUSUAL.num_devices, UNUSUAL.data_dir) == UNUSUAL
    until_stopped = UNUSUAL.with_changes(rounds=None, clip_norm=None, round_deadline=None, noise_multiplier=0.0,
                                         local_noise_multiplier=0.0, train_samples=None)
    assert federation_config(run_config_for(until_stopped), 4, "/data") == until_stopped
    text_values = {key: str(value) for key, value in run_config_for(UNUSUAL).items()}  # --run-config 'k=v' strings
    assert federation_config(text_values, 4, "/data") == UNUSUAL


def argv_for(config: FederationConfig) -> list[str]:
    """``config`` written as ``run`` options, from the declarations."""
    argv, config_kinds = ["run"], kinds(FederationConfig)
    for f, spec in declared_settings(FederationConfig):
        value, kind = getattr(config, f.name), config_kinds[f.name]
        if kind.base is bool:
            argv += [flag_of(f, spec)] if value else []
        elif kind.base is dict:
            for key, item in value.items():
                argv += [flag_of(f, spec), f"{key}={item}"]
        else:
            argv += [flag_of(f, spec), str(kind.plain(value))]
    return argv


def test_config_to_cli_options_to_config_is_the_identity():
    assert config_from_args(build_parser().parse_args(argv_for(UNUSUAL))) == UNUSUAL
    assert config_from_args(build_parser().parse_args(["run"])) == FederationConfig()
    none = UNUSUAL.with_changes(rounds=None, train_samples=None, test_samples=None, data_dir=None)
    assert config_from_args(build_parser().parse_args(argv_for(none))) == none


def test_env_defaults_are_parsed_and_checked_like_the_cli():
    env = {"FL_DEFAULT_DEVICES": "4", "FL_DEFAULT_ROUNDS": "0", "FL_DEFAULT_TRAIN_SAMPLES": "2000",
           "FL_DEFAULT_CLIP_NORM": "1.5", "FL_DEFAULT_XLA": "yes", "FL_DEFAULT_PARTITION": "shards",
           "FL_DEFAULT_LEARNING_RATE": "nan", "FL_DEFAULT_SEED": "-1", "FL_DEFAULT_OPTIMIZER": "rmsprop"}
    config, warnings = default_config(env)
    assert (config.num_devices, config.rounds, config.train_samples, config.clip_norm, config.xla,
            config.partition) == (4, None, 2000, 1.5, True, "shards")
    assert (config.learning_rate, config.seed, config.optimizer) == (0.002, 0, "adam")  # ignored
    assert len(warnings) == 3 and all(w.startswith("Ignored FL_DEFAULT_") for w in warnings)
    assert "Learning rate must be a finite number" in " ".join(warnings)
    assert default_config({"FL_DEFAULT_NUM_DEVICES": "6"})[0].num_devices == 6  # the generated name works too


def test_text_forms_of_the_kinds():
    config_kinds = kinds(FederationConfig)
    assert [config_kinds["rounds"].parse(t) for t in ("0", "inf", "unlimited", "7")] == [None, None, None, 7]
    assert config_kinds["clip_norm"].parse("0") is None and config_kinds["noise_multiplier"].parse("0") == 0.0
    assert config_kinds["faults"].parse("2=nan, 3=crash") == {2: "nan", 3: "crash"}
    assert config_kinds["faults"].plain({3: "crash", 2: "nan"}) == "2=nan,3=crash"
    assert config_kinds["xla"].from_plain(True) is True and config_kinds["xla"].parse("off") is False
    with pytest.raises(ValueError, match="whole number"):
        config_kinds["seed"].from_plain(2.5)
    with pytest.raises(ValueError, match="true or false"):
        config_kinds["xla"].from_plain(1)
    with pytest.raises(ValueError, match="finite"):
        parse_setting(FederationConfig, "noise_multiplier", "-inf")


def test_non_finite_values_are_problems_wherever_they_come_from():
    for name in ("learning_rate", "noise_multiplier", "alpha", "dropout", "dp_delta"):
        for bad in (math.nan, math.inf):
            assert any("finite" in p for p in FederationConfig(**{name: bad}).problems()), name
    assert any("whole number" in p for p in FederationConfig(num_devices=2.5).problems())
    assert any("must be set" in p for p in FederationConfig(num_devices=None).problems())


# -- a new declared field needs no code anywhere --------------------------------------------------
@dataclass(frozen=True)
class Dummy:
    count: int = setting(3, group="alpha", label="Count", bounds=AT_LEAST_ONE, help="how many")
    limit: int | None = setting(None, group="alpha", bounds=AT_LEAST_ONE, help="a limit (0: none)")
    ratio: float = setting(0.5, group="beta", bounds=Bounds(0.0, 1.0), flag="--share", help="a share")
    cutoff: float | None = setting(None, group="beta", bounds=POSITIVE, help="optional cutoff")
    mode: str = setting("a", group="beta", choices=("a", "b"), help="a mode")
    name: str | None = setting(None, group="beta", help="a name")
    fast: bool = setting(False, group="gamma", help="go fast")
    safe: bool = setting(True, group="gamma", help="stay safe")
    weights: dict[int, float] = setting(default_factory=dict, group="gamma", metavar="ID=WEIGHT", help="weights")
    ids: tuple[int, ...] = setting((1, 2), group="gamma", help="device ids")


def test_a_new_dataclass_gets_options_types_checks_and_env_names_without_code(capsys):
    parser = argparse.ArgumentParser()
    add_setting_options(parser, Dummy)
    args = parser.parse_args(["--count", "4", "--limit", "0", "--share", "0.25", "--cutoff", "2", "--mode", "b",
                              "--name", "x", "--fast", "--no-safe", "--weights", "1=0.5", "--weights", "2=2",
                              "--ids", "3,4 5"])
    assert Dummy(**setting_values(args, Dummy)) == Dummy(4, None, 0.25, 2.0, "b", "x", True, False, {1: 0.5, 2: 2.0},
                                                         (3, 4, 5))
    assert Dummy(**setting_values(parser.parse_args([]), Dummy)) == Dummy()
    groups = [group.title for group in parser._action_groups]
    assert {"alpha", "beta", "gamma"} <= set(groups)
    for bad in (["--count", "0"], ["--share", "1"], ["--mode", "c"], ["--weights", "x"], ["--cutoff", "nan"],
                ["--ids", "1,x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    assert "ID=WEIGHT" in capsys.readouterr().err
    assert set(env_variables(Dummy)) == {"FL_DEFAULT_COUNT", "FL_DEFAULT_LIMIT", "FL_DEFAULT_RATIO",
                                         "FL_DEFAULT_CUTOFF", "FL_DEFAULT_MODE", "FL_DEFAULT_NAME",
                                         "FL_DEFAULT_FAST", "FL_DEFAULT_SAFE"}
    assert parse_setting(Dummy, "limit", "all") is None and parse_setting(Dummy, "safe", "no") is False
    assert kinds(Dummy)["ids"].plain((3, 4)) == "3,4" and kinds(Dummy)["ids"].from_plain("3,4") == (3, 4)


def test_strategy_parameters_keep_their_own_declarations():
    # strategy hyper-parameters are validated by the strategy classes (the same Bounds), not by FederationConfig
    assert all(cls.parameters() is not None for cls in STRATEGIES.values())
    assert FederationConfig(strategy="fedprox", strategy_params={"proximal_mu": -1}).problems()


def render_dummy_setup():
    """A setup panel of :class:`Dummy` fields, each drawn by the dashboard's generic widget (AppTest script)."""
    import streamlit as st

    from app.setup_widgets import setting_widget
    from engine.settings import declared_settings
    from tests.test_settings import Dummy

    values = {f.name: setting_widget(st, f.name, f.default_factory() if callable(f.default_factory) else f.default,
                                     cls=Dummy) for f, _ in declared_settings(Dummy)}
    st.write(repr(Dummy(**values)))


def test_a_new_declared_field_gets_a_dashboard_widget_without_code():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(render_dummy_setup, default_timeout=60).run()
    assert not at.exception
    assert at.number_input(key="setup_count").min == 1 and at.number_input(key="setup_count").label == "Count"
    assert at.number_input(key="setup_limit").value == 0  # an unset count shows 0
    assert (at.number_input(key="setup_ratio").min, at.number_input(key="setup_ratio").max) == (0.0, 1.0)
    assert at.selectbox(key="setup_mode").options == ["a", "b"] and at.checkbox(key="setup_safe").value
    assert at.text_input(key="setup_ids").value == "1,2"
    at.number_input(key="setup_limit").set_value(7)
    at.selectbox(key="setup_mode").set_value("b")
    at.text_input(key="setup_weights").set_value("1=0.5").run()
    assert at.markdown[-1].value == repr(Dummy(limit=7, mode="b", weights={1: 0.5}))


def test_the_project_installs_its_commands_and_only_its_packages():
    import importlib
    import tomllib

    from tests.conftest import PROJECT_ROOT

    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    scripts = project["project"]["scripts"]
    assert set(scripts) == {"fl-watch", "fl-watch-predict"}
    for target in scripts.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {name.split(".")[0] for name in include} == {"app", "engine", "devices", "data", "flower_app"}
    assert project["build-system"]["build-backend"] == "setuptools.build_meta"
