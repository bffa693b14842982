"""Keep TensorFlow's native start-up chatter off the CLI's stderr.

TensorFlow's C++ code logs through absl before absl's log is initialised, so
``TF_CPP_MIN_LOG_LEVEL`` does not silence lines such as ``I0000 ... port.cc:153]
oneDNN custom operations are on`` or ``WARNING: All log messages before
absl::InitializeLog() is called are written to STDERR``. :func:`filtered_stderr`
routes file descriptor 2 through a pipe for the duration of a command and drops
exactly those lines (absl INFO and WARNING records, and the oneDNN notes logged
as errors); everything else, Python's own messages included, passes unchanged.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

NATIVE_NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IW]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "
    rb"|E\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] oneDNN )"
)


def is_noise(line: bytes) -> bool:
    return NATIVE_NOISE.match(line) is not None


@contextmanager
def filtered_stderr(enabled: bool = True) -> Iterator[None]:
    """Drop native log noise from fd 2 while the block runs; the real stderr is restored afterwards."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not is_noise(line):
                    os.write(real, line)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last write end: the pump reads to the end and stops
        thread.join(timeout=5)
        os.close(real)
