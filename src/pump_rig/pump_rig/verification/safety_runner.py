"""Runs one safety scenario against a fresh therapy engine and judges it; shrinks a failure.

The engine is driven as a controller would drive it: device reports every ``report_s``, the
command it asks for sent over a link with latency, operator and patient requests at their times,
restarts and journal damage. It is judged only by what the harness knows to be true: the volume
its own device model pushed, its own line model and exact 24 h window, the grants it saw, the
calls it made. Engine outputs (commands, answers, refusals, snapshot state and alarms) decide
what an operator does next, never whether the engine was right.

Restart equivalence: at each restart the engine is forked (a deep copy whose journal is a sink)
into a twin that is never restarted and gets exactly the same calls. After a clean restart every
decision must equal the twin's; after a crash the restarted engine may be more cautious, never
more generous. On the first difference the twin is dropped (re-forked at the next restart).
After an operator accepted a rolled-back journal nothing is compared with the twin (what was lost
is lost by decision); the true dose, lockouts and counts are still judged.
"""

from __future__ import annotations

import copy
import math
import random
import tempfile
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TypeVar

from pump_rig.core.dose_journal import DoseJournal
from pump_rig.core.drug_library import DrugLibrary
from pump_rig.core.program import (
    BolusPolicy,
    ProgramError,
    TherapyProgram,
    default_drug_library,
    parse_program,
)
from pump_rig.core.pump_types import PumpAction
from pump_rig.core.therapy_engine import (
    DOSE_LIMIT,
    JOURNAL_FAULT,
    UNDER_DELIVERY,
    CommandIntent,
    EngineConfig,
    TherapyEngine,
    TherapyError,
    TherapyState,
)
from pump_rig.verification.safety_model import (
    DAY_S,
    SALINE,
    DeviceCommand,
    DeviceModel,
    Excess,
    Fluid,
    LimitSchedule,
    LineModel,
    Motion,
    WindowOracle,
)
from pump_rig.verification.safety_scenarios import (
    TEXT_DEFECTS,
    ClearAlarms,
    ClinicianBolus,
    DeviceFactor,
    Event,
    MotorAlarm,
    PatientBolus,
    ProgramSpec,
    Refill,
    Restart,
    Resume,
    Scenario,
    SetProgram,
    Setup,
    Suspend,
    generate,
    program_text,
)

__all__ = [
    "KINDS",
    "SequenceResult",
    "Violation",
    "format_scenario",
    "run_scenario",
    "run_seed",
    "shrink",
]

T = TypeVar("T")

# --- violation kinds (stable names: the shrinker keeps a failure of the same kind) --------------
OVERDOSE: Final = "overdose"  # the true 24 h dose passed the limit, cause not classified
OVERDOSE_LATENCY: Final = "overdose_command_latency"  # ... while a late command was exposed
OVERDOSE_STEP: Final = "overdose_step_past_room"  # ... under a budget smaller than one step
OVERDOSE_OLD_DRUG: Final = "overdose_old_drug_in_line"  # ... of a drug no longer in the reservoir
OVERDOSE_AFTER_RESTART: Final = "overdose_after_crash"  # ... within 24 h of a crash restart
OVERDOSE_AFTER_ROLLBACK: Final = "overdose_after_accepted_rollback"  # ... of an accepted loss
# ... within 24 h of delivering fluid pushed between the engine's last device report and a
# refill to a weaker fluid: the engine cannot tell that volume entered at the old concentration,
# so it counts it as the new one (too little) and later lets the window pass the limit.
OVERDOSE_UNREPORTED_FILL: Final = "overdose_fluid_unreported_at_refill"
LOCKOUT: Final = "bolus_within_lockout"
COUNT: Final = "bolus_over_daily_count"
BOLUS_WITHOUT_POLICY: Final = "bolus_without_policy"
REGRANTED: Final = "bolus_request_id_regranted"
REFUSAL_CHANGED: Final = "refusal_changed_command"
INVALID_PROGRAM: Final = "invalid_program_accepted"
INVALID_REFILL: Final = "invalid_refill_accepted"
DAMAGE_UNDETECTED: Final = "journal_damage_undetected"
ROLLBACK_UNDETECTED: Final = "journal_rollback_undetected"
FAULTED_DOSES: Final = "faulted_engine_doses"
CLEAN_RESTART_DIVERGENCE: Final = "clean_restart_divergence"
CRASH_MORE_GENEROUS: Final = "crash_restart_more_generous"
UNDER_DELIVERY_MISSED: Final = "under_delivery_not_raised"
ENGINE_EXCEPTION: Final = "engine_exception"
SCENARIO_BROKEN: Final = "scenario_not_runnable"
KINDS: Final = (
    OVERDOSE,
    OVERDOSE_LATENCY,
    OVERDOSE_STEP,
    OVERDOSE_OLD_DRUG,
    OVERDOSE_AFTER_RESTART,
    OVERDOSE_AFTER_ROLLBACK,
    OVERDOSE_UNREPORTED_FILL,
    LOCKOUT,
    COUNT,
    BOLUS_WITHOUT_POLICY,
    REGRANTED,
    REFUSAL_CHANGED,
    INVALID_PROGRAM,
    INVALID_REFILL,
    DAMAGE_UNDETECTED,
    ROLLBACK_UNDETECTED,
    FAULTED_DOSES,
    CLEAN_RESTART_DIVERGENCE,
    CRASH_MORE_GENEROUS,
    UNDER_DELIVERY_MISSED,
    ENGINE_EXCEPTION,
    SCENARIO_BROKEN,
)

# Tags on delivery, for telling overdoses apart (see _tag).
TAG_LATENCY: Final = 1
TAG_TINY_BUDGET: Final = 2

_REL: Final = 1e-9
_TWIN_UNCOMMANDED_ALARM: Final = "crash twin dropped: it alarmed on delivery it did not command"
_TWIN_UNCOMMANDED_BOLUS: Final = "crash twin dropped: its bolus or stop counts commands not run"
_TWIN_HOURS: Final = 30.0  # a restart is compared this long (the 24 h window has turned over)
_UNDER_RATIO: Final = 0.9
_UNDER_AFTER_S: Final = 600.0
# How long an operator waits for the pump to show it stopped before a drug change, a flush or
# the re-entry after a rollback, then tries anyway.
_OPERATOR_PATIENCE_S: Final = 900.0
_ROLLBACK_REASON: Final = "bench operator: the lost records are accepted"
_REENTRY_REASON: Final = "re-entered by the operator after a journal rollback"


@dataclass(frozen=True)
class Violation:
    kind: str
    t_s: float  # since the start of the sequence
    message: str

    def __str__(self) -> str:
        return f"{self.kind} at {format_time(self.t_s)}: {self.message}"


@dataclass
class SequenceResult:
    seed: int | None = None
    simulated_s: float = 0.0
    wall_s: float = 0.0
    restarts_clean: int = 0
    restarts_crash: int = 0
    bolus_requests: int = 0
    grants: int = 0
    invalid_programs: int = 0  # refused as they had to be
    journal_damages: int = 0
    journal_rollbacks: int = 0
    events_skipped: int = 0  # while the controller was down or a journal fault was repaired
    max_fraction: float = 0.0  # the largest true 24 h dose / limit in force (no slack)
    max_fraction_t_s: float = 0.0
    max_fraction_drug: str = ""
    within_slack: int = 0  # pieces of delivery over the limit by less than one device step
    notes: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)

    def kinds(self) -> set[str]:
        return {v.kind for v in self.violations}

    def first(self, kind: str) -> Violation | None:
        return next((v for v in self.violations if v.kind == kind), None)


