"""The motor driver's own cap on infused volume per rolling hour (DESIGN safety invariant 1).

The dosing controller keeps the prescription's limits; this is the independent last line:
whatever the pump is commanded, the volume it *infuses* (as the device counts it) in any
3600 s window stays at or under ``max_ul``. Withdrawal is not a dose and does not earn budget
back. Times are ROS time (seconds).

Between readings the device's counter is known only at the readings, so the window's volume
is counted from the last reading at or before the window's start: the window is over-, never
under-estimated.
"""

from __future__ import annotations

import math
from collections import deque

WINDOW_S = 3600.0


class HourlyVolumeGuard:
    def __init__(self, max_ul: float) -> None:
        if not (math.isfinite(max_ul) and max_ul > 0.0):
            raise ValueError(f"max volume per hour must be a finite number > 0, got {max_ul!r}")
        self.max_ul = max_ul
        self._infused_ul = 0.0  # running total of infused volume since construction
        self._last_counter_ul: float | None = None
        # (t_s, infused total) readings; the oldest one kept is at or before the window start.
        self._readings: deque[tuple[float, float]] = deque()

    def record(self, t_s: float, delivered_ul: float) -> None:
        """A reading of the device's cumulative net counter at ``t_s``."""
        if not (math.isfinite(t_s) and math.isfinite(delivered_ul)):
            return
        if self._readings and t_s < self._readings[-1][0]:
            return  # out of order (time went back): keep the older, larger window
        last = self._last_counter_ul
        self._last_counter_ul = delivered_ul
        if last is not None and delivered_ul > last:
            self._infused_ul += delivered_ul - last
        self._readings.append((t_s, self._infused_ul))
        while len(self._readings) >= 2 and self._readings[1][0] <= t_s - WINDOW_S:
            self._readings.popleft()

    def restart_counter(self) -> None:
        """The device's counter restarted (new connection): the next reading is a new base."""
        self._last_counter_ul = None

    def volume_ul(self, t_s: float) -> float:
        """Infused volume in the hour ending at ``t_s`` (over-estimated, never under)."""
        if not self._readings:
            return 0.0
        start = self._readings[0][1]
        for reading_t, total in self._readings:
            if reading_t > t_s - WINDOW_S:
                break
            start = total
        return self._infused_ul - start

    def budget_ul(self, t_s: float) -> float:
        """Volume that may still be infused now without passing the cap."""
        return max(0.0, self.max_ul - self.volume_ul(t_s))

    def device_limit_ul(self, t_s: float, rate_ul_per_h: float, limit_ul: float) -> float:
        """The volume limit to give a run starting now (0 = none).

        A run that could pass the cap within the hour (budget below an hour at its rate) is
        limited to the budget on the device itself, so the pump stops there even if the host
        loses the link; a run that cannot, keeps its own limit.
        """
        budget = self.budget_ul(t_s)
        if budget >= rate_ul_per_h * WINDOW_S / 3600.0:
            return limit_ul
        return budget if limit_ul <= 0.0 else min(limit_ul, budget)
