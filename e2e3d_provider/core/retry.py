"""The one retry layer: transient object-storage errors are retried here and nowhere else.

The HTTP client below it is built with retries off (see ``StorageHook.client``), so one call of
:func:`retry_call` with ``attempts=3`` opens at most three connections, and the error that ends
it knows how many attempts were made (:func:`attempts_made`). Built on ``tenacity``, which
Airflow itself ships.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import obstore.exceptions
import urllib3
from minio.error import S3Error, ServerError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

log = logging.getLogger(__name__)

DEFAULT_ATTEMPTS = 3
DEFAULT_DELAY = 0.5
MAX_DELAY = 10.0
TRANSIENT_S3_CODES = frozenset({"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout"})
_ATTEMPTS_ATTR = "e2e3d_attempts"

T = TypeVar("T")


def is_transient(err: BaseException) -> bool:
    """True for errors a retry may cure: dropped connections, timeouts, 5xx and SlowDown answers."""
    if isinstance(err, S3Error):
        return err.code in TRANSIENT_S3_CODES
    if isinstance(err, ServerError):
        return err.status_code >= 500
    if isinstance(err, obstore.exceptions.GenericError):  # the Rust client's network errors and 5xx answers
        return is_unreachable(err) or any(f"status code: {code}" in str(err) for code in (500, 502, 503, 504))
    return isinstance(err, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


_UNREACHABLE_SIGNS = ("error sending request", "connection", "timed out", "broken pipe", "error decoding response body")


def is_unreachable(err: BaseException) -> bool:
    """True for an ``obstore`` error that says the server could not be reached or hung up."""
    text = str(err).lower()
    return isinstance(err, obstore.exceptions.GenericError) and any(sign in text for sign in _UNREACHABLE_SIGNS)


def attempts_made(err: BaseException) -> int:
    """How many attempts :func:`retry_call` made before giving up with ``err`` (1 if it never retried)."""
    return int(getattr(err, _ATTEMPTS_ATTR, 1))


def retry_call(func: Callable[[], T], what: str, attempts: int = DEFAULT_ATTEMPTS, delay: float = DEFAULT_DELAY) -> T:
    """Run ``func``; retry transient errors until ``attempts`` calls were made, backing off
    exponentially from ``delay`` seconds. The final error is raised as it came, marked with the
    number of attempts made."""
    retrying = Retrying(**_policy(what, attempts, delay))
    try:
        return retrying(func)
    except BaseException as err:
        _mark(err, retrying.statistics.get("attempt_number", 1))
        raise


async def retry_call_async(
    func: Callable[[], Awaitable[T]], what: str, attempts: int = DEFAULT_ATTEMPTS, delay: float = DEFAULT_DELAY
) -> T:
    """:func:`retry_call` for a coroutine: ``func`` makes a fresh awaitable for each attempt."""
    retrying = AsyncRetrying(**_policy(what, attempts, delay))

    async def attempt() -> T:  # a coroutine function, so tenacity awaits each attempt
        return await func()

    try:
        return await retrying(attempt)
    except BaseException as err:
        _mark(err, retrying.statistics.get("attempt_number", 1))
        raise


def _mark(err: BaseException, attempts: int) -> None:
    with contextlib.suppress(AttributeError):  # an exception without a __dict__ simply reports 1
        setattr(err, _ATTEMPTS_ATTR, attempts)


def _policy(what: str, attempts: int, delay: float) -> dict:
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")

    def before_sleep(state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s failed (%s: %s); attempt %d of %d, next in %.1fs",
            what,
            type(err).__name__,
            str(err).splitlines()[0] if err else err,
            state.attempt_number,
            attempts,
            state.upcoming_sleep,
        )

    return {
        "stop": stop_after_attempt(attempts),
        "wait": wait_exponential(multiplier=delay, max=MAX_DELAY),
        "retry": retry_if_exception(is_transient),
        "before_sleep": before_sleep,
        "reraise": True,
    }


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry: ``attempts`` calls in all, backing off from ``delay`` s."""

    attempts: int = DEFAULT_ATTEMPTS
    delay: float = DEFAULT_DELAY

    def call(self, func: Callable[[], T], what: str) -> T:
        return retry_call(func, what, self.attempts, self.delay)

    async def call_async(self, func: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_call_async(func, what, self.attempts, self.delay)


DEFAULT_RETRY = RetryPolicy()
