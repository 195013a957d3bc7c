"""The one retry layer: transient errors are retried here and nowhere else.

The HTTP clients below it are built with retries off (see ``StorageHook.client`` and
``StorageHook.store``), so the error that ends a :func:`retry_call` knows how many attempts were
made and for how long (:func:`attempts_made`, :func:`seconds_spent`).

How long an operation is retried: until its **deadline** (seconds since its first attempt; default
:data:`DEFAULT_DEADLINE`, 120 s) or, when a cap is given, its number of ``attempts``, whichever comes
first. The pauses back off exponentially from ``delay`` (0.5 s), doubling, bounded by ``max_delay``
(10 s), each drawn at random in its upper half (jitter, so many clients do not come back in step);
the last pause is shortened to end at the deadline, so an outage shorter than the deadline is ridden
out. Errors a retry cannot cure (refused credentials, a missing object, a failed TLS verification,
bad input) are raised at once.

A plain loop rather than a retry library: a call that succeeds first time (nearly all of them) costs
one ``try``, which matters at thousands of small objects a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import obstore.exceptions
import urllib3
from minio.error import MinioAdminException, S3Error, ServerError

log = logging.getLogger(__name__)

#: no cap on the number of attempts by default: the deadline bounds an operation
DEFAULT_ATTEMPTS: int | None = None
DEFAULT_DELAY = 0.5
MAX_DELAY = 10.0
#: seconds an operation keeps retrying transient errors after its first attempt: rides out an outage
#: (a server restart, a network cut) of up to about this long
DEFAULT_DEADLINE = 120.0
#: a pause is drawn uniformly in [(1 - JITTER) * backoff, backoff]
JITTER = 0.5
#: S3 error codes a retry may cure; MinIO says ``TooManyRequests`` (503) where AWS says ``SlowDown``
TRANSIENT_S3_CODES = frozenset({"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout", "TooManyRequests"})
#: HTTP statuses of an S3 error answer a retry may cure, whatever its code says; MinIO answers 499 to a request
#: in flight when it shuts down (the server cancelled it, not the client): a server going away, like a 503
TRANSIENT_STATUSES = frozenset({499, 500, 502, 503, 504})
_ATTEMPTS_ATTR = "e2e3d_attempts"
_SECONDS_ATTR = "e2e3d_retry_seconds"
#: the clock and the random draw of the loop (a test fakes them)
_clock = time.monotonic
_draw = random.random

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
        return is_unreachable(err) or any(f"status code: {code}" in str(err) for code in TRANSIENT_STATUSES)
    return isinstance(err, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


_UNREACHABLE_SIGNS = ("error sending request", "connection", "timed out", "broken pipe", "error decoding response body")


def is_unreachable(err: BaseException) -> bool:
    """True for an ``obstore`` error that says the server could not be reached or hung up."""
    text = str(err).lower()
    return isinstance(err, obstore.exceptions.GenericError) and any(sign in text for sign in _UNREACHABLE_SIGNS)


def attempts_made(err: BaseException) -> int:
    """How many attempts :func:`retry_call` made before giving up with ``err`` (1 if it never retried)."""
    return int(getattr(err, _ATTEMPTS_ATTR, 1))


def seconds_spent(err: BaseException) -> float:
    """Seconds from the first attempt to the one that ended with ``err`` (0 if it never retried)."""
    return float(getattr(err, _SECONDS_ATTR, 0.0))


def backoff(attempt: int, delay: float = DEFAULT_DELAY, max_delay: float = MAX_DELAY) -> float:
    """The upper bound of the pause after attempt number ``attempt``: ``delay`` doubled per attempt,
    at most ``max_delay``."""
    return min(delay * 2 ** min(attempt - 1, 64), max_delay)


def retry_call(
    func: Callable[[], T],
    what: str,
    attempts: int | None = DEFAULT_ATTEMPTS,
    delay: float = DEFAULT_DELAY,
    deadline: float = DEFAULT_DEADLINE,
    *,
    max_delay: float = MAX_DELAY,
    transient: Callable[[BaseException], bool] | None = None,
) -> T:
    """Run ``func``; retry the errors ``transient`` accepts (default :func:`is_transient`) with jittered
    exponential backoff until ``deadline`` seconds after the first attempt (or ``attempts`` calls, when
    given). The final error is raised as it came, marked with the attempts made and seconds spent."""
    _check(attempts, deadline)
    started, attempt = _clock(), 1
    while True:
        try:
            return func()
        except BaseException as err:
            time.sleep(_pause_or_raise(err, what, attempt, attempts, delay, deadline, max_delay, started, transient))
        attempt += 1


async def retry_call_async(
    func: Callable[[], Awaitable[T]],
    what: str,
    attempts: int | None = DEFAULT_ATTEMPTS,
    delay: float = DEFAULT_DELAY,
    deadline: float = DEFAULT_DEADLINE,
    *,
    max_delay: float = MAX_DELAY,
    transient: Callable[[BaseException], bool] | None = None,
) -> T:
    """:func:`retry_call` for a coroutine: ``func`` makes a fresh awaitable for each attempt."""
    _check(attempts, deadline)
    started, attempt = _clock(), 1
    while True:
        try:
            return await func()
        except BaseException as err:
            pause = _pause_or_raise(err, what, attempt, attempts, delay, deadline, max_delay, started, transient)
            await asyncio.sleep(pause)
        attempt += 1


def _check(attempts: int | None, deadline: float) -> None:
    if attempts is not None and attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    if deadline < 0:
        raise ValueError(f"a retry deadline cannot be negative, got {deadline}")


def _pause_or_raise(
    err: BaseException,
    what: str,
    attempt: int,
    attempts: int | None,
    delay: float,
    deadline: float,
    max_delay: float,
    started: float,
    transient: Callable[[BaseException], bool] | None,
) -> float:
    """The pause before the next attempt after ``err`` ended attempt number ``attempt``; re-raises
    ``err`` (marked with the attempts made and seconds spent) when it is not transient, no attempt is
    left, or the deadline has passed. The pause never reaches past the deadline."""
    spent = _clock() - started
    left = deadline - spent
    cured = (transient or is_transient)(err) if not isinstance(err, KeyboardInterrupt | SystemExit) else False
    if not cured or (attempts is not None and attempt >= attempts) or left <= 0:
        with contextlib.suppress(AttributeError):  # an exception without a __dict__ simply reports 1
            setattr(err, _ATTEMPTS_ATTR, attempt)
            setattr(err, _SECONDS_ATTR, spent)
        raise err
    bound = backoff(attempt, delay, max_delay)
    pause = min(bound * (1.0 - JITTER * _draw()), left)
    log.warning(
        "%s failed (%s: %s); attempt %d%s, next in %.1fs (gives up %.0fs after the first)",
        what,
        type(err).__name__,
        str(err).splitlines()[0] if str(err) else "",
        attempt,
        f" of {attempts}" if attempts is not None else "",
        pause,
        deadline,
    )
    return pause


@dataclass(frozen=True)
class RetryPolicy:
    """How patiently to retry: until ``deadline`` seconds after the first attempt (and at most ``attempts``
    calls when a cap is set), pauses backing off from ``delay`` s to at most ``max_delay`` s, jittered."""

    attempts: int | None = DEFAULT_ATTEMPTS
    delay: float = DEFAULT_DELAY
    deadline: float = DEFAULT_DEADLINE
    max_delay: float = MAX_DELAY

    def __post_init__(self) -> None:
        _check(self.attempts, self.deadline)
        if self.delay < 0 or self.max_delay < 0:
            raise ValueError(f"retry pauses cannot be negative, got delay={self.delay}, max_delay={self.max_delay}")

    def call(self, func: Callable[[], T], what: str) -> T:
        return retry_call(func, what, self.attempts, self.delay, self.deadline, max_delay=self.max_delay)

    async def call_async(self, func: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_call_async(func, what, self.attempts, self.delay, self.deadline, max_delay=self.max_delay)


DEFAULT_RETRY = RetryPolicy()
