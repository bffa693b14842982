"""Errors a user can act on, and how any error becomes one line for them.

Anything the engine raises because of what the user asked for or of the state
of their files (a runs folder that is a file, a corrupt run index, a run that
is training elsewhere, an export path with the wrong suffix) is a
:class:`UserError`: its message says what was found and what to do. Front ends
(the CLI's ``main``, the dashboard) print :func:`one_line` of it; nothing else
about it is meant for the user.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; ``str(error)`` is one line saying what is wrong and what to do."""

    def __str__(self) -> str:  # KeyError subclasses would otherwise quote their message
        return str(self.args[0]) if self.args else type(self).__name__


def one_line(error: BaseException) -> str:
    """The error as one line: its own message for a :class:`UserError` or an ``OSError``, else type and message."""
    if isinstance(error, UserError):
        text = str(error)
    elif isinstance(error, OSError) and error.strerror:
        text = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    else:
        detail = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        text = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith("Graph execution error:"):
        # TensorFlow's op errors: the call stack of the node first, what went wrong on the last lines
        reason = [line for line in lines if not line.startswith(("[[", "File ", "Detected at node"))]
        return f"{type(error).__name__}: {reason[-1]}" if len(reason) > 1 else lines[0]
    return lines[0] if lines else type(error).__name__
