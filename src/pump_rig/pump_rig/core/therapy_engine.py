"""The therapy engine: what the pump should do now, and the sacred dose accounts.

Everything is pure and takes the time (ROS time, seconds). The engine

* runs the program's weekly dose schedule, patient boluses (lockout, count per 24 h),
  clinician, priming and bridge boluses, refills and suspensions;
* accounts delivered volume from the DEVICE's reports only (DESIGN invariant 6), pushes it
  through the catheter line model, and counts as patient dose the drug that leaves the tip,
  each drug as itself (after a refill with another drug the line delivers the old one first);
* never lets the rolling 24 h dose of any drug pass its daily maximum (invariant 3): boluses
  are refused, and every command near the maximum carries a device volume limit and an
  absolute stop on the device's own counter (``stop_at_device_ul``), so what the previous
  command delivers before a new one takes effect is counted whatever the command latency, and
  one device step short of the room, so a device stopping on whole steps cannot pass it;
* journals every change and every delivery bucket (fsync'd), each record with the state it
  leaves (the open bucket and the device counter booked so far included, so a crash loses no
  booked volume), and rebuilds itself exactly from the journal on restart (invariant 4): a
  clean restart is invisible to every later decision. A journal it cannot trust, or one that
  lost its last records (its high-water mark says so), stops all dosing until an operator
  accepts the loss.

It never raises a rate to make up a shortfall: it raises ``UNDER_DELIVERY`` instead.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from pump_rig.core.catheter_line import CatheterLine, Segment
from pump_rig.core.dose_journal import DoseJournal, JournalError, JournalRollbackError
from pump_rig.core.dose_ledger import DeliveryBucket, DoseLedger, DoseSource
from pump_rig.core.drug_library import Drug, DrugLibrary, DrugLibraryError
from pump_rig.core.program import (
    DEFAULT_MAX_RATE_UL_PER_H,
    TherapyProgram,
    parse_program,
    titration_problem,
)
from pump_rig.core.pump_types import SECONDS_PER_DAY, SECONDS_PER_HOUR, PumpAction
from pump_rig.core.rig_files import OwnerLock

__all__ = [
    "CORE_ALARM_CODES",
    "AlarmEvent",
    "AlarmSeverity",
    "BolusAnswer",
    "CommandIntent",
    "EngineConfig",
    "EngineSnapshot",
    "RefillResult",
    "TherapyEngine",
    "TherapyError",
    "TherapyState",
]

_UL_PER_ML: Final = 1000.0

LOW_RESERVOIR: Final = "LOW_RESERVOIR"
RESERVOIR_EMPTY: Final = "RESERVOIR_EMPTY"
DOSE_LIMIT: Final = "DOSE_LIMIT"
UNDER_DELIVERY: Final = "UNDER_DELIVERY"
# Added codes (DESIGN allows additions).
JOURNAL_FAULT: Final = "JOURNAL_FAULT"
REFILL_DISCREPANCY: Final = "REFILL_DISCREPANCY"
INVALID_DEVICE_VOLUME: Final = "INVALID_DEVICE_VOLUME"
VOLUME_COUNTER_RESET: Final = "VOLUME_COUNTER_RESET"
DEVICE_CHANGED: Final = "DEVICE_CHANGED"
CORE_ALARM_CODES: Final = frozenset(
    {
        LOW_RESERVOIR,
        RESERVOIR_EMPTY,
        DOSE_LIMIT,
        UNDER_DELIVERY,
        JOURNAL_FAULT,
        REFILL_DISCREPANCY,
        INVALID_DEVICE_VOLUME,
        VOLUME_COUNTER_RESET,
        DEVICE_CHANGED,
    }
)
# One-shot notices that clear_alarms forgets (the others follow their condition).
_LATCHED_NOTICES: Final = (UNDER_DELIVERY, REFILL_DISCREPANCY, VOLUME_COUNTER_RESET)

_MAX_REMEMBERED_REQUESTS: Final = 256
# The recent stretch of a command that must not fall behind either (s).
_UNDER_DELIVERY_WINDOW_S: Final = 300.0
# Room below this is none: what float rounding leaves of a window at its maximum.
_ROOM_EPS_UL: Final = 1e-9
_REL_EPS: Final = 1e-9
_SAME_AS_ISSUED: Final = "issued"  # journaled in place of the in-force command when it is that one


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
    """A request was refused; the message says why. Nothing was changed."""


@dataclass(frozen=True)
class EngineConfig:
    max_rate_ul_per_h: float = DEFAULT_MAX_RATE_UL_PER_H
    # Volume from the pump outlet to the catheter tip, and whether it holds drug at the start
    # (a primed line holds the first fill's drug; an unprimed one saline).
    line_dead_volume_ul: float = 200.0
    line_primed: bool = True
    # Delivery buckets are journaled at least this often (simulated seconds).
    bucket_s: float = 60.0
    # UNDER_DELIVERY when the device is behind the commanded volume by more than
    # tolerance_ul + tolerance_fraction × commanded, after grace_s of a command.
    under_delivery_tolerance_ul: float = 2.0
    under_delivery_tolerance_fraction: float = 0.05
    under_delivery_grace_s: float = 5.0
    # Basal commands carry a device volume limit when the 24 h headroom is less than this
    # much delivery (so the device itself stops at the daily maximum).
    dose_limit_horizon_s: float = 3600.0
    # Largest volume limit one command may carry (the motor driver's own limit).
    max_volume_per_command_ul: float = 2000.0
    # The smallest volume the pump moves (one step of the plunger; 0.041 µL for a 10 mL BD
    # syringe on the open stepper pump). A pump stops short of a volume limit by up to this, so
    # a bolus with no more than this left is complete: a smaller remainder could never be
    # delivered and would hold the basal up behind it.
    device_resolution_ul: float = 0.1


@dataclass(frozen=True)
class CommandIntent:
    """What the pump should do now (becomes a PumpCommand)."""

    action: PumpAction
    flow_rate_ul_per_h: float
    volume_limit_ul: float  # 0 = none
    reason: str
    # The device must stop when its cumulative counter (PumpState.delivered_volume_ul, the value
    # given to on_device_volume) reaches this; 0 = none. Unlike volume_limit_ul, which counts
    # from when the device applies the command, this counts what the previous command delivered
    # before this one took effect.
    stop_at_device_ul: float = 0.0


@dataclass(frozen=True)
class AlarmEvent:
    code: str
    severity: int
    active: bool
    message: str


@dataclass(frozen=True)
class BolusAnswer:
    granted: bool
    message: str
    dose_ug: float = 0.0
    volume_ul: float = 0.0
    next_allowed_in_s: float = -1.0


@dataclass(frozen=True)
class RefillResult:
    discarded_ul: float
    reservoir_volume_ul: float
    days_to_refill: float
    next_refill_s: float | None
    message: str


@dataclass(frozen=True)
class EngineSnapshot:
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
    daily_limit_ug: float
    dose_24h_by_source_ug: Mapping[str, float]
    delivered_dose_total_ug: float
    tip_concentration_ug_per_ml: float
    reservoir_capacity_ul: float
    days_to_refill: float
    next_refill_s: float | None
    next_change_s: float | None
    active_bolus: str
    detail: str
    # The device confirmed it runs a stop and no other command is on its way: what it
    # delivered is all booked (a change of drug or a flush waits for this).
    device_stopped: bool = False
    # After a journal rollback the line's content is unknown: nothing is dosed until a
    # refill with flush.
    line_unknown: bool = False
    # What the program and the granted boluses ordered, counted through alarms and stops
    # (not through an operator's suspension), delivered or not.
    ordered_volume_ul: float = 0.0


@dataclass
class _Bolus:
    source: DoseSource
    volume_ul: float  # to deliver
    dose_ug: float  # nominal
    rate_ul_per_h: float  # on top of basal
    delivered_ul: float = 0.0
    # When it started: a command carries the bolus it was made for, so what the device
    # delivers under it is credited to that bolus and no other.
    t0_s: float = 0.0

    @property
    def left_ul(self) -> float:
        return max(0.0, self.volume_ul - self.delivered_ul)

    def to_record(self) -> dict[str, Any]:
        return {
            "src": self.source.value,
            "vol": self.volume_ul,
            "dose": self.dose_ug,
            "rate": self.rate_ul_per_h,
            "done": self.delivered_ul,
            "t0": self.t0_s,
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> _Bolus:
        return cls(
            DoseSource(r["src"]), r["vol"], r["dose"], r["rate"], r["done"], r.get("t0", 0.0)
        )


@dataclass(frozen=True)
class _External:
    code: str
    severity: AlarmSeverity
    source: str


@dataclass
class _Issued:
    intent: CommandIntent
    basal_rate_ul_per_h: float
    bolus_rate_ul_per_h: float
    # Device total and time when the device was first seen running this command.
    applied_ul: float | None = None
    applied_t_s: float = 0.0
    # (time, device total) of the reports since, for the recent-window under-delivery check.
    reports: deque[tuple[float, float]] = field(default_factory=deque)
    # Rebuilt from the journal: the device ran it before the restart and runs the same again
    # (a restarted controller resends it under a new sequence), so what it delivers is
    # credited as this command's, not left to basal (a bolus would be given twice).
    restored: bool = False
    resent: bool = False  # ...and already sent anew with what is left of its limit
    bolus_t0_s: float | None = None  # the bolus it was made for (_Bolus.t0_s), if any

    def to_record(self) -> dict[str, Any]:
        i = self.intent
        return {
            "a": int(i.action),
            "rate": i.flow_rate_ul_per_h,
            "lim": i.volume_limit_ul,
            "why": i.reason,
            "stop": i.stop_at_device_ul,
            "basal": self.basal_rate_ul_per_h,
            "bolus": self.bolus_rate_ul_per_h,
            "ap": self.applied_ul,
            "apt": self.applied_t_s,
            "b0": self.bolus_t0_s,
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> _Issued:
        intent = CommandIntent(
            PumpAction(int(r["a"])), float(r["rate"]), float(r["lim"]), str(r["why"]), r["stop"]
        )
        applied = None if r["ap"] is None else float(r["ap"])
        return cls(
            intent,
            float(r["basal"]),
            float(r["bolus"]),
            applied,
            float(r["apt"]),
            restored=True,
            bolus_t0_s=r.get("b0", 0.0),  # older records: the bolus then running (t0 0)
        )


@dataclass
class _UnsureLine:
    """After an accepted journal rollback: what entered the line in the lost time is of an
    unknown fluid (a lost refill)."""

    ends_at_ul: float | None = None  # device total where that volume ends (its first report)
    unknown: bool = False  # nothing of the line is known: no dosing until it is flushed
    # Per drug, the strongest fluid the line or the reservoir held when the last record was
    # written (the high-water mark) or the kept records know: while the line is unknown,
    # what leaves it is booked as each of these (it may be any of them).
    strongest_ug_per_ml: dict[str, float] = field(default_factory=dict)

    def to_record(self) -> list[Any]:
        return [self.ends_at_ul, self.unknown, self.strongest_ug_per_ml]

    @classmethod
    def from_record(cls, r: list[Any]) -> _UnsureLine:
        strongest = {str(d): float(c) for d, c in dict(r[2]).items()} if len(r) > 2 else {}
        return cls(None if r[0] is None else float(r[0]), bool(r[1]), strongest)


class TherapyEngine:
    """Build with :meth:`open` (journaled) or directly (in memory, for tests and tools)."""

    def __init__(
        self,
        *,
        t_s: float,
        library: DrugLibrary,
        config: EngineConfig | None = None,
        journal: DoseJournal | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        # From open(): how many records the journal held (0: a new ledger), and where a
        # journal it replaced with a new ledger was kept.
        self.resumed_records = 0
        self.archived_journal: Path | None = None
        self._device_resolution_ul = 0.0  # as the device last reported it
        self.library = library
        self._journal = journal
        self._replaying = False
        self._t = t_s
        self._program: TherapyProgram | None = None
        self._drug: Drug | None = None
        self._res_drug = ""
        self._res_conc = 0.0
        self._res_volume = 0.0
        self._filled = False
        self._line: CatheterLine | None = None
        self._run = False
        self._why = "no program"
        self._latched: str | None = None
        self._fault: str | None = None
        self._external: dict[tuple[str, str], _External] = {}
        self._core_alarms: dict[str, AlarmEvent] = {}
        self._events: list[AlarmEvent] = []
        self._baseline: float | None = None
        self._baseline_t = t_s  # when the device reported the baseline
        self._device_total = 0.0  # device-reported volume accounted, since the ledger began
        self._ledger = DoseLedger(bucket_s=self.config.bucket_s)
        self._grants: deque[float] = deque()
        self._answers: OrderedDict[str, BolusAnswer] = OrderedDict()
        self._bolus: _Bolus | None = None
        self._bridge = False
        self._prescribed_ul = 0.0
        self._prescribed_by_day: dict[int, float] = {}
        # What the program and the granted boluses ordered while therapy was not suspended by
        # an operator, delivered or not: it goes on through alarms and an empty reservoir, so
        # delivered / ordered shows what they cost (prescribed_ul counts only while running).
        self._ordered_ul = 0.0
        self._overrides: list[tuple[float, str]] = []
        self._issued: _Issued | None = None
        # (time, µg/mL): a refill to a weaker fluid; what the device pushed before it, booked
        # later, enters the line at this (the old) concentration (see refill).
        self._unbooked_fill: tuple[float, float] | None = None
        # After an accepted journal rollback, until the unknown fluid has left the line.
        self._unsure_line: _UnsureLine | None = None
        # The command the device last confirmed running: until a newer one takes effect the
        # device keeps delivering this one's rates, so its bolus share is credited by it.
        self._in_force: _Issued | None = None
        # A command that may move the pump was issued (or, in a restarted engine, may still
        # run from before) and no report since has confirmed the device runs the latest one:
        # an older confirmed stop then proves nothing. Cleared by a report that confirms a
        # command this engine has issued.
        self._motion_unconfirmed = False
        self._commanded = False  # command() has been called since this engine was built
        # The device this ledger counts volume on (model, firmware, serial; journaled), and
        # another one answering on the port now: nothing is counted from it, nothing dosed.
        self._device_id: str | None = None
        self._other_device: str | None = None
        self._bolus_eta: tuple[_Bolus, float] | None = None  # see _next_change
        self._bridge_eta: tuple[float, float] | None = None  # (tip concentration, time)
        # The program of the drug a refill replaced, while a bridge delivers what of it is
        # left in the line (its rate and its daily maximum).
        self._bridge_program: TherapyProgram | None = None
        # After an accepted journal rollback: no bolus until the lost records' grants and
        # doses have surely left the 24 h window.
        self._bolus_hold_until_s: float | None = None

    # --- construction with a journal --------------------------------------------------------

    @classmethod
    def open(
        cls,
        *,
        t_s: float,
        library: DrugLibrary,
        journal_path: Path | None,
        config: EngineConfig | None = None,
        initial_program: TherapyProgram | None = None,
        confirm_rollback: str = "",
        journal_lock: OwnerLock | None = None,
        new_ledger: bool = False,
    ) -> TherapyEngine:
        """Engine restored from ``journal_path`` (created if new; None = not persisted).

        The journal is locked for this engine (``journal_lock``: by the caller already);
        another process holding it raises :class:`~pump_rig.core.rig_files.LockHeldError`.
        ``new_ledger`` keeps an existing journal as a dated copy and starts an empty one.

        A journal that cannot be trusted gives an engine that refuses to dose and shows a
        critical ``JOURNAL_FAULT`` until the journal is repaired and the node restarted.
        One that lost its last records likewise, until it is opened again with
        ``confirm_rollback`` (the operator's reason, journaled): therapy then stays suspended
        until resumed, and no bolus is given until 24 h after the last lost record.
        ``initial_program`` is applied only to a ledger that has no program yet.
        """
        if journal_path is None:
            engine = cls(t_s=t_s, library=library, config=config)
        else:
            try:
                journal, records = DoseJournal.open(
                    journal_path,
                    t_s=t_s,
                    accept_rollback=confirm_rollback,
                    lock=journal_lock,
                    new_ledger=new_ledger,
                )
            except (JournalError, OSError) as exc:
                engine = cls(t_s=t_s, library=library, config=config)
                hint = ""
                if isinstance(exc, JournalRollbackError):
                    hint = "; confirm the loss with a reason to go on"
                engine._enter_fault(f"{exc}{hint}")
                return engine
            engine = cls(t_s=t_s, library=library, config=config, journal=journal)
            engine.resumed_records = len(records)
            engine.archived_journal = journal.archived_as
            try:
                engine._restore(records)
            except Exception as exc:
                # Checksummed records can still hold a state this version cannot rebuild (an
                # older writer, a hand edit): whatever the replay trips on, refuse to dose.
                journal.close()
                engine = cls(t_s=t_s, library=library, config=config)
                engine._enter_fault(f"dose journal {journal_path}: cannot replay ({exc})")
                return engine
        if initial_program is not None and engine._program is None and engine._fault is None:
            engine.set_program(max(t_s, engine._t), initial_program)
        return engine

    def close(self) -> None:
        """Journal the state (what was prescribed since the last record, even while nothing
        was delivered, and the open bucket as it is: closing it early would move the bucket
        ends a restarted engine decides on), then close the journal (a clean shutdown)."""
        if self._fault is None and self._journal is not None:
            self._append({"k": "close", "s": self._state_record()})
        if self._journal is not None:
            self._journal.close()
            self._journal = None  # closed for good: nothing more is journaled

    @classmethod
    def replay(
        cls,
        records: list[dict[str, Any]],
        *,
        t_s: float,
        library: DrugLibrary,
        config: EngineConfig | None = None,
    ) -> TherapyEngine:
        """An engine rebuilt in memory from a journal's records (after its header), as a
        restarted controller would rebuild it, to look at; it journals nothing."""
        engine = cls(t_s=t_s, library=library, config=config)
        engine._restore(records)
        engine.resumed_records = len(records)
        return engine

    def drop(self) -> None:
        """Let go of the journal as a crash would: nothing more is written, the file is
        closed and its lock released (how tests and the safety harness crash an engine)."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def _enter_fault(self, reason: str) -> None:
        self._fault = reason
        self._run = False
        self._set_core_alarm(JOURNAL_FAULT, AlarmSeverity.CRITICAL, True, reason)

    # --- commands from the outside ----------------------------------------------------------

    def set_program(
        self,
        t_s: float,
        program: TherapyProgram,
        *,
        override_titration: bool = False,
        override_reason: str = "",
    ) -> str:
        """Apply a whole program, or raise :class:`TherapyError` and change nothing."""
        self._advance(t_s)
        self._refuse_if_fault()
        drug = self._library_drug(program.drug)
        if self._filled:
            if program.drug != self._res_drug:
                raise TherapyError(
                    f"drug: the program is for {program.drug} but the reservoir holds "
                    f"{self._res_drug}; refill with {program.drug} first"
                )
            if not math.isclose(program.concentration_ug_per_ml, self._res_conc, rel_tol=1e-12):
                raise TherapyError(
                    f"concentration_ug_per_ml: the program says "
                    f"{program.concentration_ug_per_ml:g} µg/mL but the reservoir holds "
                    f"{self._res_conc:g} µg/mL (set by the last fill)"
                )
        problem = titration_problem(self._program, program, drug)
        note = ""
        if problem:
            if not override_titration:
                raise TherapyError(f"titration limit: {problem}; an explicit override is needed")
            if not override_reason.strip():
                raise TherapyError("titration override needs a reason (it is recorded)")
            note = f"; titration limit overridden ({override_reason.strip()})"
        first = not self._filled  # the ledger's first program starts therapy
        # The open bucket belongs to the old local time: close it before the offset changes
        # (the replay applies it before the program record too).
        self._flush_bucket()
        self._program, self._drug = program, drug
        self._ledger.utc_offset_s = program.schedule.utc_offset_s
        fill = ""
        if not self._filled:
            self._fill(program.drug, program.concentration_ug_per_ml, program.reservoir_volume_ul)
            fill = f"; reservoir filled with {program.reservoir_volume_ul:g} µL"
        if first and self._latched is None:
            self._run = True
        if problem:
            self._overrides.append((t_s, override_reason.strip()))
        self._record(
            "program",
            yaml=program.to_yaml(),
            override=bool(problem),
            reason=override_reason.strip() if problem else "",
        )
        self._update_reservoir_alarms()
        return f"program {program.name!r} applied: {program.summary()}{fill}{note}"

    def suspend(self, t_s: float, reason: str = "") -> None:
        """Stop delivery until :meth:`resume`; an active bolus is abandoned. Always allowed."""
        self._advance(t_s)
        self._run = False
        self._why = f"suspended: {reason}" if reason else "suspended"
        self._bolus = None
        self._record("suspend", why=self._why)

    def resume(self, t_s: float) -> None:
        self._advance(t_s)
        self._refuse_if_fault()
        critical = [a for a in self._external.values() if a.severity >= AlarmSeverity.CRITICAL]
        if critical:
            names = ", ".join(sorted(f"{a.code} ({a.source})" for a in critical))
            raise TherapyError(f"critical alarm still active: {names}")
        if self._latched is not None:
            raise TherapyError(f"in ALARM ({self._latched}): clear alarms first")
        if self._program is None:
            raise TherapyError("no program loaded")
        if self._res_volume <= 0.0:
            raise TherapyError("reservoir empty: refill first")
        self._run = True
        self._record("resume")

    def on_alarm(self, t_s: float, code: str, severity: int, active: bool, source: str) -> None:
        """An alarm from another node; an active CRITICAL one latches ALARM (stops the pump)."""
        self._advance(t_s)
        if code in CORE_ALARM_CODES:
            return  # our own alarms echoed back
        sev = AlarmSeverity.CRITICAL if severity >= AlarmSeverity.CRITICAL else severity
        key = (source, code)
        if not active:
            self._external.pop(key, None)
            return
        if sev <= AlarmSeverity.INFO:
            return
        self._external[key] = _External(code, AlarmSeverity(sev), source)
        if sev == AlarmSeverity.CRITICAL and self._latched is None:
            self._latch(f"{code} from {source}")

    def clear_alarms(self, t_s: float) -> None:
        """Forget remembered alarms; ALARM becomes SUSPENDED (resume is needed)."""
        self._advance(t_s)
        self._external.clear()
        if self._latched is not None:
            self._why = f"alarm cleared ({self._latched}): resume to restart"
            self._latched = None
            self._run = False
            self._record("clear", why=self._why)
        for code in _LATCHED_NOTICES:
            self._set_core_alarm(code, AlarmSeverity.WARNING, False, "cleared")

    def request_bolus(self, t_s: float, request_id: str = "") -> BolusAnswer:
        """A patient-activated bolus: granted, or denied with the reason and the wait."""
        self._advance(t_s)
        if request_id and request_id in self._answers:
            return self._answers[request_id]
        answer = self._decide_patient_bolus(t_s)
        if answer.granted:
            if request_id:
                self._answers[request_id] = answer
                while len(self._answers) > _MAX_REMEMBERED_REQUESTS:
                    self._answers.popitem(last=False)
            self._grants.append(t_s)
            self._record("grant", rid=request_id, dose=answer.dose_ug, vol=answer.volume_ul)
        return answer

    def clinician_bolus(
        self,
        t_s: float,
        kind: str,
        *,
        dose_ug: float = 0.0,
        volume_ul: float = 0.0,
        duration_s: float = 0.0,
    ) -> str:
        """kind: clinician (dose over duration), prime (volume over duration), or bridge."""
        self._advance(t_s)
        self._refuse_if_fault()
        kind = kind.strip().lower()
        if self.state is not TherapyState.RUNNING:
            raise TherapyError(f"therapy is {self.state.name}: a bolus needs RUNNING therapy")
        if self._bolus is not None:
            raise TherapyError(f"a bolus is in progress ({self._bolus_text()})")
        if kind == "bridge":
            return self._start_bridge()
        problem = self._bolus_problem(t_s)
        if problem:
            raise TherapyError(problem)
        line, conc = self._require_line(), self._res_conc
        if kind == "clinician":
            _check_positive("dose_ug", dose_ug)
            _check_positive("duration_s", duration_s)
            volume = line.volume_for_dose_ul(dose_ug, conc)
            source, dose = DoseSource.CLINICIAN_BOLUS, dose_ug
        elif kind == "prime":
            _check_positive("volume_ul", volume_ul)
            _check_positive("duration_s", duration_s)
            volume = volume_ul
            source, dose = DoseSource.PRIME, line.dose_for_volume_ug(volume_ul, conc)
        else:
            raise TherapyError(f"kind: unknown bolus kind {kind!r} (clinician, prime, bridge)")
        if not math.isfinite(volume):
            raise TherapyError("the line and reservoir hold no drug: no dose can be delivered")
        self._check_bolus_fits(t_s, volume, dose, duration_s)
        rate = volume / (duration_s / SECONDS_PER_HOUR)
        self._start_bolus(t_s, _Bolus(source, volume, dose, rate))
        return f"{source.value} bolus started: {dose:.6g} µg in {volume:.6g} µL over " + (
            f"{duration_s / 60:g} min"
        )

    def refill(
        self,
        t_s: float,
        *,
        volume_ul: float,
        drug: str,
        concentration_ug_per_ml: float,
        withdrawn_ul: float = 0.0,
        bridge: bool = False,
        flush: bool = False,
    ) -> RefillResult:
        """Discard the residual drug and fill ``volume_ul`` of ``drug`` at the concentration.

        What is left of the old fluid in the line reaches the patient first. ``bridge`` doses
        it by its own concentration (and, after a change of drug, at the old program's rate and
        against the old drug's maximum) until the new fluid reaches the tip; ``flush`` says the
        line was emptied outside the patient and holds saline (prime it). A change of drug
        needs one of the two: without them the old drug would be pushed at the new drug's rate.
        """
        self._advance(t_s)
        self._refuse_if_fault()
        program = self._program
        if program is None:
            raise TherapyError("no program: set one first (it gives the reservoir's capacity)")
        _check_positive("volume_ul", volume_ul)
        _check_positive("concentration_ug_per_ml", concentration_ug_per_ml)
        if not (math.isfinite(withdrawn_ul) and withdrawn_ul >= 0):
            raise TherapyError(f"withdrawn_ul: must be a finite number >= 0 (got {withdrawn_ul!r})")
        new_drug = self._library_drug(drug.strip().lower())
        problem = new_drug.check_concentration(concentration_ug_per_ml)
        if problem:
            raise TherapyError(f"concentration_ug_per_ml: {problem}")
        if withdrawn_ul > program.reservoir_capacity_ul:
            # More than the reservoir can hold was never in it: a typo, or the wrong unit.
            raise TherapyError(
                f"withdrawn_ul: {withdrawn_ul:g} µL is more than the reservoir holds "
                f"({program.reservoir_capacity_ul:g} µL)"
            )
        if volume_ul > program.reservoir_capacity_ul:
            raise TherapyError(
                f"volume_ul: {volume_ul:g} µL is above the reservoir's capacity of "
                f"{program.reservoir_capacity_ul:g} µL"
            )
        changes_drug = new_drug.name != self._res_drug
        if changes_drug and self.state is TherapyState.RUNNING:
            raise TherapyError(
                f"drug: refilling with {new_drug.name} instead of {self._res_drug} needs "
                "suspended therapy (and then a program for the new drug)"
            )
        if bridge and flush:
            raise TherapyError("bridge, flush: one or the other (flush empties the line)")
        if (changes_drug or flush) and not self._device_stopped():
            # What the device pushed since its last report is not booked yet: booked after
            # the change it would count as the new drug, or pass through a flushed line.
            raise TherapyError(
                f"{'drug' if changes_drug else 'flush'}: the device has not yet confirmed it "
                "stopped; wait for its next status report, then refill"
            )
        if (
            self._line_unsure()
            and not flush
            and (changes_drug or concentration_ug_per_ml > self._res_conc or self._line_unknown())
        ):
            raise TherapyError(
                "flush: the dose journal lost records that may have held a refill, so the "
                "fluid that entered the line since is unknown and may be stronger; flush the "
                "line (and prime it) to refill with this"
            )
        line = self._require_line()
        old_drugs = line.drugs() - {new_drug.name}
        if old_drugs and not (bridge or flush):
            raise TherapyError(
                f"drug: the line still holds {', '.join(sorted(old_drugs))}; refilling with "
                f"{new_drug.name} needs a plan for it: bridge (deliver it at its own program's "
                "rate) or flush (the line was emptied and holds saline)"
            )
        if bridge and not changes_drug and concentration_ug_per_ml == self._res_conc:
            raise TherapyError("bridge: only for a new concentration or a new drug")
        if bridge and changes_drug and (self._program is None or self._drug is None):
            raise TherapyError(
                f"bridge: no program for {self._res_drug} to deliver the line's rest with"
            )
        discarded = self._res_volume
        notes = [f"discarded {discarded:.6g} µL"]
        if withdrawn_ul > 0:
            gap = withdrawn_ul - discarded
            notes.append(f"withdrawn {withdrawn_ul:.6g} µL ({gap:+.6g} µL from calculated)")
            if abs(gap) > max(100.0, 0.1 * discarded):
                self._set_core_alarm(
                    REFILL_DISCREPANCY,
                    AlarmSeverity.WARNING,
                    True,
                    f"withdrawn {withdrawn_ul:.6g} µL but {discarded:.6g} µL was calculated: "
                    "check delivery",
                )
        if flush and line.tip_concentration_ug_per_ml > 0.0 and self._baseline is not None:
            # A stopped plunger may stand part way through a step its counter shows only
            # later: that part pushed the tip's fluid into the patient before the flush, but
            # would be booked as the saline the flush leaves at the tip. Booked now as one
            # device step of the tip's fluid (the most a counter can lag).
            tip_ug = self.resolution_ul * line.tip_concentration_ug_per_ml / _UL_PER_ML
            self._ledger.add(t_s, self._basal_source(), 0.0, tip_ug, {line.tip_drug: tip_ug})
        self._flush_bucket()
        if flush:
            removed = line.flush()
            notes.append(f"line flushed ({removed.dose_ug:.6g} µg removed; prime it)")
            self._unsure_line = None
        self._bridge_program = None
        if bridge and changes_drug:
            self._bridge_program = self._program
        if (
            not changes_drug
            and self._baseline is not None
            and self._res_conc > concentration_ug_per_ml
        ):
            # The device may have pushed the old, stronger fluid since its last report, and
            # even a stopped one may stand part way through a step its counter does not show
            # yet; that volume is reported later. It enters the line at the old concentration
            # (an upper bound: part of it may be the new fluid), never the weaker new one.
            older = self._unbooked_fill[1] if self._unbooked_fill is not None else 0.0
            self._unbooked_fill = (t_s, max(self._res_conc, older))
        self._fill(new_drug.name, concentration_ug_per_ml, volume_ul)
        if changes_drug:
            self._program, self._drug = None, None
            self._run = False
            self._why = f"refilled with {new_drug.name}: set a program for it"
            self._bolus = None
        self._bridge = bool(bridge)
        self._record(
            "refill",
            vol=volume_ul,
            drug=new_drug.name,
            conc=concentration_ug_per_ml,
            withdrawn=withdrawn_ul,
            discarded=discarded,
            bridge=bool(bridge),
            flush=bool(flush),
        )
        self._update_reservoir_alarms()
        days, when = self._refill_projection(t_s)
        notes.append(
            f"reservoir {volume_ul:.6g} µL of {new_drug.name} {concentration_ug_per_ml:g} µg/mL"
        )
        if bridge:
            notes.append("bridge: dosing by the concentration at the catheter tip")
            if changes_drug:
                old = ", ".join(sorted(old_drugs))
                notes.append(f"{old} in the line at its own program's rate")
        return RefillResult(discarded, self._res_volume, days, when, "; ".join(notes))

    def on_device_volume(
        self, t_s: float, delivered_volume_ul: float, *, command_applied: bool = True
    ) -> None:
        """Account the device's CUMULATIVE delivered volume (PumpState.delivered_volume_ul).

        The first value only sets the baseline. A decrease means the device's counter
        restarted: re-baseline without counting (and warn). NaN/inf are ignored.
        ``command_applied`` says whether the device already runs the latest command; until it
        does, the device still runs the one it last confirmed, and its volume is split between
        basal and bolus by that command's rates.
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
        if self._other_device is not None:
            return  # another device's counter: not this ledger's volume
        baseline, since = self._baseline, self._baseline_t
        issued = self._issued
        if command_applied and issued is not None:
            if baseline is not None and issued.applied_ul is None:
                issued.applied_ul, issued.applied_t_s = self._device_total, t_s
            self._in_force = issued
            if self._commanded:
                self._motion_unconfirmed = False
        if baseline is None or delivered_volume_ul < baseline:
            if baseline is not None:
                self._set_core_alarm(
                    VOLUME_COUNTER_RESET,
                    AlarmSeverity.WARNING,
                    True,
                    f"device volume counter went back from {baseline:.3f} to "
                    f"{delivered_volume_ul:.3f} µL; re-baselined",
                )
            # Journaled at once: whatever the device delivers after this reading is counted
            # from it, also by an engine restarted after a crash.
            self._baseline, self._baseline_t = delivered_volume_ul, t_s
            self._record("baseline")
            return
        delta = delivered_volume_ul - baseline
        unsure = self._unsure_line
        if delta > 0.0:
            # After a refill to a weaker fluid: a report that spans it is all old fluid (at
            # most); the next one still lacks the part of a step the plunger had made at the
            # refill (a counter shows whole steps), so its first step is old fluid too.
            old_ul, old_conc = 0.0, 0.0
            if self._unbooked_fill is not None:
                refill_t, old_conc = self._unbooked_fill
                if since < refill_t:
                    old_ul = delta
                    self._unbooked_fill = (t_s, old_conc)
                else:
                    old_ul = min(delta, self.resolution_ul)
                    self._unbooked_fill = None
            booked: list[float] = [baseline]
            parts = self._split_at_midnights(since, t_s, delta)
            for k, (t_end, part_ul) in enumerate(parts):
                if self._ledger.day_changes(t_end):
                    self._flush_bucket()
                booked.append(part_ul)
                counter = delivered_volume_ul if k == len(parts) - 1 else math.fsum(booked)
                old_part = min(part_ul, old_ul)
                old_ul -= old_part
                self._deliver(t_end, part_ul, counter, old_part, old_conc)
        else:
            self._baseline_t = t_s
        if unsure is not None and unsure.ends_at_ul is None:
            unsure.ends_at_ul = self._device_total  # the unknown fluid ends here
        # Also on an unchanged counter: a device that delivers nothing is the worst shortfall.
        self._check_under_delivery(t_s)
        if self._ledger.bucket_due(t_s):
            self._flush_bucket()

    def on_device_identity(self, t_s: float, identity: str) -> None:
        """Who answers on the port (``PumpState.device``: model, firmware, serial). The first
        one is journaled as the device this ledger counts on. Another one is not counted:
        no volume is booked from its counter and nothing is dosed (critical
        ``DEVICE_CHANGED``) until an operator confirms the change
        (:meth:`confirm_device_change`) or the ledger's own device answers again. An empty
        identity (not known yet) is no evidence either way."""
        self._advance(t_s)
        identity = identity.strip()
        if not identity:
            return
        if self._device_id is None:
            self._device_id = identity
            self._record("device", id=identity)
            return
        if identity == self._device_id:
            if self._other_device is not None:
                self._other_device = None
                self._set_core_alarm(
                    DEVICE_CHANGED,
                    AlarmSeverity.CRITICAL,
                    False,
                    f"{identity}, the device this ledger counts on, answers again",
                )
            return
        if identity != self._other_device:
            self._other_device = identity
            self._set_core_alarm(
                DEVICE_CHANGED,
                AlarmSeverity.CRITICAL,
                True,
                f"{identity} answers on the port, but this ledger counts {self._device_id}: "
                "nothing is counted or dosed from it until an operator confirms the change",
            )

    def confirm_device_change(self, t_s: float, reason: str) -> str:
        """The operator confirms the device now on the port replaces the ledger's (a pump
        swapped on the bench), with the reason, which is journaled. Its counter is a new
        baseline (what the old device pushed since its last report is unknown), and therapy
        stays suspended until resumed."""
        self._advance(t_s)
        self._refuse_if_fault()
        new, old = self._other_device, self._device_id
        if new is None:
            raise TherapyError(
                f"the device on the port is the ledger's ({old}): nothing to confirm"
            )
        if not reason.strip():
            raise TherapyError("reason: say why the device changed (it is journaled)")
        self._device_id, self._other_device = new, None
        self._baseline = None  # the new counter has nothing to do with the old one
        self._run, self._bolus = False, None
        self._why = f"device changed from {old} to {new} ({reason.strip()}): resume to restart"
        self._record("device", id=new, previous=old, reason=reason.strip())
        self._set_core_alarm(DEVICE_CHANGED, AlarmSeverity.CRITICAL, False, self._why)
        return self._why

    def on_device_resolution(self, resolution_ul: float) -> None:
        """The device's own resolution (``PumpState.volume_resolution_ul``; 0 = not reported).
        A coarser device (a New Era pump counts four significant digits) completes boluses
        and bridges within its resolution instead of the configured one."""
        if math.isfinite(resolution_ul) and resolution_ul >= 0.0:
            self._device_resolution_ul = resolution_ul

    @property
    def resolution_ul(self) -> float:
        """What a bolus or bridge may end short by: the configured or the device's, whichever
        is coarser."""
        return max(self.config.device_resolution_ul, self._device_resolution_ul)

    # --- outputs ----------------------------------------------------------------------------

    @property
    def state(self) -> TherapyState:
        if self._latched is not None or self._fault is not None or self._other_device:
            return TherapyState.ALARM
        if self._program is None:
            return TherapyState.NO_PROGRAM
        if self._res_volume <= 0.0:
            return TherapyState.EMPTY
        if not self._run:
            return TherapyState.SUSPENDED
        return TherapyState.RUNNING

    @property
    def program(self) -> TherapyProgram | None:
        return self._program

    @property
    def ledger(self) -> DoseLedger:
        return self._ledger

    @property
    def prescribed_by_day(self) -> dict[int, float]:
        """Prescribed patient dose (basal while running + granted boluses) per local day."""
        return dict(self._prescribed_by_day)

    @property
    def overrides(self) -> list[tuple[float, str]]:
        return list(self._overrides)

    def daily_limit_ug(self) -> float:
        if self._program is None or self._drug is None:
            return 0.0
        return self._program.daily_limit_ug(self._drug)

    def command(self, t_s: float) -> CommandIntent:
        """The command for now. The same object is returned while nothing needs re-sending."""
        self._advance(t_s)
        self._commanded = True
        desired, basal, bolus = self._desired(t_s)
        issued = self._issued
        if issued is not None and self._same_command(issued, desired):
            if not issued.restored or issued.resent or issued.applied_ul is None:
                return issued.intent
            # Rebuilt from the journal: the restarted controller sends it anew, so its volume
            # limit is what is left of it, counted from now (the device then stops where the
            # never-restarted one would have).
            used = self._device_total - issued.applied_ul
            intent = issued.intent
            if intent.volume_limit_ul > 0.0:
                intent = replace(intent, volume_limit_ul=max(0.0, intent.volume_limit_ul - used))
            self._issued = _Issued(
                intent,
                issued.basal_rate_ul_per_h,
                issued.bolus_rate_ul_per_h,
                self._device_total,
                t_s,
                restored=True,
                resent=True,
                bolus_t0_s=issued.bolus_t0_s,
            )
            return intent
        made_for = self._bolus.t0_s if self._bolus is not None and bolus > 0.0 else None
        self._issued = _Issued(desired, basal, bolus, bolus_t0_s=made_for)
        if desired.action is PumpAction.INFUSE:
            self._motion_unconfirmed = True
        return desired

    def snapshot(self, t_s: float) -> EngineSnapshot:
        self._advance(t_s)
        program = self._program
        active = {a.code for a in self._external.values()}
        active |= {code for code, ev in self._core_alarms.items() if ev.active}
        days, when = self._refill_projection(t_s)
        line = self._line
        return EngineSnapshot(
            therapy_state=self.state,
            program=program.name if program else "",
            drug=self._res_drug,
            concentration_ug_per_ml=self._res_conc,
            basal_rate_ul_per_h=self._basal_rate(t_s) if program else 0.0,
            delivered_volume_ul=self._ledger.total_volume_ul,
            # The reservoir drug's (the program's): another drug still in the line counts
            # against its own maximum, not this one.
            delivered_dose_24h_ug=self._ledger.dose_24h_ug(t_s, self._res_drug or None),
            reservoir_volume_ul=self._res_volume,
            boluses_24h=self._boluses_24h(t_s),
            prescribed_volume_ul=self._prescribed_ul,
            ordered_volume_ul=self._ordered_ul,
            active_alarms=tuple(sorted(active)),
            daily_limit_ug=self.daily_limit_ug(),
            dose_24h_by_source_ug=self._ledger.dose_24h_by_source_ug(t_s),
            delivered_dose_total_ug=self._ledger.total_dose_ug,
            tip_concentration_ug_per_ml=line.tip_concentration_ug_per_ml if line else 0.0,
            reservoir_capacity_ul=program.reservoir_capacity_ul if program else 0.0,
            days_to_refill=days,
            next_refill_s=when,
            next_change_s=self._next_change(t_s),
            device_stopped=self._device_stopped(),
            line_unknown=self._line_unknown(),
            active_bolus=self._bolus_text(),
            detail=self._detail(),
        )

    def drain_alarm_events(self) -> list[AlarmEvent]:
        events, self._events = self._events, []
        return events

    # --- delivery ---------------------------------------------------------------------------

    def _basal_source(self) -> DoseSource:
        return DoseSource.BRIDGE if self._bridge else DoseSource.BASAL

    def _bridge_run(self) -> Segment | None:
        """During a bridge, the run of fluid at the tip the rate follows. Runs no larger than
        the pump's resolution (down to rounding) are passed over: the pump cannot push them
        on their own, and a stop placed before the last step of one was booked would stand."""
        line = self._line
        if not self._bridge or line is None:
            return None
        for run in line.segments:
            if run.volume_ul > self.resolution_ul + _ROOM_EPS_UL:
                return run if run.concentration_ug_per_ml > 0 else None
        return None

    def _program_for(self, drug: str) -> TherapyProgram | None:
        """The program that doses ``drug``: the current one, or the one a refill with another
        drug replaced while a bridge delivers the rest of its drug."""
        for program in (self._program, self._bridge_program):
            if program is not None and program.drug == drug:
                return program
        return None

    def _drug_limit_ug(self, drug: str) -> float:
        """The daily maximum of ``drug``: its program's, or else the library's."""
        program = self._program_for(drug)
        try:
            entry = self.library.get(drug)
        except DrugLibraryError:
            return 0.0
        return program.daily_limit_ug(entry) if program is not None else entry.max_daily_dose_ug

    def _rate_fluid(self) -> tuple[TherapyProgram | None, float]:
        """The program and concentration the basal rate is computed from: the reservoir's,
        or during a bridge the tip's (and that drug's program)."""
        run = self._bridge_run()
        if run is None:
            return self._program, self._res_conc
        return self._program_for(run.drug), run.concentration_ug_per_ml

    def _rate_concentration(self) -> float:
        return self._rate_fluid()[1]

    def _basal_rate(self, t_s: float) -> float:
        program, conc = self._rate_fluid()
        if self._program is None or program is None or conc <= 0:
            return 0.0
        return program.schedule.dose_rate_ug_per_h(t_s) / conc * _UL_PER_ML

    def _room_ug(self, t_s: float) -> dict[str, float]:
        """What each drug in the line or the reservoir may still deliver in the 24 h window."""
        drugs = self._require_line().drugs() | {self._res_drug}
        return {d: self._drug_limit_ug(d) - self._ledger.dose_24h_ug(t_s, d) for d in drugs}

    def _desired(self, t_s: float) -> tuple[CommandIntent, float, float]:
        state = self.state
        if state is not TherapyState.RUNNING:
            return CommandIntent(PumpAction.STOP, 0.0, 0.0, self._stop_reason(state)), 0.0, 0.0
        program = self._program
        assert program is not None
        if self._line_unknown():
            return (
                CommandIntent(
                    PumpAction.STOP,
                    0.0,
                    0.0,
                    "the dose journal lost the records of what is in the line: its content is "
                    "unknown; refill with flush (and prime) to dose",
                ),
                0.0,
                0.0,
            )
        basal = self._basal_rate(t_s)
        rate, limit, bolus_rate = basal, math.inf, 0.0
        reason = f"basal {basal:.6g} µL/h ({program.name})"
        if self._bridge:
            reason = f"bridge {basal:.6g} µL/h at tip {self._rate_concentration():g} µg/mL"
        bolus = self._bolus
        if bolus is not None:
            bolus_rate = bolus.rate_ul_per_h
            rate = basal + bolus_rate
            limit = bolus.left_ul * rate / bolus_rate
            reason = f"{bolus.source.value} {bolus.left_ul:.6g} µL left + {reason}"
        # Volume the device may push past the counter already booked (the baseline).
        stop_after = math.inf
        run = self._bridge_run()
        if run is not None and (run.concentration_ug_per_ml, run.drug) != (
            self._res_conc,
            self._res_drug,
        ):
            # The pump stops by itself where this run ends (its rate is this run's), exactly
            # and at any clock speed; the next command follows the next run.
            limit = min(limit, run.volume_ul)
            stop_after = run.volume_ul
        # Never past any drug's daily maximum: cap the volume the device may deliver, one
        # device step short of the room (a device stopping on whole steps may pass a limit
        # by up to one).
        line = self._require_line()
        room_ul = (
            line.volume_within_ul(self._room_ug(t_s), self._res_drug, self._res_conc)
            - self.resolution_ul
        )
        if room_ul <= _ROOM_EPS_UL:
            self._set_core_alarm(
                DOSE_LIMIT,
                AlarmSeverity.WARNING,
                True,
                f"24 h dose at the daily maximum of {self.daily_limit_ug():g} µg: delivery held",
            )
            return CommandIntent(PumpAction.STOP, 0.0, 0.0, "daily maximum reached"), 0.0, 0.0
        # Capped when the room could be used up within the horizon at the faster of this and
        # the running command, counting the time since the device last reported.
        running = self._issued.intent if self._issued is not None else None
        fastest = max(rate, running.flow_rate_ul_per_h if running is not None else 0.0)
        horizon_s = self.config.dose_limit_horizon_s
        near_max = room_ul < fastest * horizon_s / SECONDS_PER_HOUR
        if not near_max:
            self._set_core_alarm(DOSE_LIMIT, AlarmSeverity.WARNING, False, "below the maximum")
        unseen_s = t_s - self._baseline_t if self._baseline is not None else 0.0
        if near_max or room_ul < fastest * (horizon_s + unseen_s) / SECONDS_PER_HOUR:
            limit = min(limit, room_ul)
            stop_after = min(stop_after, room_ul)
            reason += f"; capped at {room_ul:.6g} µL by the daily maximum"
        if rate <= 0.0:
            return CommandIntent(PumpAction.STOP, 0.0, 0.0, "basal rate 0"), 0.0, 0.0
        if rate > self.config.max_rate_ul_per_h:
            # Only a bridge at a very low old concentration can ask for this; never exceed.
            scale = self.config.max_rate_ul_per_h / rate
            rate, basal, bolus_rate = rate * scale, basal * scale, bolus_rate * scale
            reason += f"; limited to the device maximum {self.config.max_rate_ul_per_h:g} µL/h"
        limit = min(limit, self.config.max_volume_per_command_ul)
        if limit >= self.config.max_volume_per_command_ul and bolus is None:
            limit = 0.0  # a plain basal command needs no device limit
        stop_at = 0.0
        if self._baseline is not None and math.isfinite(stop_after):
            stop_at = self._baseline + stop_after
        intent = CommandIntent(
            PumpAction.INFUSE, rate, limit if math.isfinite(limit) else 0.0, reason, stop_at
        )
        return intent, basal, bolus_rate

    def _same_command(self, issued: _Issued, desired: CommandIntent) -> bool:
        old = issued.intent
        if old.action != desired.action:
            return False
        if old.action is not PumpAction.INFUSE:
            return old.reason == desired.reason
        if not math.isclose(old.flow_rate_ul_per_h, desired.flow_rate_ul_per_h, rel_tol=1e-12):
            return False
        old_stop, new_stop = old.stop_at_device_ul, desired.stop_at_device_ul
        if (old_stop > 0.0) != (new_stop > 0.0):
            return False
        if old_stop > 0.0:
            if old_stop > new_stop + 1e-12 * max(1.0, new_stop):
                return False  # the running stop would let the device past what is allowed now
            # A later stop is resent only once the room it adds is worth a new command.
            gained = new_stop - old_stop
            if gained > max(self.resolution_ul, 0.01 * (new_stop - (self._baseline or 0.0))):
                return False
        if old.volume_limit_ul == 0.0 or desired.volume_limit_ul == 0.0:
            return old.volume_limit_ul == desired.volume_limit_ul
        if issued.applied_ul is None:
            return True  # the device has not started it yet: nothing of it is used up
        remaining = old.volume_limit_ul - (self._device_total - issued.applied_ul)
        return abs(remaining - desired.volume_limit_ul) <= max(1e-3, 0.01 * desired.volume_limit_ul)

    def _split_at_midnights(
        self, t0_s: float, t1_s: float, volume_ul: float
    ) -> list[tuple[float, float]]:
        """(end, volume) parts of a report's volume, one per local day it spans.

        The device reports only totals, so the volume is shared in proportion to time: exact
        at a constant rate, and the clock of an accelerated run stops at the midnights where
        the rate changes."""
        parts: list[tuple[float, float]] = []
        t, left = t0_s, volume_ul
        while t < t1_s and (midnight := self._ledger.midnight_after(t)) < t1_s:
            part = volume_ul * (midnight - t) / (t1_s - t0_s)
            parts.append((midnight, part))
            t, left = midnight, left - part
        parts.append((t1_s, left))
        return parts

    def _deliver(
        self,
        t_s: float,
        volume_ul: float,
        counter_ul: float,
        old_ul: float = 0.0,
        old_conc: float = 0.0,
    ) -> None:
        """Book ``volume_ul`` delivered up to ``t_s``; the device counter then read
        ``counter_ul``. The baseline moves with the booking, before anything is journaled,
        so every record's state counts each µL exactly once. The volume enters the line at
        the reservoir's concentration, its first ``old_ul`` at ``old_conc`` (a weaker refill's
        old fluid)."""
        line = self._line
        self._baseline, self._baseline_t = counter_ul, t_s
        unsure = self._unsure_line
        if unsure is not None and unsure.unknown and unsure.strongest_ug_per_ml:
            # After a rollback the line's content is unknown (no dosing is commanded), yet the
            # device may have pushed volume since the last record: it is booked as the
            # strongest fluid of each drug it may have been, never as nothing.
            as_strongest = {
                drug: volume_ul * conc / _UL_PER_ML
                for drug, conc in sorted(unsure.strongest_ug_per_ml.items())
            }
            if line is not None:
                line.push(volume_ul, self._res_conc, self._res_drug)
            self._device_total += volume_ul
            self._res_volume = max(0.0, self._res_volume - volume_ul)
            self._ledger.add(
                t_s,
                DoseSource.UNRECORDED,
                volume_ul,
                math.fsum(as_strongest.values()),
                as_strongest,
            )
            return
        if line is None:
            # Volume with no fill known (no program ever): volume only, no drug.
            self._device_total += volume_ul
            self._ledger.add(t_s, DoseSource.BASAL, volume_ul, 0.0)
            return
        force = self._in_force
        shares: dict[DoseSource, float] = {}
        bolus = self._bolus
        if (
            bolus is not None
            and force is not None
            and force.bolus_rate_ul_per_h > 0
            and force.bolus_t0_s == bolus.t0_s
        ):
            total_rate = force.basal_rate_ul_per_h + force.bolus_rate_ul_per_h
            part = min(bolus.left_ul, volume_ul * force.bolus_rate_ul_per_h / total_rate)
            shares[bolus.source] = part
            rest = volume_ul - part
            if rest > 0:
                shares[self._basal_source()] = rest
            bolus.delivered_ul += part
        else:
            shares[self._basal_source()] = volume_ul
        pushes = [(old_ul, max(old_conc, self._res_conc)), (volume_ul - old_ul, self._res_conc)]
        outflows = [line.push(v, c, self._res_drug) for v, c in pushes if v > 0.0]
        by_drug: dict[str, float] = {}
        for outflow in outflows:
            for drug, dose in outflow.dose_by_drug_ug().items():
                by_drug[drug] = by_drug.get(drug, 0.0) + dose
        dose_ug = math.fsum(o.dose_ug for o in outflows)
        for source, vol in shares.items():
            share = vol / volume_ul
            self._ledger.add(
                t_s,
                source,
                vol,
                dose_ug * share,
                {drug: dose * share for drug, dose in by_drug.items()},
            )
        self._device_total += volume_ul
        self._res_volume = max(0.0, self._res_volume - volume_ul)
        if bolus is not None and bolus.left_ul <= max(
            bolus.volume_ul * _REL_EPS, self.resolution_ul
        ):
            self._bolus = None
            self._record("bolus_done", src=bolus.source.value)
        if self._bridge and (
            line.volume_until_concentration_ul(self._res_conc, self._res_drug) <= self.resolution_ul
        ):
            self._bridge = False
            self._bridge_program = None
            self._record("bridge_done")
        for drug in sorted(by_drug):
            limit = self._drug_limit_ug(drug)
            dose_24h = self._ledger.dose_24h_ug(t_s, drug)
            if dose_24h > limit * (1.0 + 1e-6) and self._latched is None:
                self._latch(f"{DOSE_LIMIT}: the device delivered past the daily maximum")
                self._set_core_alarm(
                    DOSE_LIMIT,
                    AlarmSeverity.CRITICAL,
                    True,
                    f"24 h dose of {drug} {dose_24h:.6g} µg is above its daily maximum of "
                    f"{limit:g} µg: stopped",
                )
        self._update_reservoir_alarms()

    def _check_under_delivery(self, t_s: float) -> None:
        issued = self._issued
        if issued is None or issued.intent.action is not PumpAction.INFUSE:
            return
        if issued.applied_ul is None:
            return
        cfg = self.config
        running_s = t_s - issued.applied_t_s - cfg.under_delivery_grace_s
        if running_s <= 0:
            return
        rate = issued.intent.flow_rate_ul_per_h
        limit = issued.intent.volume_limit_ul if issued.intent.volume_limit_ul > 0 else math.inf
        got = self._device_total - issued.applied_ul
        expected = min(rate * running_s / SECONDS_PER_HOUR, limit)
        # Over the whole command, and over its last window: a long command that falls behind
        # late is caught as soon as one that starts behind.
        reports = issued.reports
        reports.append((t_s, self._device_total))
        while len(reports) > 1 and reports[1][0] <= t_s - _UNDER_DELIVERY_WINDOW_S:
            reports.popleft()
        t_w, total_w = reports[0]
        recent_s = t_s - max(t_w, issued.applied_t_s + cfg.under_delivery_grace_s)
        recent_expected = min(
            rate * recent_s / SECONDS_PER_HOUR, limit - (total_w - issued.applied_ul)
        )
        recent_got = self._device_total - total_w

        def behind(want: float, have: float) -> bool:
            return want - have > (
                cfg.under_delivery_tolerance_ul + cfg.under_delivery_tolerance_fraction * want
            )

        if behind(expected, got) or (
            recent_s >= _UNDER_DELIVERY_WINDOW_S / 2 and behind(recent_expected, recent_got)
        ):
            self._set_core_alarm(
                UNDER_DELIVERY,
                AlarmSeverity.WARNING,
                True,
                f"device delivered {got:.4g} µL of {expected:.4g} µL commanded since "
                f"{issued.intent.reason!r}; the rate is not raised to catch up",
            )

    # --- boluses ----------------------------------------------------------------------------

    def _decide_patient_bolus(self, t_s: float) -> BolusAnswer:
        program = self._program
        if self._fault is not None:
            return BolusAnswer(False, f"dose journal fault: {self._fault}")
        if program is None or program.patient_bolus is None:
            return BolusAnswer(False, "this program has no patient bolus")
        policy = program.patient_bolus
        if self.state is not TherapyState.RUNNING:
            return BolusAnswer(False, f"therapy is {self.state.name}", next_allowed_in_s=-1.0)
        problem = self._bolus_problem(t_s)
        if problem:
            hold = self._bolus_hold_until_s
            wait = hold - t_s if hold is not None and hold > t_s else -1.0
            return BolusAnswer(False, f"denied: {problem}", next_allowed_in_s=wait)
        waits: list[tuple[float, str]] = []
        if self._bolus is not None:
            rate = self._bolus.rate_ul_per_h
            waits.append((self._bolus.left_ul / rate * SECONDS_PER_HOUR, "a bolus is in progress"))
        self._expire_grants(t_s)
        if self._grants and t_s - self._grants[-1] < policy.lockout_s:
            wait = self._grants[-1] + policy.lockout_s - t_s
            waits.append((wait, f"lockout: {policy.lockout_s / 60:g} min after the last bolus"))
        if len(self._grants) >= policy.max_per_24h:
            n_over = len(self._grants) - policy.max_per_24h
            wait = self._grants[n_over] + SECONDS_PER_DAY - t_s
            waits.append((wait, f"{policy.max_per_24h} boluses already in the last 24 h"))
        line = self._require_line()
        volume = line.volume_for_dose_ul(policy.dose_ug, self._res_conc)
        if not math.isfinite(volume) or volume > self._res_volume:
            return BolusAnswer(False, "not enough drug in the reservoir", next_allowed_in_s=-1.0)
        wait_dose = self._wait_for_room_s(t_s, policy.dose_ug, policy.duration_s)
        if wait_dose > 0:
            waits.append(
                (wait_dose, f"would pass the daily maximum of {self.daily_limit_ug():g} µg")
            )
        if waits:
            wait, _why = max(waits)
            reasons = "; ".join(w for _, w in waits)
            shown = wait if math.isfinite(wait) else -1.0
            return BolusAnswer(False, f"denied: {reasons}", next_allowed_in_s=shown)
        rate = volume / (policy.duration_s / SECONDS_PER_HOUR)
        self._start_bolus(t_s, _Bolus(DoseSource.PATIENT_BOLUS, volume, policy.dose_ug, rate))
        return BolusAnswer(
            True,
            f"granted: {policy.dose_ug:g} µg ({volume:.4g} µL) over {policy.duration_s / 60:g} min",
            policy.dose_ug,
            volume,
            policy.lockout_s,
        )

    def _bolus_problem(self, t_s: float) -> str:
        """Why no bolus of the program's drug can be given now ('' = none of these)."""
        hold = self._bolus_hold_until_s
        if hold is not None and t_s < hold:
            return (
                "the dose journal lost records (rollback accepted): no bolus for "
                f"{(hold - t_s) / SECONDS_PER_HOUR:.1f} h more"
            )
        program = self._program
        others = self._require_line().drugs() - {program.drug if program else ""}
        if others:
            return (
                f"the line still holds {', '.join(sorted(others))}: a bolus would push it, "
                "not the program's drug"
            )
        return ""

    def _check_bolus_fits(self, t_s: float, volume: float, dose: float, duration_s: float) -> None:
        rate = volume / (duration_s / SECONDS_PER_HOUR) + self._basal_rate(t_s)
        if rate > self.config.max_rate_ul_per_h:
            raise TherapyError(
                f"duration_s: {rate:.6g} µL/h with the basal is above the device limit of "
                f"{self.config.max_rate_ul_per_h:g} µL/h"
            )
        if volume > self._res_volume:
            raise TherapyError(
                f"not enough drug: {volume:.6g} µL asked, {self._res_volume:.6g} µL left"
            )
        program = self._program
        assert program is not None
        needed = dose + program.schedule.dose_ug(t_s, t_s + duration_s)
        room = self.daily_limit_ug() - self._ledger.dose_24h_ug(t_s, program.drug)
        if needed > room:
            raise TherapyError(
                f"would pass the daily maximum of {self.daily_limit_ug():g} µg "
                f"({room:.6g} µg left in the last 24 h, {needed:.6g} µg needed)"
            )

    def _wait_for_room_s(self, t_s: float, dose_ug: float, duration_s: float) -> float:
        """Seconds until a bolus of ``dose_ug`` over ``duration_s`` keeps the 24 h window
        within the daily maximum throughout (0 = now, inf = not within a day), with the basal
        delivered as scheduled meanwhile.

        The window only falls when a bucket leaves it, so the candidates are now and those
        instants. At each, the window's worst rise over the bolus is the basal since then less
        what has left, taken just before each bucket leaves and at the end: in steady therapy
        what leaves matches what comes.

        The window counts a bucket until 24 h after its end, so it runs up to the oldest
        bucket's dose above what was really delivered in the last 24 h. Up to that bucket's
        basal (never a bolus it holds) is allowed here, so that ``max = basal + N × bolus``
        lets all N boluses through; the hard limit stays with the device volume limit of every
        command (:meth:`_desired`), which holds the window itself at the maximum (at worst the
        end of such a bolus waits for the oldest bucket to leave).
        """
        assert self._program is not None
        schedule = self._program.schedule
        limit = self.daily_limit_ug() * (1.0 + _REL_EPS)
        drug = self._program.drug
        window_now = self._ledger.dose_24h_ug(t_s, drug)
        leaves, gone, spans = self._ledger.leaving(t_s, drug)
        top_rate_ug_per_s = schedule.max_dose_rate_ug_per_h / SECONDS_PER_HOUR

        def gone_by(t: float) -> float:  # dose left the window in (t_s, t]
            k = bisect.bisect_right(leaves, t)
            return gone[k - 1] if k else 0.0

        def fits(t0: float) -> bool:
            window = window_now + schedule.dose_ug(t_s, t0) - gone_by(t0)
            k0 = bisect.bisect_right(leaves, t0)
            oldest = 0.0
            if k0 < len(leaves):
                oldest = min(gone[k0] - gone_by(t0), top_rate_ug_per_s * spans[k0])
            t1 = t0 + duration_s
            rise, before = 0.0, gone_by(t0)
            for k in range(bisect.bisect_right(leaves, t0), bisect.bisect_right(leaves, t1)):
                rise = max(
                    rise, schedule.dose_ug(t0, leaves[k]) - ((gone[k - 1] if k else 0.0) - before)
                )
            rise = max(rise, schedule.dose_ug(t0, t1) - (gone_by(t1) - before))
            return window + rise + dose_ug <= limit + oldest

        if fits(t_s):
            return 0.0
        for t in leaves:
            if t > t_s + SECONDS_PER_DAY:
                break
            if t > t_s and fits(t):
                return t - t_s
        return math.inf

    def _start_bolus(self, t_s: float, bolus: _Bolus) -> None:
        self._flush_bucket()
        bolus.t0_s = t_s
        self._bolus = bolus
        day = self._ledger.day_of(t_s)
        self._prescribed_by_day[day] = self._prescribed_by_day.get(day, 0.0) + bolus.dose_ug
        self._ordered_ul += bolus.volume_ul
        self._record("bolus", bolus=bolus.to_record())

    def _start_bridge(self) -> str:
        line = self._require_line()
        others = line.drugs() - {self._res_drug}
        if others:
            raise TherapyError(
                f"bridge: the line holds {', '.join(sorted(others))}; only a refill's bridge "
                "(with that drug's program) can deliver it"
            )
        if line.volume_until_concentration_ul(self._res_conc) <= 0:
            raise TherapyError("bridge: the line already holds the reservoir's concentration")
        if line.tip_concentration_ug_per_ml <= 0:
            raise TherapyError("bridge: the line holds no drug; prime it instead")
        self._flush_bucket()
        self._bridge = True
        self._record("bridge")
        left = line.volume_until_concentration_ul(self._res_conc)
        return f"bridge started: {left:.6g} µL of older drug dosed by its own concentration"

    def _bolus_text(self) -> str:
        b = self._bolus
        if b is None:
            return "bridge" if self._bridge else ""
        return f"{b.source.value} {b.dose_ug:.6g} µg: {b.left_ul:.4g} of {b.volume_ul:.4g} µL left"

    def _expire_grants(self, t_s: float) -> None:
        while self._grants and self._grants[0] + SECONDS_PER_DAY <= t_s:
            self._grants.popleft()

    def _boluses_24h(self, t_s: float) -> int:
        self._expire_grants(t_s)
        return len(self._grants)

    # --- time, reservoir, alarms ------------------------------------------------------------

    def _advance(self, t_s: float) -> None:
        dt = t_s - self._t
        if dt > 0 and self._program is not None and self._run and self._res_conc > 0:
            ordered_ug = self._program.schedule.dose_ug(self._t, t_s)
            self._ordered_ul += ordered_ug / self._res_conc * _UL_PER_ML
        if dt > 0 and self.state is TherapyState.RUNNING and self._program is not None:
            schedule = self._program.schedule
            t = self._t
            while t < t_s:  # split at local midnight for the per-day figures
                day = self._ledger.day_of(t)
                end = min(t_s, (day + 1) * SECONDS_PER_DAY - schedule.utc_offset_s)
                dose = schedule.dose_ug(t, end)
                self._prescribed_by_day[day] = self._prescribed_by_day.get(day, 0.0) + dose
                if self._res_conc > 0:
                    self._prescribed_ul += dose / self._res_conc * _UL_PER_ML
                t = end
        self._t = max(self._t, t_s)

    def _next_change(self, t_s: float) -> float | None:
        if self.state is not TherapyState.RUNNING or self._program is None:
            return None
        times = []
        step = self._program.schedule.next_change_s(t_s)
        if step is not None:
            times.append(step)
        # Ends that depend on delivery are estimated from what is left; a device that falls
        # behind would push such an estimate on at every update (and an accelerated clock,
        # which stops at each next change, would crawl), so the first estimate is kept and
        # dropped once passed.
        issued = self._issued
        bolus = self._bolus
        if bolus is not None:
            eta = t_s + bolus.left_ul / bolus.rate_ul_per_h * SECONDS_PER_HOUR
            if self._bolus_eta is not None and self._bolus_eta[0] is bolus:
                eta = min(eta, self._bolus_eta[1])
            self._bolus_eta = (bolus, eta)
            times.append(eta)
        run = self._bridge_run()
        if run is not None and issued is not None and run.concentration_ug_per_ml != self._res_conc:
            rate = issued.intent.flow_rate_ul_per_h
            if rate > 0:
                eta = t_s + run.volume_ul / rate * SECONDS_PER_HOUR
                held = self._bridge_eta
                if held is not None and held[0] == run.concentration_ug_per_ml:
                    eta = min(eta, held[1])
                self._bridge_eta = (run.concentration_ug_per_ml, eta)
                times.append(eta)
        times = [t for t in times if t > t_s]
        return min(times) if times else None

    def _fill(self, drug: str, concentration: float, volume_ul: float) -> None:
        first = not self._filled
        self._res_drug, self._res_conc, self._res_volume = drug, concentration, volume_ul
        self._filled = True
        if first:
            start = concentration if self.config.line_primed else 0.0
            self._line = CatheterLine(self.config.line_dead_volume_ul, start, drug)

    def _refill_projection(self, t_s: float) -> tuple[float, float | None]:
        program = self._program
        if program is None or self._res_conc <= 0:
            return -1.0, None
        daily_ul = program.schedule.mean_daily_dose_ug / self._res_conc * _UL_PER_ML
        if daily_ul <= 0:
            return -1.0, None
        days = max(0.0, self._res_volume - program.low_reservoir_ul) / daily_ul
        return days, t_s + days * SECONDS_PER_DAY

    def _update_reservoir_alarms(self) -> None:
        program = self._program
        if program is None:
            return
        volume = self._res_volume
        empty = volume <= 0.0
        self._set_core_alarm(
            RESERVOIR_EMPTY,
            AlarmSeverity.CRITICAL,
            empty,
            "reservoir empty: delivery stopped" if empty else "reservoir no longer empty",
        )
        if empty and self._run:
            self._run = False
            self._why = "reservoir was empty: refill and resume"
        daily_ul = program.schedule.mean_daily_dose_ug / self._res_conc * _UL_PER_ML
        days_left = volume / daily_ul if daily_ul > 0 else math.inf
        by_volume = volume <= program.low_reservoir_ul
        by_days = program.low_reservoir_days is not None and days_left <= program.low_reservoir_days
        self._set_core_alarm(
            LOW_RESERVOIR,
            AlarmSeverity.WARNING,
            by_volume or by_days,
            f"reservoir {volume:.1f} µL (low alarm {program.low_reservoir_ul:g} µL), "
            f"{days_left:.1f} days left",
        )

    def _latch(self, why: str) -> None:
        self._latched = why
        self._bolus = None
        self._record("latch", why=why)

    def _set_core_alarm(self, code: str, severity: int, active: bool, message: str) -> None:
        previous = self._core_alarms.get(code)
        if previous is not None and previous.active == active and previous.severity == severity:
            return
        if previous is None and not active:
            return
        event = AlarmEvent(code, int(severity), active, message)
        self._core_alarms[code] = event
        self._events.append(event)

    def _stop_reason(self, state: TherapyState) -> str:
        if self._fault is not None:
            return f"dose journal fault: {self._fault}"
        if self._other_device is not None and self._latched is None:
            return (
                f"alarm: {DEVICE_CHANGED}: {self._other_device} answers on the port, but this "
                f"ledger counts {self._device_id}"
            )
        return {
            TherapyState.ALARM: f"alarm: {self._latched}",
            TherapyState.NO_PROGRAM: "no program",
            TherapyState.EMPTY: "reservoir empty",
            TherapyState.SUSPENDED: self._why,
        }.get(state, "")

    def _detail(self) -> str:
        state = self.state
        if state is TherapyState.RUNNING:
            return self._bolus_text() or "basal"
        return self._stop_reason(state)

    def _refuse_if_fault(self) -> None:
        if self._fault is not None:
            raise TherapyError(f"dosing refused: {self._fault}")

    def _require_line(self) -> CatheterLine:
        if self._line is None:
            raise TherapyError("no fill known yet: set a program first")
        return self._line

    def _library_drug(self, name: str) -> Drug:
        try:
            return self.library.get(name)
        except DrugLibraryError as exc:
            raise TherapyError(f"drug: {exc.message}") from None

    # --- journal ----------------------------------------------------------------------------

    def _state_record(self) -> dict[str, Any]:
        open_bucket = self._ledger.open_bucket
        return {
            "t": self._t,
            "res": [self._res_drug, self._res_conc, self._res_volume, self._filled],
            "line": self._line.to_state() if self._line else None,
            "dev": [self._baseline, self._device_total, self._baseline_t],
            "run": [self._run, self._why, self._latched],
            "bolus": self._bolus.to_record() if self._bolus else None,
            "bridge": self._bridge,
            "presc": [self._prescribed_ul, {str(d): v for d, v in self._prescribed_by_day.items()}],
            "ord": self._ordered_ul,
            "open": open_bucket.to_record() if open_bucket is not None else None,
            "issued": self._issued.to_record() if self._issued is not None else None,
            "force": self._force_record(),
            "unb": list(self._unbooked_fill) if self._unbooked_fill is not None else None,
            "unsure": self._unsure_line.to_record() if self._unsure_line is not None else None,
            "bprog": self._bridge_program.to_yaml() if self._bridge_program else None,
            "hold": self._bolus_hold_until_s,
            "device": self._device_id,
        }

    def _device_stopped(self) -> bool:
        """The device confirmed a stop and no other command is on its way to it."""
        issued, force = self._issued, self._in_force
        if issued is None:
            return True  # never commanded by this ledger
        return (
            issued.intent.action is PumpAction.STOP
            and force is not None
            and force.intent.action is PumpAction.STOP
            and not self._motion_unconfirmed
        )

    def _line_unsure(self) -> bool:
        unsure = self._unsure_line
        if unsure is None:
            return False
        end = unsure.ends_at_ul
        pushed_out = end is not None and (
            self._device_total - end >= self.config.line_dead_volume_ul
        )
        if pushed_out and not unsure.unknown:
            self._unsure_line = None
            return False
        return True

    def _line_unknown(self) -> bool:
        """After a rollback that lost every record, or a refill the kept records do not know:
        the line's content is not known at all."""
        return self._unsure_line is not None and self._unsure_line.unknown

    def _force_record(self) -> dict[str, Any] | str | None:
        force = self._in_force
        if force is None:
            return None
        return _SAME_AS_ISSUED if force is self._issued else force.to_record()

    def _load_state(self, s: Mapping[str, Any]) -> None:
        self._t = max(self._t, float(s["t"]))
        drug, conc, volume, filled = s["res"]
        self._res_drug, self._res_conc, self._res_volume = str(drug), float(conc), float(volume)
        self._filled = bool(filled)
        line = s["line"]
        self._line = (
            CatheterLine.from_state(self.config.line_dead_volume_ul, line, self._res_drug)
            if line
            else None
        )
        self._baseline, self._device_total = s["dev"][0], float(s["dev"][1])
        self._baseline_t = float(s["dev"][2])
        self._run, self._why, self._latched = bool(s["run"][0]), str(s["run"][1]), s["run"][2]
        self._bolus = _Bolus.from_record(s["bolus"]) if s["bolus"] else None
        self._bridge = bool(s["bridge"])
        self._prescribed_ul = float(s["presc"][0])
        self._prescribed_by_day = {int(d): float(v) for d, v in s["presc"][1].items()}
        self._ordered_ul = float(s.get("ord", self._prescribed_ul))  # older records: prescribed
        # Records from before these were journaled lack them.
        open_bucket = s.get("open")
        self._ledger.reopen(
            DeliveryBucket.from_record(open_bucket, drug=self._res_drug) if open_bucket else None
        )
        issued = s.get("issued")
        self._issued = _Issued.from_record(issued) if issued else None
        unsure = s.get("unsure")
        self._unsure_line = _UnsureLine.from_record(unsure) if unsure else None
        unbooked = s.get("unb")
        self._unbooked_fill = (float(unbooked[0]), float(unbooked[1])) if unbooked else None
        force = s.get("force", _SAME_AS_ISSUED)  # older records: the issued one, if applied
        if force == _SAME_AS_ISSUED:
            applied = self._issued is not None and self._issued.applied_ul is not None
            self._in_force = self._issued if applied else None
        else:
            self._in_force = _Issued.from_record(force) if force else None
        # What the device runs after a restart is known only once it confirms a command
        # this engine issued (the one before may have sent one no record shows).
        self._motion_unconfirmed = self._issued is not None
        bridge_program = s.get("bprog")
        self._bridge_program = self._parse_journaled(bridge_program) if bridge_program else None
        hold = s.get("hold")
        self._bolus_hold_until_s = float(hold) if hold is not None else None
        device = s.get("device")  # records from before devices were journaled: not known
        self._device_id = str(device) if device else None

    def _parse_journaled(self, text: str) -> TherapyProgram:
        return parse_program(
            text,
            source="dose journal",
            max_rate_ul_per_h=self.config.max_rate_ul_per_h,
            library=self.library,
        )

    def _record(self, kind: str, **data: Any) -> None:
        """An event: it closes the open bucket (journaled or not: one ledger either way),
        then is journaled with the state it leaves."""
        if self._replaying:
            return
        self._flush_bucket()
        if self._journal is None:
            return  # in memory, or the flush found the journal unwritable (faulted)
        self._append({"k": kind, **data, "s": self._state_record()})

    def _append(self, record: dict[str, Any]) -> None:
        if self._journal is None:
            raise RuntimeError("no dose journal to append to")
        try:
            self._journal.append(record, t_s=self._t, digest=self._digest())
        except (OSError, JournalError, ValueError) as exc:
            self._journal = None
            self._enter_fault(f"cannot write the dose journal: {exc}")

    def _digest(self) -> dict[str, Any]:
        """What a rollback past this record must not lose, kept in the journal's high-water
        mark: the device counter booked up to and the 24 h dose of each drug."""
        t = self._t
        return {
            "c": self._baseline,
            "w": {d: self._ledger.dose_24h_ug(t, d) for d in sorted(self._ledger.drugs_24h(t))},
            "l": self._strongest_fluids(),
        }

    def _strongest_fluids(self) -> dict[str, float]:
        """Per drug, the highest concentration in the line or the reservoir."""
        strongest: dict[str, float] = {}
        line = self._line
        fluids = [(g.drug, g.concentration_ug_per_ml) for g in line.segments] if line else []
        if self._filled:
            fluids.append((self._res_drug, self._res_conc))
        for drug, conc in fluids:
            if drug and conc > strongest.get(drug, 0.0):
                strongest[drug] = conc
        return strongest

    def _flush_bucket(self) -> None:
        bucket = self._ledger.close_bucket()
        if bucket is None or self._journal is None or self._replaying:
            return
        self._append({"k": "dlv", **bucket.to_record(), "s": self._state_record()})

    def _restore(self, records: list[dict[str, Any]]) -> None:
        self._replaying = True
        rollback: Mapping[str, Any] | None = None
        try:
            last: Mapping[str, Any] | None = None
            drug = ""  # the reservoir's, for buckets journaled before they named their drug
            for record in records:
                kind = record["k"]
                if kind == "rollback":  # written by the journal itself, without a state
                    # Acted on when just accepted (the last record); its effects are then
                    # journaled as the state of the records after it.
                    rollback = record if record is records[-1] else None
                    continue
                if kind == "program":
                    program = self._parse_journaled(record["yaml"])
                    drug = drug or program.drug
                    self._program, self._drug = program, self._library_drug(program.drug)
                    self._ledger.utc_offset_s = program.schedule.utc_offset_s
                    if record["override"]:
                        self._overrides.append((float(record["s"]["t"]), str(record["reason"])))
                elif kind == "refill":
                    drug = str(record["drug"])
                    if self._program is not None and record["drug"] != self._program.drug:
                        self._program, self._drug = None, None
                elif kind == "dlv":
                    self._ledger.apply(DeliveryBucket.from_record(record, drug=drug))
                elif kind == "grant":
                    self._grants.append(float(record["s"]["t"]))
                    if record["rid"]:
                        self._answers[str(record["rid"])] = BolusAnswer(
                            True,
                            "granted (earlier request with this id)",
                            float(record["dose"]),
                            float(record["vol"]),
                            -1.0,
                        )
                last = record["s"]
            if last is not None:
                self._load_state(last)
        finally:
            self._replaying = False
        if rollback is not None:
            self._accept_rollback(rollback)
        self._update_reservoir_alarms()

    def _restore_digest(self, digest: Mapping[str, Any], mark_t: float) -> None:
        """The lost records' dose, from the high-water mark: each drug's 24 h dose then, less
        what the records kept hold of it, is booked as one bucket ending at the mark (it
        leaves the window no earlier than it really does), and the device counter then
        becomes the baseline (the volume to it is in that dose; it moves the line, with
        the fluid last known, without being booked again)."""
        for drug, window_ug in sorted(dict(digest.get("w") or {}).items()):
            missing = float(window_ug) - self._ledger.dose_24h_ug(mark_t, drug)
            if missing > 0.0:
                self._ledger.add(mark_t, DoseSource.UNRECORDED, 0.0, missing, {drug: missing})
        known = self._strongest_fluids()
        strongest = dict(known)
        for drug, conc in dict(digest.get("l") or {}).items():
            strongest[drug] = max(strongest.get(drug, 0.0), float(conc))
            if float(conc) > known.get(drug, 0.0) * (1.0 + _REL_EPS) and self._unsure_line:
                # A lost refill put in a fluid the records kept do not know (another drug or
                # a stronger one): what the line holds is unknown until it is flushed.
                self._unsure_line.unknown = True
        if self._unsure_line is not None:
            self._unsure_line.strongest_ug_per_ml = strongest
        counter = digest.get("c")
        if counter is None:
            return
        counter = float(counter)
        moved = counter - self._baseline if self._baseline is not None else 0.0
        if moved > 0.0 and self._line is not None:
            self._line.push(moved, self._res_conc, self._res_drug)
            self._device_total += moved
            self._res_volume = max(0.0, self._res_volume - moved)
        if self._baseline is None or moved >= 0.0:
            self._baseline, self._baseline_t = counter, mark_t

    def _accept_rollback(self, record: Mapping[str, Any]) -> None:
        """The operator accepted a journal that lost its last records: what they held (grants,
        program changes, refills) is unknown, so therapy waits for the operator to check the
        program and reservoir and resume, and no bolus is given until whatever was lost has
        left the 24 h window. Delivery itself is not lost: the device counter since the last
        record kept is booked at its next report."""
        lost = int(record["mark_n"]) - int(record["last_n"])
        mark_t = float(record["mark_t"])
        self._bolus_hold_until_s = mark_t + SECONDS_PER_DAY
        # Nothing known of the line (every record lost): no dosing until it is flushed.
        self._unsure_line = _UnsureLine(unknown=not self._filled)
        digest = record.get("mark_d")
        if isinstance(digest, Mapping):
            self._restore_digest(digest, mark_t)
        self._run = False
        self._bolus = None
        self._why = (
            f"dose journal rolled back ({lost} records lost; accepted: {record['reason']}): "
            "check the program and the reservoir, then resume"
        )
        self._record("suspend", why=self._why)


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise TherapyError(f"{name}: must be a finite number > 0 (got {value!r})")