def format_time(t_s: float) -> str:
    days, rest = divmod(t_s, DAY_S)
    h, rest = divmod(rest, 3600.0)
    m, s = divmod(rest, 60.0)
    return f"+{int(days)}d {int(h):02d}:{int(m):02d}:{s:06.3f}"


def run_scenario(
    scenario: Scenario,
    *,
    engine_cls: type[TherapyEngine] = TherapyEngine,
    library: DrugLibrary | None = None,
    trace: Callable[[str], None] | None = None,
) -> SequenceResult:
    """Run ``scenario`` against a fresh, journaled ``engine_cls`` and judge it. ``trace``
    is given a line for every event, refusal, command sent and command applied."""
    wall0 = time.perf_counter()
    with journal_dir() as workdir:
        lib = library or default_drug_library()
        harness = _Harness(scenario, engine_cls, lib, workdir, trace)
        result = harness.run()
    result.wall_s = time.perf_counter() - wall0
    return result


def run_seed(seed: int, profile: str = "standard") -> SequenceResult:
    """Generate the scenario of ``seed`` (safety_scenarios.generate) and run it."""
    return run_scenario(generate(random.Random(seed), profile, seed=seed))


@contextmanager
def journal_dir(prefix: str = "pumprig-safety-") -> Iterator[Path]:
    """A fresh directory for dose journals; on tmpfs when there is one (the journal fsyncs
    every record: there that costs next to nothing)."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() else None
    with tempfile.TemporaryDirectory(prefix=prefix, dir=base) as name:
        yield Path(name)


class _NullJournal:
    """The journal of a forked twin: it takes every record and keeps none, so the twin behaves
    as a journaled engine (a record closes the open delivery bucket) without touching disk."""

    records_written = 0

    def append(self, record: object, **kwargs: object) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class _Shortfall:
    """A stretch of running in which the device delivers less than 90 % of the commanded rate
    (the harness knows: its factor), for the under-delivery requirement."""

    since: float
    commanded_ul: float = 0.0
    delivered_ul: float = 0.0
    judged: bool = False
    # The command run meanwhile: the engine judges each command on its own, so a new command
    # starts a new stretch.
    command: object = None
    asked_ul: float = math.inf  # what that command still asked for when the stretch began


@dataclass
class _Fault:
    """A journal fault found at a reopen, and when the operator repairs it."""

    event: Restart
    backup: bytes
    repair_at: float


@dataclass
class _PendingLimit:
    """A lower daily limit: in force once a command issued after it reaches the device (what
    the old command delivers in the meantime no engine could stop)."""

    drug: str
    limit_ug: float
    after_serial: int


class _Harness:
    def __init__(
        self,
        scenario: Scenario,
        engine_cls: type[TherapyEngine],
        library: DrugLibrary,
        workdir: Path,
        trace: Callable[[str], None] | None = None,
    ) -> None:
        s = scenario.setup
        self.trace = trace
        self.scenario = scenario
        self.setup = s
        self.lib = library
        self.engine_cls = engine_cls
        self.rng = random.Random(s.rng_seed)
        self.journal = workdir / "dose.journal"
        self.config = EngineConfig(
            line_dead_volume_ul=s.dead_volume_ul,
            line_primed=s.line_primed,
            bucket_s=s.bucket_s,
            under_delivery_tolerance_ul=s.under_delivery_tolerance_ul,
            device_resolution_ul=(
                EngineConfig().device_resolution_ul
                if s.resolution_source == "device"
                else s.resolution_ul
            ),
        )
        self.report_max_s = s.report_s * (1.0 + s.jitter)
        spread = s.latency_s if s.latency_per_command else 0.0
        self.device = DeviceModel(
            resolution_ul=s.resolution_ul,
            counter_steps=s.counter_start_steps,
            watchdog_s=max(5.0, 2.5 * self.report_max_s) + spread + 1.0,
        )
        self.oracle = WindowOracle(s.resolution_ul)
        self.limits = LimitSchedule({d: library.get(d).max_daily_dose_ug for d in library.names()})
        self.result = SequenceResult(seed=scenario.seed, simulated_s=s.days * DAY_S)
        self.t = 0.0
        self.real: TherapyEngine | None = None
        self.twin: TherapyEngine | None = None
        self.mode = ""  # "equivalent" | "conservative" | "off" (no comparison) while a twin lives
        self.twin_until = 0.0
        self.twin_sent: CommandIntent | None = None
        self.twin_sent_counter = 0.0
        # After a crash the device may run commands the twin would not have sent: from then
        # on the twin counts delivery it did not command, and an alarm it raises about that
        # delivery is its own artefact, not something the restarted engine missed.
        self.twin_uncommanded = False
        self.twin_inherit: tuple[CommandIntent, float] | None = None
        self.alive = True
        self.reopen_at = math.inf
        self.down_restart: tuple[Restart, bytes | None] | None = None
        self.fault: _Fault | None = None
        self.sent: CommandIntent | None = None
        self.sent_counter = 0.0
        self.serial = 0
        self.next_ctrl = 0.0
        self.next_change = math.inf
        self.active: set[str] = set()
        self.program: TherapyProgram | None = None  # the engine's program, as the calls made it
        self.accepted: dict[str, TherapyProgram] = {}  # the latest accepted, per drug
        self.pending_limits: list[_PendingLimit] = []
        self.reservoir = SALINE
        self.fills: list[tuple[float, str]] = []
        self.line = LineModel(s.dead_volume_ul, content=SALINE, entering=SALINE, pushed_ul=0.0)
        self.grants: list[float] = []
        self.granted_ids: dict[str, float] = {}  # request id: when first granted
        self.crashes: list[float] = []
        self.rollbacks: list[float] = []  # accepted by the operator
        self.shortfall: _Shortfall | None = None
        self.finished = False  # the engine runs on a history it should have refused
        self.applied_serial = 0
        self.reported_ul = 0.0  # the counter the engine last heard
        # Entered-volume spans pushed between the last report and a refill that changed the
        # fluid: the engine cannot know they entered at the old concentration.
        self.unreported_fills: list[tuple[float, float]] = []
        self.unreported_delivered: list[float] = []  # when such a span left the tip
        self.waiting_since: float | None = None  # the operator waits for the pump to stop
        self.reentry_due = False  # after an accepted rollback, once the pump shows stopped

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> SequenceResult:
        end = self.setup.days * DAY_S
        events = deque(sorted(self.scenario.events, key=lambda e: e.at_s))
        try:
            if self._start():
                self._loop(end, events)
        except Exception as exc:  # the engine (or the model) raised: the sequence ends here
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self._violation(
                ENGINE_EXCEPTION,
                f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})",
            )
        finally:
            self._close()
        self.result.simulated_s = self.t
        self._judge_window()
        return self.result

    def _loop(self, end: float, events: deque[Event]) -> None:
        stuck = 0
        while self.t < end and not self.finished:
            times = [end, self.device.next_event_s(self.t)]
            if self.alive:
                times += [self.next_ctrl, self.next_change]
            else:
                times.append(self.reopen_at)
            if self.fault is not None:
                times.append(self.fault.repair_at)
            if events and not self._operator_waits(events[0]):
                times.append(events[0].at_s)
            t_next = max(self.t, min(times))
            stuck = stuck + 1 if t_next == self.t else 0
            if stuck > 10000:
                raise RuntimeError(f"simulation stuck at {format_time(self.t)}")
            self._move_to(t_next)
            stopped = self.device.settle(self.t)
            self._after_device()
            if not self.alive and self.t >= self.reopen_at:
                self._come_back()
            if self.fault is not None and self.t >= self.fault.repair_at:
                self._repair()
            due = self.t >= self.next_ctrl or self.t >= self.next_change
            if self.alive and (stopped or due):
                self._control_step()
            if self.reentry_due and self._pump_shows_stopped():
                self.reentry_due = False
                self._reentry()
                self._issue()
            while events and events[0].at_s <= self.t and not self._operator_waits(events[0]):
                self._act(events.popleft())
            if self.twin is not None and self.t >= self.twin_until:
                self._drop_twin()

    def _abs(self) -> float:
        return self.setup.t0_s + self.t

    def _pump_shows_stopped(self) -> bool:
        """What an operator waits for before changing the drug or flushing the line: the
        engine's status says the device confirmed its stop (or patience ran out)."""
        if not self.alive or self.fault is not None:
            self.waiting_since = None
            return False
        snap = self._engine().snapshot(self._abs())
        if snap.device_stopped:
            self.waiting_since = None
            return True
        if self.waiting_since is None:
            self.waiting_since = self.t
        if self.t - self.waiting_since >= _OPERATOR_PATIENCE_S:
            self.waiting_since = None
            self.result.notes["operator gave up waiting for the pump to stop"] += 1
            return True
        return False

    def _operator_waits(self, event: Event) -> bool:
        """A due refill that changes the drug or flushes waits (and the events after it)."""
        if not isinstance(event, Refill) or event.at_s > self.t:
            return False
        if not self.alive or self.fault is not None:
            return False
        if not event.flush and event.drug == self._engine().snapshot(self._abs()).drug:
            return False
        return not self._pump_shows_stopped()

    def _engine(self) -> TherapyEngine:
        assert self.real is not None
        return self.real

    def _start(self) -> bool:
        s = self.setup
        try:
            first = self._parse(s.first_program, s.concentration)
        except ProgramError as exc:
            self._violation(SCENARIO_BROKEN, f"first program: {exc}")
            return False
        fluid = Fluid(first.drug, first.concentration_ug_per_ml)
        self.line = LineModel(
            s.dead_volume_ul,
            content=fluid if s.line_primed else SALINE,
            entering=fluid,
            pushed_ul=self.device.position_ul,
        )
        self.device.set_reservoir(first.reservoir_volume_ul)
        self.reservoir = fluid
        self.fills.append((0.0, fluid.drug))
        self.real = self._open()
        self._tell_resolution(self.real)
        now = self._abs()
        self.reported_ul = self.device.counter_ul
        self.real.on_device_volume(now, self.reported_ul)  # the baseline
        try:
            self.real.set_program(now, first)
        except TherapyError as exc:
            self._violation(SCENARIO_BROKEN, f"first program refused: {exc}")
            return False
        self._accepted_program(first)
        self._control_step()
        return True

    def _close(self) -> None:
        real, self.real, self.twin = self.real, None, None
        if real is not None and self.fault is None:
            try:
                real.close()
            except Exception as exc:  # (in a finally: it must not hide what ended the run)
                self._violation(ENGINE_EXCEPTION, f"close: {type(exc).__name__}: {exc}")

    def _open(self, *, confirm_rollback: str = "") -> TherapyEngine:
        kwargs: dict[str, Any] = {}
        if confirm_rollback:
            kwargs["confirm_rollback"] = confirm_rollback
        return self.engine_cls.open(
            t_s=self._abs(),
            library=self.lib,
            journal_path=self.journal,
            config=self.config,
            **kwargs,
        )

    def _tell_resolution(self, engine: TherapyEngine) -> None:
        s = self.setup
        engine.on_device_resolution(0.0 if s.resolution_source == "config" else s.resolution_ul)

    def _parse(
        self, spec: ProgramSpec, conc: float, *, drug: str = "", defect: str = ""
    ) -> TherapyProgram:
        text = program_text(spec, conc, drug=drug or None, defect=defect, library=self.lib)
        return parse_program(text, library=self.lib)

    # --- the device -----------------------------------------------------------------------------

    def _move_to(self, t1: float) -> None:
        device, t0 = self.device, self.t
        asked_ul = device.budget_left_ul()
        motion = device.advance(t0, t1)
        if motion is not None:
            self.oracle.add(motion, self.line, self._tag(motion))
        command = device.command
        if t1 > t0:
            short = (
                device.running
                and command is not None
                and device.factor < _UNDER_RATIO
                and device.reservoir_left_ul() >= device.resolution_ul
            )
            if not short or command is None:
                self.shortfall = None
            else:
                stretch = self.shortfall
                if stretch is None or stretch.command is not command:
                    stretch = self.shortfall = _Shortfall(t0, command=command, asked_ul=asked_ul)
                # Commanded is what the command asks for: its rate, up to its budget.
                stretch.commanded_ul = min(
                    stretch.asked_ul,
                    stretch.commanded_ul + command.rate_ul_per_h * (t1 - t0) / 3600.0,
                )
                stretch.delivered_ul += motion.p1_ul - motion.p0_ul if motion else 0.0
        self.t = t1

    def _tag(self, motion: Motion) -> int:
        """How the delivery now happens, to tell the causes of an overdose apart."""
        device = self.device
        command = device.command
        tag = 0
        # A budget relative to the application (no absolute stop), on a command the engine has
        # already replaced or made before it knew what the device delivered since its last
        # report and during the latency.
        relative = command is not None and command.stop_at_ul <= 0
        stale = device.latency_steps >= 1.0 and math.isfinite(device.budget_steps)
        if relative and (device.pending or stale):
            tag |= TAG_LATENCY
        dead = self.line.dead_volume_ul
        lo, hi = motion.p0_ul - dead, motion.p1_ul - dead
        if any(a < hi and lo < b for a, b in self.unreported_fills):
            self.unreported_delivered.append(motion.t1_s)
        if command is not None and device.budget_steps == 1:
            asked = command.volume_limit_ul or math.inf
            if command.stop_at_ul > 0:
                asked = min(asked, command.stop_at_ul - device.applied_counter_ul)
            if asked < device.resolution_ul:
                tag |= TAG_TINY_BUDGET
        return tag

    def _after_device(self) -> None:
        device, command = self.device, self.device.command
        if self.trace is not None and command is not None and command.serial != self.applied_serial:
            self.applied_serial = command.serial
            self._log(f"device applies #{command.serial}: {command}")
        # Lower limits take effect once a command issued after them has arrived.
        if self.pending_limits and command is not None:
            keep = []
            for pending in self.pending_limits:
                if command.serial > pending.after_serial:
                    self.limits.set(pending.drug, device.applied_t_s, pending.limit_ug)
                else:
                    keep.append(pending)
            self.pending_limits = keep

    def _latency(self) -> float:
        s = self.setup
        return self.rng.uniform(0.0, s.latency_s) if s.latency_per_command else s.latency_s

    # --- the controller -------------------------------------------------------------------------

    def _control_step(self) -> None:
        device = self.device
        applied = self.sent is not None and device.pending == 0
        counter, now = device.counter_ul, self._abs()
        self._engine().on_device_volume(now, counter, command_applied=applied)
        if self.twin is not None:
            # The twin is never restarted, so its commands are the ones the device would run;
            # while the device runs one at the twin's rate, the twin's command is applied.
            running, twin_sent = device.command, self.twin_sent
            twin_applied = applied or (
                running is not None
                and twin_sent is not None
                and running.infuse == (twin_sent.action is PumpAction.INFUSE)
                and running.rate_ul_per_h == twin_sent.flow_rate_ul_per_h
            )
            self.twin.on_device_volume(now, counter, command_applied=twin_applied)
            if self.twin_uncommanded and self._twin_alone_in_alarm():
                self.result.notes[_TWIN_UNCOMMANDED_ALARM] += 1
                self._drop_twin()
        self.reported_ul = counter
        self._issue()
        self._check_under_delivery()
        s = self.setup
        self.next_ctrl = self.t + s.report_s * (1.0 + s.jitter * self.rng.uniform(-1.0, 1.0))

    def _issue(self) -> CommandIntent:
        """The engine's command now: sent if it is a new one, else a heartbeat."""
        now, device = self._abs(), self.device
        command = self._engine().command(now)
        twin_command = self.twin.command(now) if self.twin is not None else None
        if self.fault is not None and command.action is not PumpAction.STOP:
            self._violation(FAULTED_DOSES, f"the journal-faulted engine commands {command}")
        if command is not self.sent:
            self.serial += 1
            self.sent, self.sent_counter = command, device.counter_ul
            infuse = command.action is PumpAction.INFUSE
            self._log(f"command #{self.serial}: {_show(command)}")
            device.send(
                self.t,
                DeviceCommand(
                    infuse,
                    command.flow_rate_ul_per_h,
                    command.volume_limit_ul,
                    command.stop_at_device_ul,
                    self.serial,
                ),
                self._latency(),
                known_ul=self.reported_ul,
            )
            self._snapshot_for_next_change()
        else:
            device.send(self.t, None, self._latency())
            if self.t >= self.next_change:
                self._snapshot_for_next_change()
        if twin_command is not None:
            self._compare_commands(command, twin_command)
        self._drain()
        return command

    def _snapshot_for_next_change(self) -> None:
        now = self._abs()
        snap = self._engine().snapshot(now)
        if self.twin is not None:
            self.twin.snapshot(now)
        change = snap.next_change_s
        self.next_change = change - self.setup.t0_s if change is not None else math.inf
        if self.next_change <= self.t:
            self.next_change = math.inf

    def _drain(self) -> None:
        for event in self._engine().drain_alarm_events():
            if event.active:
                self.active.add(event.code)
            else:
                self.active.discard(event.code)
        if self.twin is not None:
            self.twin.drain_alarm_events()

    def _both(self, call: Callable[[TherapyEngine], T]) -> tuple[T, T | None]:
        """The same call on the engine and on its twin (exceptions propagate)."""
        result = call(self._engine())
        twin = self.twin
        return result, call(twin) if twin is not None else None

    def _both_try(self, call: Callable[[TherapyEngine], object]) -> tuple[str, str | None]:
        """The same call on both; each gives "" if accepted, else the refusal's message."""

        def attempt(engine: TherapyEngine) -> str:
            try:
                call(engine)
            except TherapyError as exc:
                return str(exc) or "refused"
            return ""

        real = attempt(self._engine())
        if real:
            self._log(f"refused: {real}")
        twin = self.twin
        return real, attempt(twin) if twin is not None else None

    def _log(self, text: str) -> None:
        if self.trace is not None:
            self.trace(f"{format_time(self.t)} {text}")

    def _violation(self, kind: str, message: str, t_s: float | None = None) -> None:
        self.result.violations.append(Violation(kind, self.t if t_s is None else t_s, message))

    # --- the twin -------------------------------------------------------------------------------

    def _fork(self) -> None:
        real = self._engine()
        memo: dict[int, Any] = {id(self.lib): self.lib, id(real.library): real.library}
        for value in vars(real).values():
            if isinstance(value, DoseJournal):
                memo[id(value)] = _NullJournal()
        try:
            self.twin = copy.deepcopy(real, memo)
        except Exception as exc:  # an engine that cannot be copied is simply not compared
            self.result.notes[f"twin not forked: {type(exc).__name__}"] += 1
            self.twin = None
            return
        self.twin_sent = None
        self.twin_uncommanded = False
        self.twin_inherit = (self.sent, self.sent_counter) if self.sent is not None else None

    def _twin_alone_in_alarm(self) -> bool:
        """The twin latched DOSE_LIMIT (its ledger saw delivery past the maximum) and the
        restarted engine is not in alarm."""
        twin, real = self.twin, self._engine()
        if twin is None or real.state is TherapyState.ALARM:
            return False
        snap = twin.snapshot(self._abs())
        return snap.therapy_state is TherapyState.ALARM and snap.detail.startswith(
            f"alarm: {DOSE_LIMIT}:"
        )

    def _drop_twin(self) -> None:
        self.twin, self.mode = None, ""

    def _diverged(self, what: str, *, generous: bool) -> None:
        if self.mode == "equivalent":
            self._violation(CLEAN_RESTART_DIVERGENCE, what)
        elif self.mode == "conservative" and generous:
            self._violation(CRASH_MORE_GENEROUS, what)
        elif self.mode == "conservative":
            self.result.notes["crash restart more cautious than the twin"] += 1
        self._drop_twin()

    def _compare_decision(self, what: str, real_refusal: str, twin_refusal: str | None) -> None:
        if twin_refusal is None or self.mode == "off":
            return
        if self.twin_uncommanded and (
            twin_refusal.startswith("a bolus is in progress")
            or "has not yet confirmed it stopped" in twin_refusal
        ):
            # Which bolus volume is still to come, and whether the device confirmed a stop,
            # the twin knows from the commands it thinks the device runs; after a crash the
            # device ran others: no reference.
            self.result.notes[_TWIN_UNCOMMANDED_BOLUS] += 1
            self._drop_twin()
            return
        if (
            self.mode == "conservative"
            and not real_refusal
            and "needs suspended therapy" in twin_refusal
            and self._engine().state is not TherapyState.RUNNING
        ):
            # The restarted engine holds therapy (an alarm, a suspension) where the twin runs
            # it: more cautious, and a drug change is taken where therapy is not running.
            self.result.notes["crash restart more cautious than the twin"] += 1
            self._drop_twin()
            return
        if (real_refusal == "") != (twin_refusal == ""):
            real = "accepted" if not real_refusal else f"refused ({real_refusal})"
            twin = "accepted" if not twin_refusal else f"refused ({twin_refusal})"
            self._diverged(
                f"{what}: restarted engine {real}, twin {twin}", generous=not real_refusal
            )

    def _compare_commands(self, real: CommandIntent, twin: CommandIntent) -> None:
        counter = self.device.counter_ul
        if twin is not self.twin_sent:
            self.twin_sent, self.twin_sent_counter = twin, counter
            inherit = self.twin_inherit
            if inherit is not None and _same_content(inherit[0], twin):
                self.twin_sent_counter = inherit[1]  # the fork's copy of the command then sent
            self.twin_inherit = None
        if self.mode == "conservative" and not _same_content(real, twin):
            self.twin_uncommanded = True
        if self.mode != "equivalent" or self.twin is None or _same_content(real, twin):
            # After a crash the restarted engine may run other commands for a while (what the
            # device did since the last record is booked later, at once): the window oracle
            # judges what they let through, and the twin the grants.
            return
        problem, generous = self._command_difference(real, twin)
        if problem:
            self._diverged(
                f"command: restarted engine {_show(real)}, twin {_show(twin)} ({problem})",
                generous=generous,
            )

    def _command_difference(self, real: CommandIntent, twin: CommandIntent) -> tuple[str, bool]:
        infuse_r = real.action is PumpAction.INFUSE
        infuse_t = twin.action is PumpAction.INFUSE
        if infuse_r != infuse_t:
            return "action", infuse_r
        if not infuse_r:
            return "", False
        rate_r, rate_t = real.flow_rate_ul_per_h, twin.flow_rate_ul_per_h
        if not math.isclose(rate_r, rate_t, rel_tol=_REL, abs_tol=1e-12):
            return "rate", rate_r > rate_t
        if self.mode != "equivalent":
            return "", False  # budgets: the oracle judges what they let through
        s = self.setup
        res = s.resolution_ul
        drift = rate_r * (s.latency_s + 2.0 * self.report_max_s) / 3600.0
        lim_r, lim_t = real.volume_limit_ul, twin.volume_limit_ul
        if (lim_r > 0) != (lim_t > 0):
            return "volume limit", lim_r == 0
        # Where a relative volume limit ends is compared for doses that fit one command; one
        # near the per-command maximum is a clamp, re-planned wherever the device stops (the
        # grants, the rate and the absolute stop are compared always).
        clamp = self.config.max_volume_per_command_ul
        if lim_r > 0 and max(lim_r, lim_t) < 0.5 * clamp:
            end_r, end_t = self.sent_counter + lim_r, self.twin_sent_counter + lim_t
            # An absolute stop before it ends the command there, whatever its limit says.
            if real.stop_at_device_ul > 0:
                end_r = min(end_r, real.stop_at_device_ul)
            if twin.stop_at_device_ul > 0:
                end_t = min(end_t, twin.stop_at_device_ul)
            if abs(end_r - end_t) > 0.011 * max(lim_r, lim_t) + 2 * res + 1e-3 + drift:
                return "volume limit", end_r > end_t
        stop_r, stop_t = real.stop_at_device_ul, twin.stop_at_device_ul
        if (stop_r > 0) != (stop_t > 0):
            return "stop at device", stop_r == 0
        if stop_r > 0:
            room = max(stop_r, stop_t) - self.device.counter_ul
            if abs(stop_r - stop_t) > 0.011 * max(room, 0.0) + 2 * res + 1e-3:
                return "stop at device", stop_r > stop_t
        return "", False

    # --- checks ---------------------------------------------------------------------------------

    def _check_unchanged(
        self, what: str, before: CommandIntent, *, kind: str = REFUSAL_CHANGED
    ) -> None:
        after = self._engine().command(self._abs())
        if not _same_content(after, before):
            self._violation(kind, f"{what}: command changed from {_show(before)} to {_show(after)}")

    def _check_grant(self, request_id: str) -> None:
        t = self.t
        policy: BolusPolicy | None = self.program.patient_bolus if self.program else None
        if policy is None:
            self._violation(BOLUS_WITHOUT_POLICY, "a patient bolus granted without a bolus policy")
        else:
            if self.grants and t - self.grants[-1] < policy.lockout_s - 1e-6:
                self._violation(
                    LOCKOUT,
                    f"granted {t - self.grants[-1]:.3f} s after the previous grant "
                    f"(lockout {policy.lockout_s:g} s)",
                )
            recent = sum(1 for g in self.grants if g > t - DAY_S) + 1
            if recent > policy.max_per_24h:
                self._violation(COUNT, f"grant {recent} in 24 h (at most {policy.max_per_24h})")
        self.grants.append(t)
        if request_id:
            self.granted_ids.setdefault(request_id, t)
        self.result.grants += 1

    def _check_under_delivery(self) -> None:
        """Delivering < 90 % of the commanded rate for 10 minutes of running must have raised
        UNDER_DELIVERY (by the next report after them, and the engine's grace)."""
        stretch = self.shortfall
        if stretch is None or stretch.judged:
            return
        grace = 2.0 * self.report_max_s + self.config.under_delivery_grace_s + 1.0
        if self.t - stretch.since < _UNDER_AFTER_S + grace:
            return
        stretch.judged = True
        if UNDER_DELIVERY in self.active:
            self.result.notes["under-delivery raised in time"] += 1
            return
        # The engine's tolerance (absolute + 5 %) and whole steps hide a smaller shortfall.
        tolerance = self.config.under_delivery_tolerance_ul + 3.0 * self.device.resolution_ul
        if stretch.commanded_ul < 20.0 * tolerance:
            self.result.notes["under-delivery below the engine's tolerance"] += 1
            return
        self._violation(
            UNDER_DELIVERY_MISSED,
            f"since {format_time(stretch.since)} the device delivered {stretch.delivered_ul:.4g} "
            f"of {stretch.commanded_ul:.4g} µL commanded; no UNDER_DELIVERY",
        )

    # --- events ---------------------------------------------------------------------------------

    def _act(self, event: Event) -> None:
        self._log(f"event {event!r}")
        if not self.alive or self.fault is not None:
            self.result.events_skipped += 1
            return
        if isinstance(event, PatientBolus):
            self._patient_bolus(event)
        elif isinstance(event, SetProgram):
            self._set_program(event)
        elif isinstance(event, ClinicianBolus):
            self._clinician_bolus(event)
        elif isinstance(event, Refill):
            self._refill(event)
        elif isinstance(event, Suspend):
            self._both(lambda e: e.suspend(self._abs(), "bench"))
        elif isinstance(event, Resume):
            real, twin = self._both_try(lambda e: e.resume(self._abs()))
            self._compare_decision("resume", real, twin)
        elif isinstance(event, MotorAlarm):
            active = event.active
            self._both(lambda e: e.on_alarm(self._abs(), "MOTOR_STALL", 2, active, "motor_driver"))
        elif isinstance(event, ClearAlarms):
            self._both(lambda e: e.clear_alarms(self._abs()))
        elif isinstance(event, Restart):
            self._restart(event)
            return
        elif isinstance(event, DeviceFactor):
            self.device.set_factor(event.factor)
            return
        self._issue()

    def _patient_bolus(self, event: PatientBolus) -> None:
        before = self._issue()
        rid, now = event.request_id, self._abs()
        real, twin = self._both(lambda e: e.request_bolus(now, rid))
        self._log(f"bolus {rid!r}: {real.message}")
        self.result.bolus_requests += 1
        replay = bool(rid) and rid in self.granted_ids
        after = self._engine().command(now)
        if real.granted and replay and not _same_content(after, before):
            # A second bolus for a retried id: a violation, unless the engine lost the first
            # grant with journal records the operator accepted to lose.
            if any(t > self.granted_ids[rid] for t in self.rollbacks):
                self.result.notes["request id forgotten with accepted journal loss"] += 1
                self._check_grant(rid)
            else:
                self._violation(REGRANTED, f"bolus request {rid!r} retried: a second bolus")
        elif real.granted and not replay:
            self._check_grant(rid)
        else:
            what = f"bolus request {rid!r} ({'a retry' if replay else real.message})"
            self._check_unchanged(what, before)
        if twin is not None and self.mode != "off" and real.granted != twin.granted:
            self._diverged(
                f"bolus {rid!r}: restarted engine {'granted' if real.granted else 'denied'} "
                f"({real.message}), twin {'granted' if twin.granted else 'denied'} "
                f"({twin.message})",
                generous=real.granted,
            )

    def _set_program(self, event: SetProgram) -> None:
        spec, defect = event.program, event.defect
        drug, conc = spec.drug, self.reservoir.concentration_ug_per_ml
        if defect == "wrong_drug":
            drug = next(d for d in self.lib.names() if d != self.reservoir.drug)
            conc = self.lib.get(drug).min_concentration_ug_per_ml
        elif defect == "wrong_concentration":
            d = self.lib.get(drug)
            lo, hi = d.min_concentration_ug_per_ml, d.max_concentration_ug_per_ml
            conc = lo if conc != lo else hi
        try:
            program = self._parse(
                spec, conc, drug=drug, defect=defect if defect in TEXT_DEFECTS else ""
            )
        except ProgramError:
            if defect in TEXT_DEFECTS:
                self.result.invalid_programs += 1
            else:
                self.result.notes["program invalid at the reservoir's concentration"] += 1
            return
        if defect in TEXT_DEFECTS:
            self._violation(INVALID_PROGRAM, f"the parser accepted a program with defect {defect}")
            return
        override = bool(event.override_reason) or defect == "override_without_reason"
        reason = event.override_reason
        must_refuse = self._program_problems(program, override and bool(reason.strip()))
        before = self._issue()
        now = self._abs()
        real, twin = self._both_try(
            lambda e: e.set_program(
                now, program, override_titration=override, override_reason=reason
            )
        )
        self._compare_decision(f"program {program.name}", real, twin)
        if not real:
            if must_refuse:
                self._violation(
                    INVALID_PROGRAM, f"program {program.name} accepted: {', '.join(must_refuse)}"
                )
            self._accepted_program(program)
            after_serial = self.serial
            self._issue()
            if self.serial == after_serial:
                # Nothing new to send: the command the engine wants is the one it last sent.
                # The new limit holds once the device runs it (now, unless it is still on its
                # way: until then the one before delivers, which no engine could stop).
                running = self.device.command
                if running is not None and running.serial >= self.serial:
                    self._resolve_pending_limits()
                else:
                    for pending in self.pending_limits:
                        pending.after_serial = self.serial - 1
            return
        if must_refuse:
            self.result.invalid_programs += 1
        else:
            self.result.notes["valid program refused"] += 1
        self._check_unchanged(f"refused program {program.name}", before)

    def _program_problems(self, program: TherapyProgram, overridden: bool) -> list[str]:
        """Why the engine must refuse ``program`` now (none: it may accept it)."""
        problems = []
        if program.drug != self.reservoir.drug:
            problems.append(f"the reservoir holds {self.reservoir.drug or 'nothing'}")
        elif program.concentration_ug_per_ml != self.reservoir.concentration_ug_per_ml:
            problems.append(f"the reservoir holds {self.reservoir.concentration_ug_per_ml:g} µg/mL")
        current = self.program
        if current is not None and current.drug == program.drug and not overridden:
            old = current.daily_dose_ug
            allowed = self.lib.get(program.drug).titration.max_increase_ug(old)
            if program.daily_dose_ug - old > allowed * (1.0 + _REL):
                problems.append(f"a rise from {old:.6g} to {program.daily_dose_ug:.6g} µg/day")
        return problems

    def _accepted_program(self, program: TherapyProgram) -> None:
        self.program = program
        self.accepted[program.drug] = program
        drug = program.drug
        limit = program.daily_limit_ug(self.lib.get(drug))
        self.pending_limits = [p for p in self.pending_limits if p.drug != drug]
        if limit >= self.limits.at(drug, self.t):
            self.limits.set(drug, self.t, limit)
        else:
            self.pending_limits.append(_PendingLimit(drug, limit, self.serial))

    def _resolve_pending_limits(self) -> None:
        for pending in self.pending_limits:
            self.limits.set(pending.drug, self.t, pending.limit_ug)
        self.pending_limits = []

    def _clinician_bolus(self, event: ClinicianBolus) -> None:
        before = self._issue()
        now = self._abs()
        real, twin = self._both_try(
            lambda e: e.clinician_bolus(
                now,
                event.kind,
                dose_ug=event.dose_ug,
                volume_ul=event.volume_ul,
                duration_s=event.duration_min * 60.0,
            )
        )
        self._compare_decision(f"{event.kind} bolus", real, twin)
        if real:
            self._check_unchanged(f"refused {event.kind} bolus", before)

    def _refill(self, event: Refill, *, operator: bool = False) -> bool:
        device = self.device
        line_drugs = self.line.drugs_in_line(device.position_ul) - {event.drug}
        must_refuse = []
        if event.bridge and event.flush:
            must_refuse.append("both bridge and flush")
        if line_drugs and not (event.bridge or event.flush):
            must_refuse.append(
                f"the line holds {', '.join(sorted(line_drugs))}, no flush or bridge"
            )
        kwargs: dict[str, Any] = {
            "volume_ul": event.volume_ul,
            "drug": event.drug,
            "concentration_ug_per_ml": event.concentration,
            "withdrawn_ul": device.reservoir_left_ul() if event.report_withdrawn else 0.0,
            "bridge": event.bridge,
        }
        if event.flush:
            kwargs["flush"] = True
        before = self._issue()
        now = self._abs()
        real, twin = self._both_try(lambda e: e.refill(now, **kwargs))
        self._compare_decision(f"refill {event.drug}", real, twin)
        if real:
            if not operator:
                self._check_unchanged(f"refused refill ({real})", before)
            return False
        if must_refuse:
            self._violation(
                INVALID_REFILL, f"refill with {event.drug} accepted: {'; '.join(must_refuse)}"
            )
        # Done physically once the engine took it: flush, then the new fluid enters.
        position = device.position_ul
        if event.flush:
            self.line.flush(position)
        fluid = Fluid(event.drug, event.concentration)
        old = self.line.entering
        weaker = old.is_drug and (
            old.drug != fluid.drug or old.concentration_ug_per_ml > fluid.concentration_ug_per_ml
        )
        if weaker and position - self.reported_ul >= device.resolution_ul:
            self.unreported_fills.append((self.reported_ul, position))
        self.line.fill(position, fluid)
        device.set_reservoir(event.volume_ul)
        if fluid.drug != self.reservoir.drug:
            self.program = None  # the engine needs a program for the new drug
            how = "flush" if event.flush else "bridge" if event.bridge else "neither"
            self.result.notes[f"drug change accepted ({how})"] += 1
        self.reservoir = fluid
        self.fills.append((self.t, fluid.drug))
        return True

    # --- restarts and journal damage ------------------------------------------------------------

    def _restart(self, event: Restart) -> None:
        self._drain()
        self._fork()  # the twin: this engine, had it not restarted now
        real = self._engine()
        if event.crash:
            real.drop()  # what it journaled stays; its process (and its lock) is gone
            self.result.restarts_crash += 1
            self.crashes.append(self.t)
        else:
            real.close()
            self.result.restarts_clean += 1
        self.real = None  # a crashed engine is simply dropped: what it journaled stays
        if self.twin is not None:
            self.mode = "conservative" if event.crash else "equivalent"
            self.twin_until = self.t + _TWIN_HOURS * 3600.0
        backup = self._damage(event) if event.damage else None
        if event.crash and event.downtime_s > 0:
            self.alive = False
            self.reopen_at = self.t + event.downtime_s
            self.down_restart = (event, backup)
            return
        self._reopen(event, backup)

    def _come_back(self) -> None:
        assert self.down_restart is not None
        event, backup = self.down_restart
        self.down_restart = None
        self.reopen_at = math.inf
        self._reopen(event, backup)

    def _reopen(self, event: Restart, backup: bytes | None) -> None:
        self.real = self._open()
        self.alive = True
        self._fresh_engine()
        if backup is not None and self._check_fault(event):
            self.fault = _Fault(event, backup, self.t + event.fault_s)
            if self.twin is not None:
                self.mode = "off"
        self._control_step()

    def _fresh_engine(self) -> None:
        assert self.real is not None
        # (``sent`` stays: the device still runs it, and a restored engine may know it.)
        self.active = set()
        if self.shortfall is not None:  # a new engine gets its own 10 minutes
            self.shortfall = _Shortfall(self.t)
        self.next_change = math.inf
        self._tell_resolution(self.real)
        if self.twin is not None:
            self._tell_resolution(self.twin)

    def _damage(self, event: Restart) -> bytes | None:
        """Damage the journal as ``event`` says; returns its bytes from before (None: too short
        to damage that way, left alone)."""
        data = self.journal.read_bytes()
        lines = data.splitlines(keepends=True)
        if event.damage == "flip":
            k = min(len(data) - 1, int(event.where * len(data)))
            damaged = data[:k] + bytes([data[k] ^ 0x5A]) + data[k + 1 :]
            self.result.journal_damages += 1
        elif event.damage == "truncate":
            last = lines[-1]
            if len(lines) < 2 or len(last) < 3:
                return None
            cut = min(len(last) - 2, max(1, int(event.where * len(last))))
            damaged = data[: len(data) - len(last) + cut]
            self.result.journal_damages += 1
        elif event.damage == "rollback":
            lost = min(event.lost_records, len(lines) - 1)
            if lost < 1:
                return None
            damaged = b"".join(lines[: len(lines) - lost])
            self.result.journal_rollbacks += 1
        else:
            raise ValueError(f"unknown journal damage {event.damage!r}")
        self.journal.write_bytes(damaged)
        return data

    def _check_fault(self, event: Restart) -> bool:
        """The engine opened a damaged journal: it must be in ALARM with a JOURNAL_FAULT and
        refuse to dose. Returns whether it is (so the operator has something to repair)."""
        engine, now = self._engine(), self._abs()
        snap = engine.snapshot(now)
        faulted = snap.therapy_state is TherapyState.ALARM and JOURNAL_FAULT in snap.active_alarms
        if not faulted:
            rollback = event.damage == "rollback"
            detail = f"{event.lost_records} lines" if rollback else f"at {event.where}"
            kind = ROLLBACK_UNDETECTED if event.damage == "rollback" else DAMAGE_UNDETECTED
            self._violation(
                kind,
                f"journal {event.damage} ({detail}) opened as {snap.therapy_state.name}, "
                f"alarms {snap.active_alarms or '()'}",
            )
            # What follows runs on a history the engine should not have trusted: every later
            # finding would be a consequence of this one.
            self.finished = True
            self._drop_twin()
            return False
        self.result.notes[f"journal {event.damage}: fault at the reopen"] += 1
        command = engine.command(now)
        answer = engine.request_bolus(now, "")  # a probe: not made on the twin
        if command.action is not PumpAction.STOP or answer.granted:
            self._violation(
                FAULTED_DOSES, f"with a journal fault: {_show(command)}, bolus {answer}"
            )
            if answer.granted:
                self._check_grant("")
        return True

    def _repair(self) -> None:
        fault = self.fault
        assert fault is not None
        self.fault = None
        self._engine().close()
        if fault.event.damage == "rollback":
            self.real = self._open(confirm_rollback=_ROLLBACK_REASON)
            self._fresh_engine()
            snap = self.real.snapshot(self._abs())
            if JOURNAL_FAULT not in snap.active_alarms:
                self.result.notes["journal rollback: accepted by the operator"] += 1
                self.rollbacks.append(self.t)
                self._drop_twin()
                self.reentry_due = True  # once the pump shows it stopped
                self._after_repair()
                return
            self.result.notes["confirmed rollback still faulted"] += 1
            self.real.close()
        self.journal.write_bytes(fault.backup)  # the operator restores the journal
        self.result.notes["journal restored by the operator"] += 1
        self.real = self._open()
        self._fresh_engine()
        self._after_repair()

    def _after_repair(self) -> None:
        if self.twin is not None:
            self.mode = "conservative"
        self._control_step()

    def _reentry(self) -> None:
        """After an accepted rollback the operator re-enters what the engine lost: the fill (if
        it differs from the true reservoir), the latest program, and resumes."""
        engine, now, device = self._engine(), self._abs(), self.device
        snap = engine.snapshot(now)
        truth = self.reservoir
        left = device.reservoir_left_ul()
        program = self.accepted.get(truth.drug)
        prime = False

        def enter_program() -> bool:
            assert program is not None
            real, _twin = self._both_try(
                lambda e: e.set_program(
                    now, program, override_titration=True, override_reason=_REENTRY_REASON
                )
            )
            if not real:
                self._accepted_program(program)
            return not real

        # Every record lost: the program first (a refill needs one), then the flush below.
        reentered = program is not None and engine.program is None and enter_program()
        if left > 1.0:
            refill = Refill(
                self.t, left, truth.drug, truth.concentration_ug_per_ml, report_withdrawn=False
            )
            # Another drug, or a stronger fluid than the journal kept, or the engine says the
            # line is unknown: what entered it in the lost time is unknown, so it is flushed
            # and primed.
            if (
                snap.drug != truth.drug
                or truth.concentration_ug_per_ml > snap.concentration_ug_per_ml
                or snap.line_unknown
            ):
                self._both(lambda e: e.suspend(now, "journal rollback re-entry"))
                prime = self._refill(replace(refill, flush=True), operator=True)
            elif snap.concentration_ug_per_ml != truth.concentration_ug_per_ml or abs(
                snap.reservoir_volume_ul - left
            ) > max(1.0, 0.01 * left):
                self._refill(refill, operator=True)
        if program is not None and not reentered:
            reentered = enter_program()
        if not reentered:
            # The lost prescription could not be re-entered (it was written for another
            # fluid): the operator goes on with the one the journal kept, and so does the
            # limit this check holds the engine to (the device is stopped: nothing in flight).
            kept = engine.program
            if kept is not None:
                self.program = kept
                self.pending_limits = []
                self.limits.set(kept.drug, self.t, engine.daily_limit_ug())
        self._both(lambda e: e.clear_alarms(now))
        self._both_try(lambda e: e.resume(now))
        if prime:
            volume = 1.1 * self.setup.dead_volume_ul
            self._both_try(
                lambda e: e.clinician_bolus(now, "prime", volume_ul=volume, duration_s=1800.0)
            )

    # --- the window -----------------------------------------------------------------------------

    def _judge_window(self) -> None:
        report = self.oracle.report(self.limits)
        r = self.result
        r.max_fraction = report.max_fraction
        r.max_fraction_t_s = report.max_fraction_t_s
        r.max_fraction_drug = report.max_fraction_drug
        r.within_slack = report.within_slack
        for excess in report.excesses:
            self._violation(self._overdose_kind(excess), _overdose_text(excess), excess.t_s)
        r.violations.sort(key=lambda v: v.t_s)

    def _overdose_kind(self, excess: Excess) -> str:
        in_reservoir = ""
        for t, drug in self.fills:
            if t <= excess.t_s:
                in_reservoir = drug
        if excess.drug != in_reservoir:
            return OVERDOSE_OLD_DRUG
        if any(excess.t_s - DAY_S < t <= excess.t_s for t in self.unreported_delivered):
            return OVERDOSE_UNREPORTED_FILL
        if excess.tag & TAG_LATENCY:
            return OVERDOSE_LATENCY
        if excess.tag & TAG_TINY_BUDGET:
            return OVERDOSE_STEP
        if any(t <= excess.t_s < t + DAY_S for t in self.rollbacks):
            return OVERDOSE_AFTER_ROLLBACK
        if any(t <= excess.t_s < t + DAY_S for t in self.crashes):
            return OVERDOSE_AFTER_RESTART
        return OVERDOSE


