"""The dosing controller's core: therapy state machine and dose accounting (no rclpy).

Rules this module keeps (DESIGN safety invariants):

* Any active CRITICAL alarm, from any source, puts therapy in ALARM and the command to STOP.
  ALARM is latched: it ends only with :meth:`DosingCore.clear_alarms`, which leaves therapy
  SUSPENDED; delivery restarts only with an explicit :meth:`DosingCore.resume` (invariant 2).
* Delivered volume and dose come from the device's cumulative volume counter only, never from
  what was commanded (invariant 6).

The state is derived from a few facts, in priority order, so no transition can forget one:
ALARM (latched alarm) > NO_PROGRAM > EMPTY (reservoir at 0) > SUSPENDED (not started, suspended,
or needing a resume after an alarm/refill) > RUNNING.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass
from typing import Final

from pump_rig.core.program import TherapyProgram
from pump_rig.core.pump_types import SECONDS_PER_DAY, SECONDS_PER_HOUR, PumpAction

__all__ = [
    "CORE_ALARM_CODES",
    "INVALID_DEVICE_VOLUME",
    "LOW_RESERVOIR",
    "RESERVOIR_EMPTY",
    "VOLUME_COUNTER_RESET",
    "AlarmEvent",
    "AlarmSeverity",
    "CommandIntent",
    "DoseSnapshot",
    "DosingCore",
    "TherapyError",
    "TherapyState",
    "dose_ug_from_volume_ul",
]

_UL_PER_ML: Final = 1000.0

# Alarm codes this core raises itself (contract codes first, then additions).
LOW_RESERVOIR: Final = "LOW_RESERVOIR"
RESERVOIR_EMPTY: Final = "RESERVOIR_EMPTY"
# Added codes (DESIGN allows additions): the device reported something unusable.
INVALID_DEVICE_VOLUME: Final = "INVALID_DEVICE_VOLUME"
VOLUME_COUNTER_RESET: Final = "VOLUME_COUNTER_RESET"
CORE_ALARM_CODES: Final = frozenset(
    {LOW_RESERVOIR, RESERVOIR_EMPTY, INVALID_DEVICE_VOLUME, VOLUME_COUNTER_RESET}
)


class TherapyState(enum.IntEnum):
    """Values match pump_rig_interfaces/msg/DoseStatus."""

    RUNNING = 0
    SUSPENDED = 1
    ALARM = 2
    EMPTY = 3
    NO_PROGRAM = 4


class AlarmSeverity(enum.IntEnum):
    """Values match pump_rig_interfaces/msg/Alarm."""

    INFO = 0
    WARNING = 1
    CRITICAL = 2


class TherapyError(Exception):
    """A therapy request was refused; the message says why. Nothing was changed."""


@dataclass(frozen=True)
class CommandIntent:
    """What the controller wants the pump to do now (becomes a PumpCommand)."""

    action: PumpAction
    flow_rate_ul_per_h: float
    # 0 = none. Basal commands carry none: the rate bounds them, and the motor driver refuses
    # per-command limits above its bolus-sized maximum. Boluses (later) will carry one.
    volume_limit_ul: float
    reason: str


@dataclass(frozen=True)
class AlarmEvent:
    """An alarm this core raised (active=True) or cleared (active=False)."""

    code: str
    severity: int  # AlarmSeverity value
    active: bool
    message: str


@dataclass(frozen=True)
class DoseSnapshot:
    """Everything DoseStatus carries, at one instant."""

    therapy_state: TherapyState
    program: str
    drug: str
    concentration_ug_per_ml: float
    basal_rate_ul_per_h: float
    delivered_volume_ul: float
    delivered_dose_24h_ug: float
    reservoir_volume_ul: float
    boluses_24h: int
    prescribed_volume_ul: float
    active_alarms: tuple[str, ...]


def dose_ug_from_volume_ul(volume_ul: float, concentration_ug_per_ml: float) -> float:
    return volume_ul / _UL_PER_ML * concentration_ug_per_ml


@dataclass(frozen=True)
class _ExternalAlarm:
    code: str
    severity: AlarmSeverity
    source: str


class DosingCore:
    """Therapy state machine with dose accounting. Every method takes the time (seconds).

    Time normally only moves forward; if it jumps back (a replayed or restarted clock),
    nothing is integrated over the negative interval.
    """

    def __init__(self, *, t_s: float, program: TherapyProgram | None = None) -> None:
        self._t_last_s = t_s
        self._program: TherapyProgram | None = None
        self._run_requested = False
        self._suspend_reason = "not started"
        self._latched_alarm: str | None = None  # why we are in ALARM
        self._external_alarms: dict[tuple[str, str], _ExternalAlarm] = {}
        self._core_alarms: dict[str, AlarmEvent] = {}
        self._events: list[AlarmEvent] = []

        self._device_baseline_ul: float | None = None
        self._delivered_volume_ul = 0.0
        self._reservoir_volume_ul = 0.0
        self._prescribed_volume_ul = 0.0
        # (t_s, dose_ug) per positive device delta; summed over the last 24 h.
        self._dose_window: deque[tuple[float, float]] = deque()
        self._dose_window_sum_ug = 0.0
        self._dose_window_pops = 0

        if program is not None:
            self.set_program(t_s, program)

    # --- commands from the outside -----------------------------------------------------------

    def set_program(self, t_s: float, program: TherapyProgram) -> None:
        """Replace the whole program; dose history and the device baseline are kept.

        The reservoir takes the program's volume (the program file states the fill). The first
        program starts therapy (unless an alarm is latched); a later one keeps a SUSPENDED or
        ALARM state, and after EMPTY therapy waits SUSPENDED for an explicit resume.
        """
        self._advance(t_s)
        first = self._program is None
        self._program = program
        self._reservoir_volume_ul = program.reservoir_volume_ul
        if first and self._latched_alarm is None:
            self._run_requested = True
        self._update_reservoir_alarms()

    def suspend(self, t_s: float, reason: str = "") -> None:
        """Stop delivery until :meth:`resume`. Always allowed, in every state."""
        self._advance(t_s)
        self._run_requested = False
        self._suspend_reason = f"suspended: {reason}" if reason else "suspended"

    def resume(self, t_s: float) -> None:
        """Restart delivery; :class:`TherapyError` (and no change) if it is not safe to."""
        self._advance(t_s)
        critical = [a for a in self._external_alarms.values() if a.severity >= 2]
        if critical:
            names = ", ".join(sorted(f"{a.code} ({a.source})" for a in critical))
            raise TherapyError(f"critical alarm still active: {names}")
        if self._latched_alarm is not None:
            raise TherapyError(f"in ALARM ({self._latched_alarm}): clear alarms first")
        if self._program is None:
            raise TherapyError("no program loaded")
        if self._reservoir_volume_ul <= 0.0:
            raise TherapyError("reservoir empty: load a program with a filled reservoir")
        self._run_requested = True

    def on_alarm(self, t_s: float, code: str, severity: int, active: bool, source: str) -> None:
        """An alarm from another node. Any active CRITICAL one latches ALARM (stops the pump).

        Codes this core owns (:data:`CORE_ALARM_CODES`) are ignored: they are this core's own
        alarms echoed back on the ``alarms`` topic, and the core already acts on them. INFO
        alarms are not remembered. An unknown severity above CRITICAL counts as CRITICAL.
        """
        self._advance(t_s)
        if code in CORE_ALARM_CODES:
            return
        sev = AlarmSeverity.CRITICAL if severity >= AlarmSeverity.CRITICAL else severity
        key = (source, code)
        if not active:
            # The condition ended; a latched ALARM stays until clear_alarms.
            self._external_alarms.pop(key, None)
            return
        if sev <= AlarmSeverity.INFO:
            return
        self._external_alarms[key] = _ExternalAlarm(code, AlarmSeverity(sev), source)
        if sev == AlarmSeverity.CRITICAL and self._latched_alarm is None:
            self._latched_alarm = f"{code} from {source}"

    def clear_alarms(self, t_s: float) -> None:
        """Forget remembered alarms; ALARM becomes SUSPENDED (never RUNNING: resume is needed).

        Condition alarms this core owns (LOW_RESERVOIR, RESERVOIR_EMPTY) stay while their
        condition holds; one-shot notices (VOLUME_COUNTER_RESET) are cleared.
        """
        self._advance(t_s)
        self._external_alarms.clear()
        if self._latched_alarm is not None:
            self._suspend_reason = f"alarm cleared ({self._latched_alarm}): resume to restart"
            self._latched_alarm = None
            self._run_requested = False
        self._set_core_alarm(VOLUME_COUNTER_RESET, AlarmSeverity.WARNING, False, "cleared")

    def on_device_volume(self, t_s: float, delivered_volume_ul: float) -> None:
        """Account the device's CUMULATIVE delivered volume (PumpState.delivered_volume_ul).

        The first value only sets the baseline. A positive delta is delivered volume. A
        decrease means the device's counter restarted: re-baseline without counting (and warn).
        NaN/inf are ignored (the baseline is kept, so the next good value counts everything).
        """
        self._advance(t_s)
        if not math.isfinite(delivered_volume_ul):
            self._set_core_alarm(
                INVALID_DEVICE_VOLUME,
                AlarmSeverity.WARNING,
                True,
                f"device reported delivered volume {delivered_volume_ul!r}; ignored",
            )
            return
        self._set_core_alarm(INVALID_DEVICE_VOLUME, AlarmSeverity.WARNING, False, "valid again")
        baseline = self._device_baseline_ul
        self._device_baseline_ul = delivered_volume_ul
        if baseline is None:
            return
        delta_ul = delivered_volume_ul - baseline
        if delta_ul < 0.0:
            self._set_core_alarm(
                VOLUME_COUNTER_RESET,
                AlarmSeverity.WARNING,
                True,
                f"device volume counter went back from {baseline:.3f} to "
                f"{delivered_volume_ul:.3f} µL; re-baselined",
            )
            return
        if delta_ul == 0.0:
            return
        self._delivered_volume_ul += delta_ul
        # Volume delivered with no program loaded has no known drug: it counts as volume only.
        concentration = self._program.concentration_ug_per_ml if self._program else 0.0
        self._add_dose(t_s, dose_ug_from_volume_ul(delta_ul, concentration))
        if self._program is not None:
            self._reservoir_volume_ul = max(0.0, self._reservoir_volume_ul - delta_ul)
            self._update_reservoir_alarms()

    # --- outputs -----------------------------------------------------------------------------

    @property
    def state(self) -> TherapyState:
        if self._latched_alarm is not None:
            return TherapyState.ALARM
        if self._program is None:
            return TherapyState.NO_PROGRAM
        if self._reservoir_volume_ul <= 0.0:
            return TherapyState.EMPTY
        if not self._run_requested:
            return TherapyState.SUSPENDED
        return TherapyState.RUNNING

    @property
    def program(self) -> TherapyProgram | None:
        return self._program

    def command(self, t_s: float) -> CommandIntent:
        """INFUSE at the basal rate while RUNNING, else STOP with the reason."""
        self._advance(t_s)
        state = self.state
        if state is TherapyState.RUNNING and self._program is not None:
            return CommandIntent(
                PumpAction.INFUSE,
                self._program.basal_rate_ul_per_h,
                0.0,
                f"basal {self._program.basal_rate_ul_per_h:.6g} µL/h ({self._program.name})",
            )
        reasons = {
            TherapyState.ALARM: f"alarm: {self._latched_alarm}",
            TherapyState.NO_PROGRAM: "no program",
            TherapyState.EMPTY: "reservoir empty",
            TherapyState.SUSPENDED: self._suspend_reason,
        }
        return CommandIntent(PumpAction.STOP, 0.0, 0.0, reasons[state])

    def snapshot(self, t_s: float) -> DoseSnapshot:
        self._advance(t_s)
        program = self._program
        active = {a.code for a in self._external_alarms.values()}
        active |= {code for code, ev in self._core_alarms.items() if ev.active}
        return DoseSnapshot(
            therapy_state=self.state,
            program=program.name if program else "",
            drug=program.drug if program else "",
            concentration_ug_per_ml=program.concentration_ug_per_ml if program else 0.0,
            basal_rate_ul_per_h=program.basal_rate_ul_per_h if program else 0.0,
            delivered_volume_ul=self._delivered_volume_ul,
            delivered_dose_24h_ug=self._dose_window_sum_ug,
            reservoir_volume_ul=self._reservoir_volume_ul,
            boluses_24h=0,  # boluses arrive with a later issue
            prescribed_volume_ul=self._prescribed_volume_ul,
            active_alarms=tuple(sorted(active)),
        )

    def drain_alarm_events(self) -> list[AlarmEvent]:
        """Alarms this core raised or cleared since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    # --- internals ---------------------------------------------------------------------------

    def _advance(self, t_s: float) -> None:
        """Move time on: integrate the prescription and expire old dose from the 24 h window."""
        dt_s = t_s - self._t_last_s
        if dt_s > 0.0 and self._program is not None:
            self._prescribed_volume_ul += (
                self._program.basal_rate_ul_per_h * dt_s / SECONDS_PER_HOUR
            )
        self._t_last_s = t_s
        self._expire_dose(t_s)

    def _add_dose(self, t_s: float, dose_ug: float) -> None:
        self._dose_window.append((t_s, dose_ug))
        self._dose_window_sum_ug += dose_ug

    def _expire_dose(self, t_s: float) -> None:
        # An increment reported at t counts while now < t + 24 h, and not from t + 24 h on.
        window = self._dose_window
        popped = False
        while window and window[0][0] + SECONDS_PER_DAY <= t_s:
            self._dose_window_sum_ug -= window.popleft()[1]
            self._dose_window_pops += 1
            popped = True
        if not popped:
            return
        # Re-sum now and then so months of add/subtract cannot drift.
        if not window or self._dose_window_pops >= max(1024, len(window)):
            self._dose_window_sum_ug = math.fsum(d for _, d in window)
            self._dose_window_pops = 0

    def _update_reservoir_alarms(self) -> None:
        program = self._program
        if program is None:
            return
        volume = self._reservoir_volume_ul
        empty = volume <= 0.0
        self._set_core_alarm(
            RESERVOIR_EMPTY,
            AlarmSeverity.CRITICAL,
            empty,
            "reservoir empty: delivery stopped" if empty else "reservoir no longer empty",
        )
        if empty:
            self._run_requested = False
            self._suspend_reason = "reservoir was empty: resume to restart"
        low = volume <= program.low_reservoir_ul
        self._set_core_alarm(
            LOW_RESERVOIR,
            AlarmSeverity.WARNING,
            low,
            f"reservoir {volume:.1f} µL <= low alarm {program.low_reservoir_ul:g} µL"
            if low
            else f"reservoir {volume:.1f} µL above low alarm",
        )

    def _set_core_alarm(self, code: str, severity: int, active: bool, message: str) -> None:
        """Record a core alarm and queue an event, only when its active flag changes."""
        previous = self._core_alarms.get(code)
        if (previous.active if previous else False) == active:
            return
        event = AlarmEvent(code, int(severity), active, message)
        self._core_alarms[code] = event
        self._events.append(event)
