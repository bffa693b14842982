"""What this CPU can do, read from ``/proc/cpuinfo``: its model name and the vector units that matter for training.

Pure parsing functions over the text, so they are tested on sample text; the
one function that reads the file falls back to "unknown, no flags" where there
is no ``/proc/cpuinfo`` (macOS, Windows), which means float32 everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# the flags that decide how fast Keras trains here: AVX-512 for float32, AVX512-BF16 / AMX for bfloat16
RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]
    cores: int

    @property
    def native_bf16(self) -> bool:
        """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX), so mixed precision pays."""
        return bool(self.flags & NATIVE_BF16_FLAGS)

    def describe(self) -> str:
        """One line: model, logical cores and the relevant flags present."""
        present = [flag for flag in RELEVANT_FLAGS if flag in self.flags]
        return f"{self.model}, {self.cores} logical cores, flags: {' '.join(present) or 'none of ' + ' '.join(RELEVANT_FLAGS)}"


def parse_cpuinfo(text: str) -> CpuInfo:
    """The model name, the flags of the first processor and the number of processors in ``/proc/cpuinfo`` text."""
    model, flags, cores = "unknown CPU", frozenset(), 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            cores += 1
        elif key == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model, flags, max(cores, 1))


def cpu_info(path: Path = CPUINFO) -> CpuInfo:
    """This machine's CPU (an unknown CPU without flags when ``path`` cannot be read)."""
    try:
        return parse_cpuinfo(path.read_text())
    except OSError:
        return CpuInfo("unknown CPU", frozenset(), 1)
