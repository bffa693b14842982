"""Stop Streamlit from resetting Keras after every script run while the engine trains in the background.

After each script run, fragment runs included, Streamlit calls ``keras.backend.clear_session()``
(``streamlit.runtime.scriptrunner.script_runner._clean_problem_modules``). That resets Keras'
global state and TensorFlow's kernel cache under the feet of the federation's training threads:
with a live refresh every 0.7 s, rounds ran 3-10x slower. The dashboard never relies on that
cleanup (it builds a handful of models per federation, not one per rerun), so it is skipped;
the matplotlib part of the cleanup is kept. If Streamlit renames the hook, this does nothing.
"""

from __future__ import annotations

import sys

PATCHED_MARK = "_keeps_keras_session"


def _clean_problem_modules_except_keras() -> None:
    if "matplotlib.pyplot" in sys.modules:
        try:
            sys.modules["matplotlib.pyplot"].close("all")
        except Exception:  # same tolerance as Streamlit's own cleanup
            pass


setattr(_clean_problem_modules_except_keras, PATCHED_MARK, True)


def keep_keras_session() -> bool:
    """Install the Keras-preserving cleanup (idempotent); True if Streamlit's hook was found and replaced."""
    from streamlit.runtime.scriptrunner import script_runner

    current = getattr(script_runner, "_clean_problem_modules", None)
    if current is None:
        return False
    if not getattr(current, PATCHED_MARK, False):
        script_runner._clean_problem_modules = _clean_problem_modules_except_keras
    return True
