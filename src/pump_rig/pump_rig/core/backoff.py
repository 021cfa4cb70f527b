"""Reconnect pacing: retry soon after a loss, then less and less often (wall time, seconds)."""

from __future__ import annotations

import math


class Backoff:
    """Delays of ``initial_s``, doubling on each failure up to ``max_s``; ``reset`` on success."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        if not (math.isfinite(initial_s) and initial_s > 0.0):
            raise ValueError(f"initial_s must be a finite number > 0, got {initial_s!r}")
        if not (math.isfinite(max_s) and max_s >= initial_s):
            raise ValueError(f"max_s must be a finite number >= initial_s, got {max_s!r}")
        self.initial_s = initial_s
        self.max_s = max_s
        self._failures = 0
        self._next_s: float | None = None  # when the next attempt is due (None: now)

    @property
    def failures(self) -> int:
        return self._failures

    def due(self, now_s: float) -> bool:
        return self._next_s is None or now_s >= self._next_s

    def failed(self, now_s: float) -> float:
        """Note a failed attempt at ``now_s``; returns the delay until the next one."""
        delay = min(self.max_s, self.initial_s * 2.0 ** min(self._failures, 60))
        self._failures += 1
        self._next_s = now_s + delay
        return delay

    def reset(self) -> None:
        self._failures = 0
        self._next_s = None
