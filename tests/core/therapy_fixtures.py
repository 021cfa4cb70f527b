"""Shared pieces for the therapy-engine simulations: programs, a perfect device, a rig loop.

The device follows the engine's :class:`CommandIntent` exactly: INFUSE at ``flow_rate_ul_per_h``
until ``volume_limit_ul`` has been delivered since the command was issued (0 = no limit), or
STOP. A command is "issued" when :meth:`TherapyEngine.command` returns a different object (the
engine returns the same object while nothing needs re-sending). Between two steps the device is
integrated exactly, stopping exactly at the volume limit; it reports its cumulative delivered
volume through :meth:`TherapyEngine.on_device_volume` at every step.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Final

import yaml

from pump_rig.core.drug_library import DrugLibrary
from pump_rig.core.program import TherapyProgram, default_drug_library, parse_program
from pump_rig.core.pump_types import SECONDS_PER_HOUR, PumpAction
from pump_rig.core.syringe_pump import SyringePump
from pump_rig.core.therapy_engine import CommandIntent, EngineConfig, TherapyEngine
from pump_rig.verification.safety_runner import journal_dir as tmpfs_dir

__all__ = [
    "LIBRARY",
    "T0",
    "Rig",
    "SimDevice",
    "WindowCheck",
    "continuous_doc",
    "dump_program",
    "flex_doc",
    "journal_dir",
    "make_program",
]

LIBRARY: Final[DrugLibrary] = default_drug_library()
# A realistic ROS time (Tuesday 2023-11-14 22:13:20 UTC): not aligned to any midnight.
T0: Final = 1_700_000_000.0


# --- programs ---------------------------------------------------------------------------------


def flex_doc(
    *,
    concentration: float,
    groups: Sequence[tuple[str | list[str], Sequence[tuple[str, float]]]],
    name: str = "flex",
    drug: str = "baclofen",
    max_daily: float | None = None,
    bolus: tuple[float, float, float, int] | None = None,
    utc_offset_h: float | None = None,
    capacity: float = 20000.0,
    volume: float = 18000.0,
    low: float = 2000.0,
) -> dict[str, Any]:
    """A flex program as a YAML document. ``groups``: (days, [(at "HH:MM", µg/h), ...]).

    ``bolus``: (dose µg, duration min, lockout min, max per 24 h).
    """
    doc: dict[str, Any] = {
        "name": name,
        "drug": drug,
        "concentration_ug_per_ml": float(concentration),
        "mode": "flex",
    }
    if utc_offset_h is not None:
        doc["utc_offset_h"] = float(utc_offset_h)
    doc["schedule"] = [
        {
            "days": days if isinstance(days, str) else list(days),
            "steps": [{"at": at, "dose_rate_ug_per_h": float(rate)} for at, rate in steps],
        }
        for days, steps in groups
    ]
    _common(doc, max_daily, bolus, capacity, volume, low)
    return doc


def continuous_doc(
    *,
    concentration: float,
    daily_dose: float,
    name: str = "continuous",
    drug: str = "baclofen",
    max_daily: float | None = None,
    bolus: tuple[float, float, float, int] | None = None,
    capacity: float = 20000.0,
    volume: float = 18000.0,
    low: float = 2000.0,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "drug": drug,
        "concentration_ug_per_ml": float(concentration),
        "mode": "continuous",
        "daily_dose_ug": float(daily_dose),
    }
    _common(doc, max_daily, bolus, capacity, volume, low)
    return doc


def _common(
    doc: dict[str, Any],
    max_daily: float | None,
    bolus: tuple[float, float, float, int] | None,
    capacity: float,
    volume: float,
    low: float,
) -> None:
    if max_daily is not None:
        doc["max_daily_dose_ug"] = float(max_daily)
    if bolus is not None:
        dose, duration_min, lockout_min, count = bolus
        doc["patient_bolus"] = {
            "dose_ug": float(dose),
            "duration_min": float(duration_min),
            "lockout_min": float(lockout_min),
            "max_per_24h": int(count),
        }
    doc["reservoir"] = {
        "capacity_ul": float(capacity),
        "volume_ul": float(volume),
        "low_alarm_ul": float(low),
    }


def dump_program(doc: Mapping[str, Any]) -> str:
    # safe_dump quotes "07:30" (YAML 1.1 would read it as a number), as the parser wants.
    return yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=False)


def make_program(doc: Mapping[str, Any]) -> TherapyProgram:
    return parse_program(dump_program(doc), library=LIBRARY)


def journal_dir() -> AbstractContextManager[Path]:
    """A fresh directory for a dose journal (on tmpfs when there is one)."""
    return tmpfs_dir(prefix="therapy-test-")


# --- the device -------------------------------------------------------------------------------


class SimDevice:
    """Follows the last command exactly; ``factor`` scales what it really pushes.

    ``honour_limit=False`` makes a broken device that ignores volume limits.
    """

    def __init__(self, *, factor: float = 1.0, honour_limit: bool = True) -> None:
        self.factor = factor
        self.honour_limit = honour_limit
        self.total_ul = 0.0
        self.intent: CommandIntent | None = None
        self.since_ul = 0.0  # delivered since the current command was issued

    def follow(self, intent: CommandIntent) -> None:
        if intent is not self.intent:
            self.intent = intent
            self.since_ul = 0.0

    def run(self, dt_s: float) -> float:
        """Run for ``dt_s`` seconds; return the volume pushed."""
        intent = self.intent
        if intent is None or intent.action is not PumpAction.INFUSE or dt_s <= 0:
            return 0.0
        volume = intent.flow_rate_ul_per_h * self.factor * dt_s / SECONDS_PER_HOUR
        if self.honour_limit and intent.volume_limit_ul > 0:
            volume = max(0.0, min(volume, intent.volume_limit_ul - self.since_ul))
        self.since_ul += volume
        self.total_ul += volume
        return volume


# --- the loop ---------------------------------------------------------------------------------

StepHook = Callable[[float, float, float], None]  # (t_start, t_end, volume pushed)


class Rig:
    """An engine (journaled when ``journal`` is given), a device, and simulated time.

    Per step: the device runs the current command up to the new time, reports its volume,
    then (after any actions the caller takes at that time) :meth:`issue` fetches the command.
    """

    def __init__(
        self,
        *,
        t0: float = T0,
        journal: Path | None = None,
        config: EngineConfig | None = None,
        device: SimDevice | None = None,
        on_step: StepHook | None = None,
    ) -> None:
        self.t = t0
        self.journal = journal
        self.config = config or EngineConfig()
        self.device = device or SimDevice()
        self.on_step = on_step
        self.engine = self._open(t0)
        self.engine.on_device_volume(t0, self.device.total_ul)  # the baseline
        self.intents: list[tuple[float, CommandIntent]] = []  # each command, when issued
        self.issue()

    def _open(self, t_s: float) -> TherapyEngine:
        if self.journal is None:
            return TherapyEngine(t_s=t_s, library=LIBRARY, config=self.config)
        return TherapyEngine.open(
            t_s=t_s, library=LIBRARY, journal_path=self.journal, config=self.config
        )

    def issue(self) -> CommandIntent:
        intent = self.engine.command(self.t)
        if intent is not self.device.intent:
            self.intents.append((self.t, intent))
        self.device.follow(intent)
        return intent

    def step_to(self, t_next: float) -> float:
        """Run the device to ``t_next`` and report; return the volume pushed."""
        t_start = self.t
        volume = self.device.run(t_next - t_start)
        self.t = t_next
        if self.on_step is not None:
            self.on_step(t_start, t_next, volume)
        self.engine.on_device_volume(t_next, self.device.total_ul)
        return volume

    def advance(self, t_end: float, max_step_s: float, *, exact: bool = False) -> None:
        """Step to ``t_end`` in steps of at most ``max_step_s``; with ``exact``, also step at
        every time the engine says its command changes (``snapshot().next_change_s``)."""
        while self.t < t_end:
            t_next = min(t_end, self.t + max_step_s)
            if exact:
                change = self.engine.snapshot(self.t).next_change_s
                if change is not None and self.t + 1e-6 < change < t_next:
                    t_next = change
            self.step_to(t_next)
            self.issue()

    def restart(self) -> TherapyEngine:
        """Clean controller restart: close the engine and open a new one from its journal.

        Returns the old (closed) engine; the caller fetches the new engine's command
        (:meth:`issue`) when it is done comparing."""
        old = self.engine
        old.close()
        self.engine = self._open(self.t)
        return old


class WindowCheck:
    """Independent rolling-24 h account of the dose that left the tip.

    A step's dose counts at the step's END (when the device reported it), so the sum over
    (t - 24 h, t] is never less than what was really delivered in that window. Prefix sums:
    their rounding is far below the 1e-9 relative the tests allow.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.prefix: list[float] = [0.0]

    def add(self, t_s: float, dose_ug: float) -> None:
        if self.times and t_s < self.times[-1]:
            raise ValueError("time went back")
        self.times.append(t_s)
        self.prefix.append(self.prefix[-1] + dose_ug)

    def window_ug(self, t_s: float) -> float:
        """Dose reported in (t - 24 h, t]."""
        lo = bisect.bisect_right(self.times, t_s - 86400.0)
        hi = bisect.bisect_right(self.times, t_s)
        if hi <= lo:
            return 0.0
        return math.fsum([self.prefix[hi], -self.prefix[lo]])


def full_syringe(inner_diameter_mm: float, volume_ul: float, t0_s: float) -> SyringePump:
    """A plunger model of a full syringe on the open stepper pump (whole microsteps)."""
    return SyringePump(
        inner_diameter_mm=inner_diameter_mm,
        syringe_volume_ul=volume_ul,
        loaded_volume_ul=volume_ul,
        max_rate_ul_per_h=100000.0,
        t0_s=t0_s,
    )