def _overdose_text(e: Excess) -> str:
    over = (e.window_ug / e.limit_ug - 1.0) * 100.0
    return (
        f"true 24 h {e.drug} dose {e.window_ug:.6g} µg > limit {e.limit_ug:.6g} µg (+{over:.3g} %, "
        f"peak {e.peak_ratio:.4f} × limit; slack {e.slack_ug:.3g} µg) while delivering"
    )


def _same_content(a: CommandIntent, b: CommandIntent) -> bool:
    if a is b:
        return True
    if a.action != b.action:
        return False
    if a.action is not PumpAction.INFUSE:
        return True
    return (
        a.flow_rate_ul_per_h == b.flow_rate_ul_per_h
        and a.volume_limit_ul == b.volume_limit_ul
        and a.stop_at_device_ul == b.stop_at_device_ul
    )


def _show(c: CommandIntent) -> str:
    if c.action is not PumpAction.INFUSE:
        return f"{c.action.name} ({c.reason})"
    stop = c.stop_at_device_ul
    return f"INFUSE {c.flow_rate_ul_per_h:.6g} µL/h limit {c.volume_limit_ul:.6g} µL" + (
        f" stop at {stop:.6g} µL" if stop else ""
    )


# --- shrinking ----------------------------------------------------------------------------------


