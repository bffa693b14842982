"""The one error type every data source raises: a one-line reason a user can act on."""

from __future__ import annotations


class DataError(ValueError):
    """The data cannot be used as given; the message says what was found and what is expected."""


class DatasetUnavailableError(DataError, RuntimeError):
    """The data set is neither in a local folder nor downloadable."""
