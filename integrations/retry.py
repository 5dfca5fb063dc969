"""Retries for calls to a vector database: exponential backoff with full jitter, then one clear line.

A call that fails for a reason that may go away (a refused or dropped connection, a timeout, HTTP
429 or 5xx) is tried again after a random delay drawn from ``[0, min(max_delay, base_delay * 2**k))``
("full jitter": many clients retrying at once spread out instead of hammering the server in step).
When the attempts run out, the caller gets a :class:`StoreError` that names the store and the
operation, e.g. ``qdrant https://host:6333: upsert failed after 5 attempts (timed out)``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .base import StoreError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: why an error is worth retrying (a short phrase for messages), or None when it is not
Classifier = Callable[[BaseException], "str | None"]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failing call is retried.

    Args:
        attempts: calls in all, the first included (1 = no retry).
        base_delay: seconds; the k-th retry waits up to ``base_delay * 2**(k-1)``.
        max_delay: upper bound of any single wait, in seconds.
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 10.0

    def __post_init__(self):
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("retry delays must not be negative")

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry number ``retry`` (1-based): uniform in ``[0, cap)``."""
        cap = min(self.max_delay, self.base_delay * 2 ** (retry - 1))
        return (rng or random).uniform(0.0, cap)


def builtin_transient_reason(error: BaseException) -> str | None:
    """Python's own network errors: timeouts and connection failures are worth retrying."""
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ConnectionError):
        return f"connection failed: {error}" if str(error) else "connection failed"
    return None


def call_with_retries(operation: Callable[[], T], *, what: str, store: str, policy: RetryPolicy,
                      classify: Classifier = builtin_transient_reason,
                      sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``operation``, retrying transient failures under ``policy``.

    Errors that ``classify`` does not call transient are raised unchanged at once. ``what`` names
    the operation and ``store`` the database in messages; neither may contain a secret.
    """
    for attempt in range(1, policy.attempts + 1):
        try:
            return operation()
        except Exception as error:
            reason = classify(error)
            if reason is None:
                raise
            if attempt == policy.attempts:
                tries = f"{attempt} attempt{'s' if attempt != 1 else ''}"
                raise StoreError(f"{store}: {what} failed after {tries} ({reason})") from None
            wait = policy.delay(attempt)
            logger.warning("%s: %s failed (%s); retrying in %.2f s (attempt %d of %d)",
                           store, what, reason, wait, attempt + 1, policy.attempts)
            sleep(wait)
