"""The one retry layer: transient object-storage errors are retried here and nowhere else.

The HTTP clients below it are built with retries off (see ``StorageHook.client`` and
``StorageHook.store``), so one call of :func:`retry_call` with ``attempts=3`` opens at most three
connections, and the error that ends it knows how many attempts were made (:func:`attempts_made`).
A plain loop rather than a retry library: a call that succeeds first time (nearly all of them) costs
one ``try``, which matters at thousands of small objects a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import obstore.exceptions
import urllib3
from minio.error import MinioAdminException, S3Error, ServerError

log = logging.getLogger(__name__)

DEFAULT_ATTEMPTS = 3
DEFAULT_DELAY = 0.5
MAX_DELAY = 10.0
#: S3 error codes a retry may cure; MinIO says ``TooManyRequests`` (503) where AWS says ``SlowDown``
TRANSIENT_S3_CODES = frozenset({"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout", "TooManyRequests"})
#: HTTP statuses of an S3 error answer a retry may cure, whatever its code says
TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
_ATTEMPTS_ATTR = "e2e3d_attempts"

T = TypeVar("T")


def tls_failure(err: BaseException) -> str | None:
    """Why TLS verification of the server failed (its certificate is not trusted, or names another host),
    or ``None`` when ``err`` is not such a failure. A retry never cures it."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return current.verify_message or str(current)
        for arg in getattr(current, "args", ()):
            if isinstance(arg, ssl.SSLCertVerificationError):
                return arg.verify_message or str(arg)
            reason = getattr(arg, "reason", None)
            if isinstance(reason, ssl.SSLCertVerificationError):
                return reason.verify_message or str(reason)
        text = str(current).lower()
        connection_layer = not isinstance(current, S3Error | ServerError)  # an S3 answer names keys, not TLS
        if connection_layer and "certificate" in text and ("verif" in text or "invalid" in text or "unknown" in text):
            return str(current).splitlines()[0][:300]
        current = current.__cause__ or current.__context__ or getattr(current, "reason", None)
    return None


def is_transient(err: BaseException) -> bool:
    """True for errors a retry may cure: dropped connections, timeouts, 5xx and throttling answers."""
    if tls_failure(err):
        return False
    if isinstance(err, S3Error):
        return err.code in TRANSIENT_S3_CODES or getattr(err.response, "status", None) in TRANSIENT_STATUSES
    if isinstance(err, ServerError):
        return err.status_code >= 500
    if isinstance(err, MinioAdminException):  # MinIO's admin API: 5xx, e.g. "Server not initialized" at start
        return str(getattr(err, "_code", "")) in {str(code) for code in TRANSIENT_STATUSES}
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
    _check(attempts)
    attempt = 1
    while True:
        try:
            return func()
        except BaseException as err:
            time.sleep(_pause_or_raise(err, what, attempt, attempts, delay))
        attempt += 1


async def retry_call_async(
    func: Callable[[], Awaitable[T]], what: str, attempts: int = DEFAULT_ATTEMPTS, delay: float = DEFAULT_DELAY
) -> T:
    """:func:`retry_call` for a coroutine: ``func`` makes a fresh awaitable for each attempt."""
    _check(attempts)
    attempt = 1
    while True:
        try:
            return await func()
        except BaseException as err:
            await asyncio.sleep(_pause_or_raise(err, what, attempt, attempts, delay))
        attempt += 1


def _check(attempts: int) -> None:
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")


def _pause_or_raise(err: BaseException, what: str, attempt: int, attempts: int, delay: float) -> float:
    """The pause before the next attempt after ``err`` ended attempt number ``attempt``; re-raises
    ``err`` (marked with the attempts made) when it is not transient or no attempt is left."""
    if attempt >= attempts or not is_transient(err):
        with contextlib.suppress(AttributeError):  # an exception without a __dict__ simply reports 1
            setattr(err, _ATTEMPTS_ATTR, attempt)
        raise err
    pause = min(delay * 2 ** (attempt - 1), MAX_DELAY)
    log.warning(
        "%s failed (%s: %s); attempt %d of %d, next in %.1fs",
        what,
        type(err).__name__,
        str(err).splitlines()[0] if str(err) else "",
        attempt,
        attempts,
        pause,
    )
    return pause


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
