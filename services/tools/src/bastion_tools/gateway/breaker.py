"""A circuit breaker per upstream: after `failures` failures in a row the upstream is not
called for `reset_seconds`; then one trial call decides (a success closes the circuit,
a failure opens it again). An upstream that is down costs callers an immediate, clear
error instead of a timeout each, and gets time to recover.

Hand-written: the state machine is a dozen lines, and the breaker libraries on PyPI are
synchronous (pybreaker) or unmaintained (aiobreaker).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

__all__ = ["Breaker"]


class Breaker:
    def __init__(
        self, failures: int, reset_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._threshold = failures
        self._reset = reset_seconds
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_at: float | None = None  # when the pending trial call went out

    @property
    def state(self) -> Literal["closed", "open", "half-open"]:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self._clock() - self._opened_at >= self._reset else "open"

    def allow(self) -> bool:
        """Whether a call may go to the upstream now: one trial at a time when half-open
        (another once a trial that never ended, its caller gone, is older than the reset)."""
        state = self.state
        if state == "closed":
            return True
        now = self._clock()
        if state == "half-open" and (self._trial_at is None or now - self._trial_at >= self._reset):
            self._trial_at = now
            return True
        return False

    def succeeded(self) -> None:
        self._failures, self._opened_at, self._trial_at = 0, None, None

    def failed(self) -> None:
        self._failures += 1
        self._trial_at = None
        if self._opened_at is not None or self._failures >= self._threshold:
            self._opened_at = self._clock()

    def retry_after(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._reset - (self._clock() - self._opened_at))