def shrink(
    scenario: Scenario,
    kind: str,
    *,
    engine_cls: type[TherapyEngine] = TherapyEngine,
    max_runs: int = 400,
    max_seconds: float = 120.0,
) -> tuple[Scenario, SequenceResult]:
    """A smaller scenario that still fails with a violation of ``kind``: the run cut after the
    first such violation, then chunks of events removed, then single events (delta debugging),
    then numbers and settings simplified. Returns it with its result."""
    deadline = time.monotonic() + max_seconds
    runs = 0
    best_result = run_scenario(scenario, engine_cls=engine_cls)

    def fails(candidate: Scenario) -> SequenceResult | None:
        nonlocal runs
        if runs >= max_runs or time.monotonic() > deadline:
            return None
        runs += 1
        result = run_scenario(candidate, engine_cls=engine_cls)
        return result if kind in result.kinds() else None

    first = best_result.first(kind)
    if first is None:
        return scenario, best_result
    best = _cut_after(scenario, first.t_s)
    result = fails(best)
    if result is None:
        best = scenario
    else:
        best_result = result

    def accept(candidate: Scenario) -> bool:
        nonlocal best, best_result
        found = fails(candidate)
        if found is None:
            return False
        best, best_result = candidate, found
        return True

    # Delta debugging over the events: complements of n chunks, n doubling up to single events.
    n = 2
    while len(best.events) >= 1:
        events = best.events
        size = math.ceil(len(events) / n)
        reduced = False
        for start in range(0, len(events), size):
            candidate = replace(best, events=events[:start] + events[start + size :])
            if accept(candidate):
                n = max(2, n - 1)
                reduced = True
                break
        if not reduced:
            if size == 1:
                break
            n = min(len(events), 2 * n)
    # Simpler numbers and settings, one at a time.
    for candidate_setup in _simpler_setups(best.setup):
        accept(replace(best, setup=candidate_setup))
    for i in range(len(best.events)):
        for simpler in _simpler_events(best.events[i]):
            changed = list(best.events)
            changed[i] = simpler
            if accept(replace(best, events=tuple(changed))):
                break
    last = best_result.first(kind)
    if last is not None:
        cut = _cut_after(best, last.t_s)
        if cut != best:
            accept(cut)
    return best, best_result


