"""Local training defaults that work for each model and task, without importing TensorFlow.

| model | task | optimizer | learning rate |
|---|---|---|---|
| linear | regression | SGD, no momentum | 0.2 |
| linear | classification | Adam | 0.05 |
| mlp | regression | Adam | 0.005 |
| mobilenetv2 | classification | Adam | 0.001 |
| anything else | | Adam | 0.002 |

A model file's ``DEFAULTS`` dict overrides these for that model.
"""

from __future__ import annotations

from dataclasses import dataclass


class ModelError(ValueError):
    """A model that cannot be built for this data; the message says why and what fits."""


def is_model_file(name: str) -> bool:
    return name.endswith(".py")


@dataclass(frozen=True)
class TrainingDefaults:
    """Local training settings that work for a model and task (used unless the user sets them)."""

    optimizer: str
    learning_rate: float
    momentum: float = 0.9
    why: str = ""


DEFAULTS = {
    ("linear", "regression"): TrainingDefaults("sgd", 0.2, 0.0, "plain gradient descent on the squared error"),
    ("linear", "classification"): TrainingDefaults("adam", 0.05, 0.9, "logistic regression"),
    ("mobilenetv2", "classification"): TrainingDefaults("adam", 0.001, 0.9, "a deep net from scratch"),
    ("mlp", "regression"): TrainingDefaults("adam", 0.005, 0.9, ""),
}
GENERAL_DEFAULTS = TrainingDefaults("adam", 0.002, 0.9, "fresh Adam per device and round")




def _user_model(path: str):
    from engine.models import load_model_file  # deferred: imports Keras and runs the user's file

    return load_model_file(path)


def describe_defaults() -> str:
    """The defaults table in one paragraph, for ``--help``."""
    rows = [f"{model} {task}: {d.optimizer} lr {d.learning_rate:g}" for (model, task), d in DEFAULTS.items()]
    return ("Training defaults per model and task (unless --optimizer/--lr are given): " + "; ".join(rows)
            + f"; otherwise {GENERAL_DEFAULTS.optimizer} lr {GENERAL_DEFAULTS.learning_rate:g}.")


def training_defaults(model: str, task: str) -> TrainingDefaults:
    """The optimizer and learning rate that work for ``model`` on ``task`` (see the README table)."""
    if is_model_file(model):
        user = _user_model(model)
        if user.defaults is not None:
            return user.defaults
    return DEFAULTS.get((model, task), GENERAL_DEFAULTS)


def model_task_problem(model: str, task: str) -> str | None:
    """Why ``model`` cannot learn ``task`` (None: it can)."""
    if model == "mobilenetv2" and task == "regression":
        return "MobileNetV2 here is a classifier; use linear, mlp or your own model for a regression"
    if is_model_file(model):
        declared = _user_model(model).task
        if declared is not None and declared != task:
            return f"model file {model} declares TASK = {declared!r}, but the data is a {task}"
    return None
