"""Plunger mechanics of a stepper-driven syringe pump, event-driven and exact.

The plunger moves in whole microsteps. Within a *segment* (constant rate, motor moving) the
position is computed from the segment's anchor, never accumulated tick by tick, so one jump of
30 days and a million small advances land on the same microstep. Segments only end on things
that change the motion (start, stop, rate change, stall, self-stop events).

Self-stops (volume limit reached, syringe empty when infusing, syringe full when withdrawing)
happen at the exact time of the step that reaches them, whatever the caller's time step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pump_rig.core.pump_types import SECONDS_PER_HOUR, Direction, PumpRunState

MIN_DIAMETER_MM = 0.1
MAX_DIAMETER_MM = 50.0
# Volumes within this fraction of a step of a whole step count as that step, so a limit or a
# load of exactly N steps' volume is not lost to float rounding of N * ul_per_step.
_STEP_TOLERANCE = 1e-9


@dataclass(frozen=True)
class MechanicsSpec:
    """Drive train: a lead screw turned by a microstepped stepper motor."""

    lead_screw_pitch_mm: float = 0.8
    steps_per_rev: int = 200
    microsteps: int = 16

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lead_screw_pitch_mm) and self.lead_screw_pitch_mm > 0.0):
            raise ValueError(
                f"lead_screw_pitch_mm must be a positive finite number, "
                f"got {self.lead_screw_pitch_mm!r}"
            )
        for name in ("steps_per_rev", "microsteps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def mm_per_step(self) -> float:
        return self.lead_screw_pitch_mm / (self.steps_per_rev * self.microsteps)


DEFAULT_MECHANICS = MechanicsSpec()


@dataclass(frozen=True)
class PumpSnapshot:
    """What the pump is doing at ``t_s`` (all volumes in µL)."""

    t_s: float
    state: PumpRunState
    direction: Direction
    rate_ul_per_h: float
    flow_ul_per_h: float
    delivered_ul: float  # net infused minus withdrawn since construction, whole microsteps
    remaining_ul: float  # in the syringe; 0 once less than one microstep's volume is left
    steps: int
    inner_diameter_mm: float
    volume_limit_ul: float
    limit_reached: bool


def _check_time(t_s: float, now_s: float) -> None:
    if not math.isfinite(t_s):
        raise ValueError(f"time must be finite, got {t_s!r}")
    if t_s < now_s:
        raise ValueError(f"time went backwards: {t_s!r} s < current {now_s!r} s")


def _whole_steps(volume_ul: float, ul_per_step: float) -> int:
    """Number of whole steps in ``volume_ul`` (never more than the volume, up to tolerance)."""
    return max(0, math.floor(volume_ul / ul_per_step + _STEP_TOLERANCE))


class SyringePump:
    """A syringe pump's plunger, driven by commands at explicit (monotonic) times.

    Documented choices:
    * ``start`` at a set rate of 0 raises ValueError (almost certainly a forgotten ``set_rate``);
      ``set_rate(0)`` while running is allowed: the motor holds the plunger (RUNNING, flow 0).
    * ``start`` with nothing to move (empty syringe when infusing, full when withdrawing, or a
      volume limit below one step) is not an error: the run ends at once and the pump is IDLE.
    * ``start`` while the motor is already on is a no-op.
    * The volume limit is counted in whole steps and never exceeded: the run ends on the last
      whole step that fits in the limit.
    * ``set_diameter`` only changes the µL/step conversion: the volume in the syringe is kept.
      It, ``set_direction`` and ``load`` raise while the motor is on (RUNNING or STALLED).
    * Withdrawing stops by itself when the syringe is full, like infusing when it is empty.
    * ``remaining_ul`` reads 0 once less than one microstep's volume is left (dead volume).
    * A stall (``set_stalled``) is a fault flag: while set and the motor is on the state is
      STALLED and the plunger does not move; the fractional microstep in progress is lost.
    """

    def __init__(
        self,
        *,
        inner_diameter_mm: float,
        syringe_volume_ul: float,
        loaded_volume_ul: float,
        max_rate_ul_per_h: float,
        mechanics: MechanicsSpec = DEFAULT_MECHANICS,
        t0_s: float = 0.0,
    ) -> None:
        if not math.isfinite(t0_s):
            raise ValueError(f"t0_s must be finite, got {t0_s!r}")
        _check_diameter(inner_diameter_mm)
        if not (math.isfinite(syringe_volume_ul) and syringe_volume_ul > 0.0):
            raise ValueError(
                f"syringe_volume_ul must be a positive finite number, got {syringe_volume_ul!r}"
            )
        _check_load(loaded_volume_ul, syringe_volume_ul)
        if not (math.isfinite(max_rate_ul_per_h) and max_rate_ul_per_h > 0.0):
            raise ValueError(
                f"max_rate_ul_per_h must be a positive finite number, got {max_rate_ul_per_h!r}"
            )
        self._mech = mechanics
        self._syringe_volume_ul = float(syringe_volume_ul)
        self._max_rate_ul_per_h = float(max_rate_ul_per_h)
        self._t_s = float(t0_s)
        self._diameter_mm = float(inner_diameter_mm)
        self._ul_per_step = _ul_per_step(self._diameter_mm, self._mech)
        self._rate_ul_per_h = 0.0
        self._direction = Direction.INFUSE
        self._volume_limit_ul = 0.0
        self._motor_on = False
        self._stalled = False
        self._limit_reached = False
        # Accounting at the anchor. Volumes change only at "epochs" (load, diameter change):
        # within an epoch volume = base + steps * ul_per_step, products rather than sums.
        self._steps = 0  # cumulative net microsteps (+ infuse)
        self._epoch_steps0 = 0
        self._epoch_delivered_ul = 0.0
        self._epoch_content_ul = float(loaded_volume_ul)
        self._run_steps = 0  # unsigned steps moved since the last start()
        # Current motion segment: started at _seg_t0_s with a fractional microstep _seg_phase.
        self._seg_t0_s = self._t_s
        self._seg_phase = 0.0

    # ---- read-only views -------------------------------------------------------------------
    @property
    def ul_per_step(self) -> float:
        """Volume of one microstep, µL (1 mm³ = 1 µL)."""
        return self._ul_per_step

    @property
    def mechanics(self) -> MechanicsSpec:
        return self._mech

    @property
    def syringe_volume_ul(self) -> float:
        return self._syringe_volume_ul

    @property
    def max_rate_ul_per_h(self) -> float:
        return self._max_rate_ul_per_h

    @property
    def rate_ul_per_h(self) -> float:
        """The rate set (whether or not the motor runs)."""
        return self._rate_ul_per_h

    @property
    def t_s(self) -> float:
        """Internal time the pump has been advanced to."""
        return self._t_s

    @property
    def state(self) -> PumpRunState:
        if not self._motor_on:
            return PumpRunState.IDLE
        return PumpRunState.STALLED if self._stalled else PumpRunState.RUNNING

    def flow_ul_per_s(self) -> float:
        """Signed plunger flow at the internal time (+ infuse, − withdraw)."""
        return self._signed_rate_ul_per_h() / SECONDS_PER_HOUR

    def next_event_s(self) -> float | None:
        """When the pump will stop by itself (limit, empty, full), or None if it will not."""
        sps = self._steps_per_s()
        if sps <= 0.0:
            return None
        target = self._steps_to_next_event()
        if target is None:
            return None
        t_ev = self._seg_t0_s + max(0.0, target - self._seg_phase) / sps
        return t_ev if math.isfinite(t_ev) else None

    # ---- commands ----------------------------------------------------------------------------
    def advance(self, t_s: float) -> None:
        """Move time to ``t_s``, stopping exactly at any self-stop event on the way."""
        _check_time(t_s, self._t_s)
        while True:
            t_ev = self.next_event_s()
            if t_ev is None or t_ev > t_s:
                break
            self._t_s = max(self._t_s, t_ev)
            self._fire_event()
        self._t_s = t_s

    def snapshot(self, t_s: float) -> PumpSnapshot:
        self.advance(t_s)
        moved, _ = self._moved_now()
        steps = self._steps + self._sign() * moved
        epoch_ul = (steps - self._epoch_steps0) * self._ul_per_step
        return PumpSnapshot(
            t_s=self._t_s,
            state=self.state,
            direction=self._direction,
            rate_ul_per_h=self._rate_ul_per_h,
            flow_ul_per_h=self._signed_rate_ul_per_h(),
            delivered_ul=self._epoch_delivered_ul + epoch_ul,
            remaining_ul=self._reported_remaining_ul(self._epoch_content_ul - epoch_ul),
            steps=steps,
            inner_diameter_mm=self._diameter_mm,
            volume_limit_ul=self._volume_limit_ul,
            limit_reached=self._limit_reached,
        )

    def set_diameter(self, t_s: float, inner_diameter_mm: float) -> None:
        self.advance(t_s)
        if self._motor_on:
            raise ValueError("cannot change the syringe diameter while the pump is running")
        _check_diameter(inner_diameter_mm)
        self._new_epoch()
        self._diameter_mm = float(inner_diameter_mm)
        self._ul_per_step = _ul_per_step(self._diameter_mm, self._mech)

    def set_rate(self, t_s: float, rate_ul_per_h: float) -> None:
        self.advance(t_s)
        if not math.isfinite(rate_ul_per_h) or rate_ul_per_h < 0.0:
            raise ValueError(f"rate must be a finite number >= 0 µL/h, got {rate_ul_per_h!r}")
        if rate_ul_per_h > self._max_rate_ul_per_h:
            raise ValueError(
                f"rate {rate_ul_per_h!r} µL/h is above the pump maximum "
                f"{self._max_rate_ul_per_h!r} µL/h"
            )
        self._settle(keep_phase=rate_ul_per_h > 0.0)
        self._rate_ul_per_h = float(rate_ul_per_h)
        self.advance(self._t_s)

    def set_direction(self, t_s: float, direction: Direction) -> None:
        self.advance(t_s)
        if self._motor_on:
            raise ValueError("cannot change the pumping direction while the pump is running")
        self._direction = Direction(direction)

    def set_volume_limit(self, t_s: float, volume_ul: float) -> None:
        """Stop after ``volume_ul`` moved since the last start(); 0 = no limit."""
        self.advance(t_s)
        if not math.isfinite(volume_ul) or volume_ul < 0.0:
            raise ValueError(f"volume limit must be a finite number >= 0 µL, got {volume_ul!r}")
        self._settle(keep_phase=True)
        self._volume_limit_ul = float(volume_ul)
        self.advance(self._t_s)  # a limit already passed ends the run now

    def start(self, t_s: float) -> None:
        self.advance(t_s)
        if self._motor_on:
            return
        if self._rate_ul_per_h <= 0.0:
            raise ValueError("cannot start: the pumping rate is 0 µL/h (set a rate first)")
        self._settle(keep_phase=False)
        self._motor_on = True
        self._limit_reached = False
        self._run_steps = 0
        self.advance(self._t_s)  # nothing to move -> the run ends at once

    def stop(self, t_s: float) -> None:
        self.advance(t_s)
        self._settle(keep_phase=False)
        self._motor_on = False

    def set_stalled(self, t_s: float, stalled: bool) -> None:
        self.advance(t_s)
        if bool(stalled) == self._stalled:
            return  # idempotent: must not cost the fractional microstep in progress
        self._settle(keep_phase=False)
        self._stalled = bool(stalled)

    def load(self, t_s: float, volume_ul: float) -> None:
        """Refill: the syringe now holds ``volume_ul`` (only while the motor is off)."""
        self.advance(t_s)
        if self._motor_on:
            raise ValueError("cannot load the syringe while the pump is running")
        _check_load(volume_ul, self._syringe_volume_ul)
        self._new_epoch()
        self._epoch_content_ul = float(volume_ul)

    # ---- internals ---------------------------------------------------------------------------
    def _reported_remaining_ul(self, content_ul: float) -> float:
        # Less than one microstep's worth cannot be pushed out: it is dead volume, reported as
        # 0 so that "remaining == 0" means "empty" to every consumer.
        return content_ul if _whole_steps(content_ul, self._ul_per_step) > 0 else 0.0

    def _moving(self) -> bool:
        return self._motor_on and not self._stalled and self._rate_ul_per_h > 0.0

    def _sign(self) -> int:
        return 1 if self._direction is Direction.INFUSE else -1

    def _signed_rate_ul_per_h(self) -> float:
        return self._sign() * self._rate_ul_per_h if self._moving() else 0.0

    def _steps_per_s(self) -> float:
        if not self._moving():
            return 0.0
        return self._rate_ul_per_h / SECONDS_PER_HOUR / self._ul_per_step

    def _steps_to_next_event(self) -> int | None:
        """Steps from the anchor until the run must end (limit, empty/full), None if never."""
        epoch_ul = (self._steps - self._epoch_steps0) * self._ul_per_step
        content_ul = self._epoch_content_ul - epoch_ul
        if self._direction is Direction.INFUSE:
            room = _whole_steps(content_ul, self._ul_per_step)
        else:
            room = _whole_steps(self._syringe_volume_ul - content_ul, self._ul_per_step)
        if self._volume_limit_ul > 0.0:
            limit_steps = _whole_steps(self._volume_limit_ul, self._ul_per_step)
            return max(0, min(room, limit_steps - self._run_steps))
        return room

    def _moved_now(self) -> tuple[int, float]:
        """(whole steps, fractional phase) moved in the current segment at the internal time."""
        sps = self._steps_per_s()
        if sps <= 0.0:
            return 0, self._seg_phase
        x = self._seg_phase + sps * (self._t_s - self._seg_t0_s)
        moved = math.floor(x)
        target = self._steps_to_next_event()
        if target is not None and moved >= target:
            return target, 0.0  # rounding must never carry us past an event
        return moved, x - moved

    def _settle(self, *, keep_phase: bool) -> None:
        """Fold the current segment into the anchor and start a new segment now."""
        moved, phase = self._moved_now()
        self._steps += self._sign() * moved
        self._run_steps += moved
        self._seg_t0_s = self._t_s
        self._seg_phase = phase if keep_phase and self._moving() else 0.0

    def _fire_event(self) -> None:
        """The run ends at the internal time (which is the event time)."""
        target = self._steps_to_next_event()
        assert target is not None
        self._steps += self._sign() * target
        self._run_steps += target
        if self._volume_limit_ul > 0.0 and self._run_steps >= _whole_steps(
            self._volume_limit_ul, self._ul_per_step
        ):
            self._limit_reached = True
        self._motor_on = False
        self._seg_t0_s = self._t_s
        self._seg_phase = 0.0

    def _new_epoch(self) -> None:
        # Only called with the motor off, so the anchor is the current position.
        epoch_ul = (self._steps - self._epoch_steps0) * self._ul_per_step
        self._epoch_delivered_ul += epoch_ul
        self._epoch_content_ul -= epoch_ul
        self._epoch_steps0 = self._steps


def _ul_per_step(inner_diameter_mm: float, mech: MechanicsSpec) -> float:
    area_mm2 = math.pi * (inner_diameter_mm / 2.0) ** 2
    return area_mm2 * mech.mm_per_step  # mm³ == µL


def _check_diameter(inner_diameter_mm: float) -> None:
    if not (
        math.isfinite(inner_diameter_mm) and MIN_DIAMETER_MM <= inner_diameter_mm <= MAX_DIAMETER_MM
    ):
        raise ValueError(
            f"syringe inner diameter must be within {MIN_DIAMETER_MM}..{MAX_DIAMETER_MM} mm, "
            f"got {inner_diameter_mm!r}"
        )


def _check_load(volume_ul: float, syringe_volume_ul: float) -> None:
    if not (math.isfinite(volume_ul) and 0.0 <= volume_ul <= syringe_volume_ul):
        raise ValueError(
            f"loaded volume must be within 0..{syringe_volume_ul!r} µL (the syringe volume), "
            f"got {volume_ul!r}"
        )
