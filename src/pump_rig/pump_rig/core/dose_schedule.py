"""A basal dose schedule over the week: piecewise-constant dose rate, exact to integrate.

Time is ROS time in seconds since the epoch. The schedule works in local time of day
(``utc_offset_s`` east of UTC); 1970-01-01 was a Thursday. Each weekday has its own steps
(a constant-rate program is one step at 00:00 every day); a step's rate holds until the next
step, the last step of a day until midnight.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Final

from pump_rig.core.pump_types import SECONDS_PER_DAY, SECONDS_PER_HOUR

__all__ = ["MAX_STEPS_PER_DAY", "WEEKDAYS", "DoseSchedule", "FlexStep", "weekday_of"]

WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_STEPS_PER_DAY: Final = 24
# 1970-01-01 (day 0 of the epoch) was a Thursday: Monday-based weekday 3.
_EPOCH_WEEKDAY: Final = 3


def weekday_of(t_s: float, utc_offset_s: float = 0.0) -> int:
    """Monday = 0 ... Sunday = 6, in local time."""
    return (math.floor((t_s + utc_offset_s) / SECONDS_PER_DAY) + _EPOCH_WEEKDAY) % 7


@dataclass(frozen=True)
class FlexStep:
    """From ``at_s`` seconds after local midnight, deliver ``dose_rate_ug_per_h``."""

    at_s: float
    dose_rate_ug_per_h: float


@dataclass(frozen=True)
class DoseSchedule:
    """Seven days (Monday first) of steps; each day sorted, first step at 00:00."""

    week: tuple[tuple[FlexStep, ...], ...]
    utc_offset_s: float = 0.0

    def __post_init__(self) -> None:
        if len(self.week) != 7:
            raise ValueError(f"week: needs 7 days (got {len(self.week)})")
        if not (math.isfinite(self.utc_offset_s) and abs(self.utc_offset_s) <= 14 * 3600):
            raise ValueError(f"utc_offset_s: must be within ±14 h (got {self.utc_offset_s!r})")
        for day, steps in zip(WEEKDAYS, self.week, strict=True):
            if not 1 <= len(steps) <= MAX_STEPS_PER_DAY:
                raise ValueError(f"{day}: needs 1 to {MAX_STEPS_PER_DAY} steps ({len(steps)})")
            if steps[0].at_s != 0.0:
                raise ValueError(f"{day}: the first step must start at 00:00")
            for prev, step in itertools.pairwise(steps):
                if not step.at_s > prev.at_s:
                    raise ValueError(f"{day}: steps must be in strictly increasing time order")
            for step in steps:
                if not 0.0 <= step.at_s < SECONDS_PER_DAY:
                    raise ValueError(f"{day}: step time {step.at_s!r} s is not within a day")
                rate = step.dose_rate_ug_per_h
                if not (math.isfinite(rate) and rate >= 0.0):
                    raise ValueError(f"{day}: dose rate must be finite and >= 0 (got {rate!r})")

    @classmethod
    def constant(cls, dose_rate_ug_per_h: float, utc_offset_s: float = 0.0) -> DoseSchedule:
        day = (FlexStep(0.0, dose_rate_ug_per_h),)
        return cls(week=(day,) * 7, utc_offset_s=utc_offset_s)

    @property
    def is_constant(self) -> bool:
        rates = {s.dose_rate_ug_per_h for day in self.week for s in day}
        return len(rates) == 1

    def daily_dose_ug(self, weekday: int) -> float:
        """Dose the steps of one weekday deliver over its 24 h."""
        steps = self.week[weekday]
        ends = [s.at_s for s in steps[1:]] + [SECONDS_PER_DAY]
        return math.fsum(
            s.dose_rate_ug_per_h * (end - s.at_s) / SECONDS_PER_HOUR
            for s, end in zip(steps, ends, strict=True)
        )

    # Cached: the schedule is immutable, and the engine asks at every report.
    @functools.cached_property
    def max_daily_dose_ug(self) -> float:
        return max(self.daily_dose_ug(d) for d in range(7))

    @functools.cached_property
    def mean_daily_dose_ug(self) -> float:
        return math.fsum(self.daily_dose_ug(d) for d in range(7)) / 7.0

    @property
    def max_dose_rate_ug_per_h(self) -> float:
        return max(s.dose_rate_ug_per_h for day in self.week for s in day)

    def _locate(self, t_s: float) -> tuple[int, int, float]:
        """(local day number, index of the step in force, local day start in ROS time)."""
        local = t_s + self.utc_offset_s
        day = math.floor(local / SECONDS_PER_DAY)
        day_start = day * SECONDS_PER_DAY - self.utc_offset_s
        # t + offset can round across a local midnight: decide the day in ROS time, so the
        # step found always ends after t (dose_ug relies on it to make progress).
        if t_s >= day_start + SECONDS_PER_DAY:
            day += 1
            day_start = day * SECONDS_PER_DAY - self.utc_offset_s
        elif t_s < day_start:
            day -= 1
            day_start = day * SECONDS_PER_DAY - self.utc_offset_s
        steps = self.week[(day + _EPOCH_WEEKDAY) % 7]
        index = 0
        for i, step in enumerate(steps):
            # Compared as _step_end computes ends (not t - day_start, which rounds
            # differently): the step found ends after t.
            if day_start + step.at_s <= t_s:
                index = i
        return day, index, day_start

    def _step_end(self, day: int, index: int, day_start: float) -> float:
        steps = self.week[(day + _EPOCH_WEEKDAY) % 7]
        if index + 1 < len(steps):
            return day_start + steps[index + 1].at_s
        return day_start + SECONDS_PER_DAY

    def dose_rate_ug_per_h(self, t_s: float) -> float:
        day, index, _start = self._locate(t_s)
        return self.week[(day + _EPOCH_WEEKDAY) % 7][index].dose_rate_ug_per_h

    def next_change_s(self, t_s: float) -> float | None:
        """First time after ``t_s`` at which the rate differs from the rate at ``t_s``."""
        rate = self.dose_rate_ug_per_h(t_s)
        day, index, day_start = self._locate(t_s)
        for _ in range(8 * MAX_STEPS_PER_DAY):
            end = self._step_end(day, index, day_start)
            if self.dose_rate_ug_per_h(end) != rate:
                return end
            day, index, day_start = self._locate(end)
        return None

    def dose_ug(self, t0_s: float, t1_s: float) -> float:
        """Exact integral of the dose rate over [t0, t1] (0 if t1 <= t0)."""
        if not t1_s > t0_s:
            return 0.0
        weeks = math.floor((t1_s - t0_s) / (7 * SECONDS_PER_DAY))
        pieces = [weeks * math.fsum(self.daily_dose_ug(d) for d in range(7))] if weeks else []
        t = t0_s + weeks * 7 * SECONDS_PER_DAY
        while t < t1_s:
            day, index, day_start = self._locate(t)
            end = min(self._step_end(day, index, day_start), t1_s)
            rate = self.week[(day + _EPOCH_WEEKDAY) % 7][index].dose_rate_ug_per_h
            pieces.append(rate * (end - t) / SECONDS_PER_HOUR)
            t = end
        return math.fsum(pieces)
