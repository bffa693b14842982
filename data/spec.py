"""What a data set is and how its samples were prepared: stored next to every model so predictions match.

:class:`Preprocessing` is plain data (JSON round-trip): the kind of input
(``idx`` built-in grey 28x28 sets, ``image`` folders, ``tabular`` CSV rows,
``array`` .npz), the image side and colour mode, the feature columns with the
standardisation statistics and one-hot categories, the task and class names.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

TASKS = ("classification", "regression")


@dataclass(frozen=True)
class Preprocessing:
    """How raw inputs become model inputs, for training, prediction and export alike."""

    kind: str = "idx"  # idx | image | tabular | array
    task: str = "classification"
    class_names: tuple[str, ...] = ()
    image_size: int | None = 28
    color: str = "grey"  # grey | rgb (images)
    target: str | None = None  # tabular: the target column
    feature_names: tuple[str, ...] = ()  # tabular: model inputs, after one-hot encoding
    numeric_columns: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()  # per numeric column, on the training split
    std: tuple[float, ...] = ()
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)  # text column -> its one-hot values
    note: str = ""  # one sentence a user can read
    input_shape: tuple[int, ...] = (28, 28, 1)  # the model's input (set when training starts)

    @property
    def channels(self) -> int:
        return 3 if self.color == "rgb" else 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Preprocessing":
        raw = json.loads(text)
        raw["categories"] = {k: tuple(v) for k, v in raw.get("categories", {}).items()}
        for key in ("class_names", "feature_names", "numeric_columns", "mean", "std", "input_shape"):
            raw[key] = tuple(raw.get(key, ()))
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


BUILTIN_GREY = Preprocessing(note="28x28 grey images scaled to [0, 1]")

COLOR_MODES = ("auto", "rgb", "grey")
TASK_CHOICES = ("auto", *TASKS)


@dataclass(frozen=True)
class SourceOptions:
    """How to read a data source given by path (ignored by the built-in sets).

    ``image_size`` None: the median image side, capped at 64. ``test_fraction``
    is the seeded, stratified share held out as the server's test set when the
    source has no test split of its own.
    """

    image_size: int | None = None
    color: str = "auto"
    target: str | None = None
    task: str = "auto"
    device_column: str | None = None
    test_fraction: float = 0.2
    seed: int = 0
