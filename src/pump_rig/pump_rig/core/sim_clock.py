"""Simulated time for accelerated runs: sim = start + speed × (wall elapsed)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class SimClock:
    """Monotonic simulated clock. With speed 1 it runs at wall rate from ``sim_start_s``."""

    def __init__(
        self,
        speed: float,
        sim_start_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not math.isfinite(speed) or speed <= 0:
            raise ValueError(f"speed: must be a finite number > 0 (got {speed})")
        self.speed = speed
        self._monotonic = monotonic
        self._wall0 = monotonic()
        self._sim0 = sim_start_s
        self._last = sim_start_s
        self._lock = threading.Lock()

    def now_s(self) -> float:
        with self._lock:
            t = self._sim0 + self.speed * (self._monotonic() - self._wall0)
            self._last = max(self._last, t)
            return self._last
