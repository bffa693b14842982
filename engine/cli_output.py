"""How the command line prints rounds and summaries: a table row per round, or one JSON object each."""

from __future__ import annotations

import math
import sys

from engine.results import RoundResult, Snapshot


def progress_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def finite(value: float | None) -> float | None:
    """``value``, or None where JSON has no number (NaN: no accuracy for a regression)."""
    return value if value is not None and math.isfinite(value) else None


def round_json(result: RoundResult) -> dict:
    return {
        "round": result.round,
        "global_accuracy": finite(result.global_accuracy),
        "global_loss": result.global_loss,
        "global_mae": result.global_mae,
        "global_r2": finite(result.global_r2),
        "seconds": result.seconds,
        "simulated_time": result.simulated_time,
        "test_samples": result.test_samples,
        "bytes_down": result.bytes_down,
        "bytes_up": result.bytes_up,
        "compression_ratio": result.compression_ratio,
        "epsilon": result.epsilon,
        "personalized_accuracy": result.personalized_accuracy,
        "device_global_accuracy": result.device_global_accuracy,
        "devices": [
            {"id": d.device_id, "samples": d.samples, "accuracy": finite(d.accuracy), "loss": d.loss,
             "train_accuracy": finite(d.train_accuracy), "train_loss": d.train_loss,
             "received_accuracy": finite(d.received_accuracy),
             "personalized_accuracy": finite(d.personalized_accuracy), "staleness": d.staleness}
            for d in result.devices
        ],
        "problems": [{"id": p.device_id, "kind": p.kind, "reason": p.reason} for p in result.problems],
    }


def summary_json(snapshot: Snapshot) -> dict:
    regression = bool(snapshot.history) and snapshot.history[-1].is_regression
    accuracies = [] if regression else [r.global_accuracy for r in snapshot.history]
    summary = {
        "summary": True,
        "status": snapshot.status.value,
        "rounds": snapshot.round,
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "seconds": snapshot.elapsed,
        "message": snapshot.message,
    }
    if regression:
        last = snapshot.history[-1]
        summary.update(final_mse=last.global_loss, final_mae=last.global_mae, final_r2=finite(last.global_r2))
    return summary


TABLE_HEADER = f"{'round':>5}  {'accuracy':>8}  {'loss':>7}  {'seconds':>7}  {'devices':>7}  device accuracy (min / mean / max)  problems"
REGRESSION_HEADER = (f"{'round':>5}  {'mse':>9}  {'mae':>8}  {'r2':>7}  {'seconds':>7}  {'devices':>7}  "
                     "device mse (min / mean / max)  problems")


def spread(values: list[float]) -> str:
    return f"{min(values):.3f} / {sum(values) / len(values):.3f} / {max(values):.3f}" if values else "-"


def round_row(result: RoundResult) -> str:
    problems = ", ".join(f"#{p.device_id} {p.kind}" for p in result.problems) or "-"
    epsilon = f"  epsilon {result.epsilon:.2f}" if result.epsilon is not None else ""
    if result.personalized_accuracy is not None:  # --personalize: on the devices' own held-out data
        epsilon += (f"  personalised {result.personalized_accuracy:.4f} vs global "
                    f"{result.device_global_accuracy or float('nan'):.4f} on devices")
    if result.is_regression:
        losses = [d.loss for d in result.devices]
        return (f"{result.round:>5}  {result.global_loss:>9.4f}  {result.global_mae:>8.4f}  {result.global_r2:>7.4f}  "
                f"{result.seconds:>7.2f}  {len(result.devices):>7}  {spread(losses):<29}  {problems}{epsilon}")
    accs = spread([d.accuracy for d in result.devices])
    return (f"{result.round:>5}  {result.global_accuracy:>8.4f}  {result.global_loss:>7.4f}  "
            f"{result.seconds:>7.2f}  {len(result.devices):>7}  {accs:<34}  {problems}{epsilon}")
