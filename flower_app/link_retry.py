"""Retries on the SuperLink's Runtime API for a ServerApp played inside the dashboard or CLI process.

Flower's own HTTP retry invoker (``flwr/supercore/retry/http_retry.py``
``make_simple_http_retry_invoker``, the default of every ``HttpGrid`` and
``RuntimeHttpClient``) answers a ``401 Unauthorized`` by sending SIGINT to its
own process, and a ``403`` by raising ``RunNotRunningException``, a
``BaseException``. That ends a ``flwr-serverapp`` process, which holds one run
and nothing else; here the process is the dashboard (every federation it shows)
or the CLI, so a run that the SuperLink stops (``flwr stop``), forgets (a
SuperLink restarted without its state) or never grants (a wrong SuperExec
secret) would kill all of it. :func:`link_retry_invoker` retries what Flower
retries (connection errors; 502, 503, 504) for at most ``max_seconds``, and turns
an authentication failure into :class:`TaskRevoked`: an ordinary exception with
one line for the user, so only that federation's run ends, as ``failed``, with
that line (``engine.federation.Federation`` reports what its round loop raises).
"""

from __future__ import annotations

import time
from logging import WARNING

import httpx
from flwr.common.constant import MAX_RETRY_DELAY
from flwr.common.logger import log
from flwr.supercore.error import ApiErrorCode, FlowerError
from flwr.supercore.retry import RetryInvoker, RetryState, exponential

from engine.errors import UserError

RETRY_SECONDS = 60.0  # how long an unreachable SuperLink is retried before the run fails
RETRYABLE_STATUS = frozenset({httpx.codes.BAD_GATEWAY, httpx.codes.SERVICE_UNAVAILABLE, httpx.codes.GATEWAY_TIMEOUT})
REVOKED = ("the SuperLink no longer accepts this run's ServerApp (HTTP {status}): the run was stopped or removed "
           "there, or the SuperLink restarted and forgot it; start a new run (a recorded one can be resumed)")


class LinkError(UserError, RuntimeError):
    """The SuperLink could not be reached, refused the run, or never handed over its ServerApp task."""


class TaskRevoked(LinkError):
    """The SuperLink answered the ServerApp's token with 401/403: this run's task is no longer valid there."""


def revoked(error: Exception) -> bool:
    """Whether ``error`` is the SuperLink refusing the ServerApp's credentials (not a connector's 403)."""
    if not isinstance(error, httpx.HTTPStatusError):
        return False
    status = error.response.status_code
    if status == httpx.codes.FORBIDDEN:
        detail = FlowerError.from_json(error.response.text)
        return detail is None or detail.code != ApiErrorCode.RUNTIME_CONNECTOR_NOT_AVAILABLE
    return status == httpx.codes.UNAUTHORIZED


def link_retry_invoker(address: str, refused: str = REVOKED, max_seconds: float = RETRY_SECONDS) -> RetryInvoker:
    """A ``RetryInvoker`` for Runtime API calls that raises :class:`TaskRevoked` (``refused``, formatted with
    ``status``) on 401/403 and :class:`LinkError` once ``address`` has not answered for ``max_seconds``."""

    def should_giveup(error: Exception) -> bool:
        if revoked(error):
            raise TaskRevoked(refused.format(status=error.response.status_code)) from None  # type: ignore[attr-defined]
        if isinstance(error, httpx.HTTPStatusError):
            return error.response.status_code not in RETRYABLE_STATUS  # e.g. 413: the caller handles it
        return any(term in str(error).lower() for term in ("certificate", "ssl", "tls"))  # retrying cannot help

    def on_giveup(state: RetryState) -> None:
        error = state.exception
        if isinstance(error, httpx.TransportError):
            raise LinkError(f"the SuperLink at {address} did not answer for {state.elapsed_time:.0f} s "
                            f"({state.tries} tries; {type(error).__name__}: {error})") from None

    def wait(seconds: float) -> None:
        log(WARNING, "the SuperLink at %s did not answer; retrying in %.2f s", address, seconds)
        time.sleep(seconds)

    return RetryInvoker(
        wait_gen_factory=lambda: exponential(max_delay=MAX_RETRY_DELAY),
        recoverable_exceptions=(httpx.TransportError, httpx.HTTPStatusError),
        max_tries=None,
        max_time=max_seconds,
        on_giveup=on_giveup,
        should_giveup=should_giveup,
        wait_function=wait,
    )
