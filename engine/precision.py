"""Which precision devices train in: float32, or bfloat16 mixed precision where the CPU computes it natively.

``auto`` resolves once, at start, from the CPU flags (:mod:`engine.hardware`):
bfloat16 only where the CPU has AVX512-BF16 or AMX, because elsewhere
bfloat16 is emulated and slower than float32. Whatever the devices compute
in, their master weights, the updates they send, the server's model, the
aggregation and everything exported stay float32.
"""

from __future__ import annotations

from dataclasses import dataclass

PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # "float32" or "bfloat16"
    reason: str  # why, in words for the training note


def resolve_precision(requested: str, native_bf16: bool) -> PrecisionChoice:
    """The precision ``requested`` means on a CPU with (or without) native bfloat16."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "auto":
        if native_bf16:
            return PrecisionChoice("bfloat16", "auto: this CPU computes bfloat16 natively")
        return PrecisionChoice("float32", "auto: this CPU has no native bfloat16 (AVX512-BF16/AMX)")
    if requested == "bfloat16" and not native_bf16:
        return PrecisionChoice("bfloat16", "requested; this CPU emulates bfloat16, expect it to be slower")
    return PrecisionChoice(requested, "requested")


def precision_note(choice: PrecisionChoice) -> str:
    """A sentence for the CLI and dashboard, e.g. "Training in bfloat16 mixed precision (...)."."""
    if choice.precision == "bfloat16":
        return f"Training in bfloat16 mixed precision with float32 master weights ({choice.reason})."
    return f"Training in float32 ({choice.reason})."
