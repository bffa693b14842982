"""Evaluation metrics as plain functions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs, shape (classes, classes)."""
    flat = np.asarray(y_true, np.int64) * num_classes + np.asarray(y_pred, np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Recall of each class; NaN for classes absent from the test set."""
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(confusion) / totals, np.nan)


@dataclass(frozen=True)
class RegressionScores:
    """How well predicted values match the true ones."""

    mse: float
    mae: float
    r2: float  # 1 - SSE / SST; NaN when the true values are all equal


def regression_scores(y_true: np.ndarray, y_pred: np.ndarray) -> RegressionScores:
    """Mean squared error, mean absolute error and the coefficient of determination R²."""
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    error = y_pred - y_true
    total = float(np.sum((y_true - y_true.mean()) ** 2)) if len(y_true) else 0.0
    r2 = 1.0 - float(np.sum(error**2)) / total if total > 0 else float("nan")
    return RegressionScores(float(np.mean(error**2)), float(np.mean(np.abs(error))), r2)
