"""``engine.predict`` for models of one's own data: inputs prepared with the preprocessing stored next to
the model (colour images of the model's size, or CSV rows standardised with the training statistics)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from data.errors import DataError
from data.prepare import describe_output, image_input, table_input
from data.spec import Preprocessing


def predict_files(classifier, spec: Preprocessing, files: Sequence[str], top: int) -> list[dict]:
    """One result per image file, or per row of each CSV file (tabular models): predictions or an error."""
    results: list[dict] = []
    for name in files:
        try:
            data = Path(name).read_bytes()
            if spec.kind == "tabular":
                inputs = table_input(data, spec)
                labels = [f"{name}:{row + 2}" for row in range(len(inputs))]  # line numbers after the header
            else:
                inputs, labels = image_input(data, spec)[None], [name]
        except (DataError, OSError) as error:
            results.append({"file": name, "error": str(error)})
            continue
        outputs = np.asarray(classifier.predict(inputs))
        results += [{"file": label, **row} for label, row in zip(labels, describe_output(outputs, spec, top))]
    return results


def result_line(result: dict) -> str:
    if "value" in result:
        return f"{result['file']}: {result['value']:.6g}"
    shown = ", ".join(f"{p['class']} ({p['probability']:.3f})" for p in result["predictions"])
    return f"{result['file']}: {shown}"