def _cut_after(scenario: Scenario, t_s: float) -> Scenario:
    end = t_s + 60.0
    days = min(scenario.setup.days, math.ceil(end / 60.0) * 60.0 / DAY_S)
    events = tuple(e for e in scenario.events if e.at_s <= end)
    return replace(scenario, setup=replace(scenario.setup, days=days), events=events)


def _simpler_program(spec: ProgramSpec) -> Iterator[ProgramSpec]:
    if spec.bolus is not None:
        yield replace(spec, bolus=None)
    if spec.max_daily_dose_ug is not None:
        yield replace(spec, max_daily_dose_ug=None)
    if spec.utc_offset_h is not None:
        yield replace(spec, utc_offset_h=None)
    if spec.groups:
        yield replace(spec, groups=(), daily_dose_ug=_round(spec.heaviest_day_ug()))


def _round(x: float) -> float:
    return float(f"{x:.2g}")


def _simpler_setups(setup: Setup) -> Iterator[Setup]:
    yield replace(setup, latency_s=0.0)
    yield replace(setup, latency_per_command=False)
    yield replace(setup, jitter=0.0)
    yield replace(setup, counter_start_steps=0)
    yield replace(setup, resolution_source="both")
    yield replace(setup, bucket_s=300.0)
    yield replace(setup, line_primed=True)
    for value in (60.0, _round(setup.report_s)):
        yield replace(setup, report_s=value)
    yield replace(setup, latency_s=_round(setup.latency_s))
    yield replace(setup, dead_volume_ul=_round(setup.dead_volume_ul))
    yield replace(setup, resolution_ul=_round(setup.resolution_ul))
    for spec in _simpler_program(setup.first_program):
        yield replace(setup, first_program=spec)


def _simpler_events(event: Event) -> Iterator[Event]:
    for value in (
        round(event.at_s / 3600.0) * 3600.0,
        round(event.at_s / 60.0) * 60.0,
        round(event.at_s),
    ):
        if value != event.at_s:
            yield replace(event, at_s=value)
    if isinstance(event, PatientBolus) and event.request_id:
        yield replace(event, request_id="")
    elif isinstance(event, SetProgram):
        for spec in _simpler_program(event.program):
            yield replace(event, program=spec)
    elif isinstance(event, Restart):
        if event.downtime_s:
            yield replace(event, downtime_s=0.0)
        if event.fault_s:
            yield replace(event, fault_s=0.0)
        if event.crash:
            yield replace(event, crash=False)
    elif isinstance(event, ClinicianBolus):
        yield replace(event, dose_ug=_round(event.dose_ug), volume_ul=_round(event.volume_ul))
    elif isinstance(event, Refill):
        yield replace(event, volume_ul=_round(event.volume_ul))
    elif isinstance(event, DeviceFactor) and event.factor not in (0.0, 1.0):
        yield replace(event, factor=0.0)


def format_scenario(scenario: Scenario) -> str:
    """The scenario as Python (safety_scenarios' names), one event a line."""
    lines = ["Scenario(", f"    setup={scenario.setup!r},", "    events=("]
    lines += [f"        {event!r}," for event in scenario.events]
    lines += ["    ),", f"    seed={scenario.seed!r},", ")"]
    return "\n".join(lines)
