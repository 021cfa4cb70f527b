"""dosing_controller: runs the therapy program and keeps the dose ledger.

A thin shell around :class:`pump_rig.core.therapy_engine.TherapyEngine`. Commands go out on
every change and as a heartbeat every control period (the motor driver stops the pump when the
heartbeat stops). Dose is accounted from the volume the device reports in ``pump/state``, never
from what was commanded, and journaled (fsync'd) to ``journal_path`` so a restarted controller
carries on with the same dose history. Any critical alarm, from any node, stops delivery; it
restarts only after ``clear_alarms`` and ``resume``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pump_rig_interfaces.msg import Alarm, DoseStatus, OcclusionStatus, PumpCommand, PumpState
from pump_rig_interfaces.srv import (
    AcceptJournalRollback,
    ClinicianBolus,
    ConfirmDeviceChange,
    Refill,
    RequestBolus,
    SetProgram,
)
from rclpy.node import Node
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from pump_rig.core.alarm_latch import Severity
from pump_rig.core.drug_library import (
    DrugLibrary,
    default_drug_library_path,
    load_drug_library,
)
from pump_rig.core.program import ProgramError, TherapyProgram, load_program_file, parse_program
from pump_rig.core.rig_files import (
    LockHeldError,
    OwnerLock,
    default_journal_path,
    legacy_journal_path,
)
from pump_rig.core.therapy_engine import (
    JOURNAL_FAULT,
    AlarmEvent,
    CommandIntent,
    EngineConfig,
    TherapyEngine,
    TherapyError,
    TherapyState,
)
from pump_rig.nodes.alarm_log import log_alarm
from pump_rig.nodes.contract import (
    rig_publisher,
    rig_subscription,
)
from pump_rig.nodes.params import ParamSet, ParamSpec
from pump_rig.nodes.ros_time import clock_valid, now_s, s_to_stamp, stamp_to_s

# Line states that stop delivery even if the monitor's alarm message were lost.
_UNSAFE_LINE = {
    OcclusionStatus.OCCLUDED: "OCCLUSION",
    OcclusionStatus.LEAK: "LEAK",
    OcclusionStatus.SENSOR_FAULT: "SENSOR_FAULT",
}


_LEDGER_CHOICES = ("resume", "new")


def _ledger_choice(value: object) -> str | None:
    return None if value in _LEDGER_CHOICES else f"must be 'resume' or 'new', got {value!r}"


def _engine_specs() -> list[ParamSpec]:
    d = EngineConfig()
    return [
        ParamSpec(
            "journal_path",
            "",
            "Dose journal file ('' = $ROS_HOME/pump_rig/domain<ROS domain>/<namespace>/"
            "dose_journal.jsonl). Held by one controller at a time",
            read_only=True,
        ),
        ParamSpec(
            "journal_on_start",
            "resume",
            "'resume': go on with the ledger the journal holds (announced at start and in the "
            "dose status); 'new': keep an existing journal as a dated copy and start a new "
            "ledger (demos and mock runs)",
            read_only=True,
            validator=_ledger_choice,
        ),
        ParamSpec(
            "journal_bucket_s",
            d.bucket_s,
            "Delivery is journaled at least this often (ROS time)",
            0.1,
            86400.0,
            read_only=True,
        ),
        ParamSpec(
            "drug_library",
            "",
            "Drug library YAML ('' = the shipped config/drugs.yaml)",
            read_only=True,
        ),
        ParamSpec(
            "line_dead_volume_ul",
            d.line_dead_volume_ul,
            "Volume from the pump outlet to the catheter tip",
            0.001,
            100000.0,
            read_only=True,
        ),
        ParamSpec(
            "line_primed",
            d.line_primed,
            "The line holds the first fill's drug at start (false: saline, prime it)",
            read_only=True,
        ),
        ParamSpec(
            "under_delivery_tolerance_ul",
            d.under_delivery_tolerance_ul,
            "UNDER_DELIVERY when the device is behind the command by more than this...",
            0.0,
            100000.0,
            read_only=True,
        ),
        ParamSpec(
            "device_resolution_ul",
            d.device_resolution_ul,
            "Smallest volume the pump moves (one plunger step, µL); a bolus with no more than "
            "this left is complete. A coarser resolution reported by the device wins",
            0.0,
            100.0,
            read_only=True,
        ),
        ParamSpec(
            "under_delivery_tolerance_fraction",
            d.under_delivery_tolerance_fraction,
            "...plus this fraction of the commanded volume",
            0.0,
            1.0,
            read_only=True,
        ),
        ParamSpec(
            "max_volume_per_command_ul",
            d.max_volume_per_command_ul,
            "Largest volume limit one command carries (keep <= the motor driver's)",
            0.001,
            1.0e6,
            read_only=True,
        ),
    ]


class DosingController(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("dosing_controller", **kwargs)
        self.params = ParamSet(
            self,
            [
                ParamSpec(
                    "program_file",
                    "",
                    "Therapy program YAML applied at start when the ledger has none yet",
                    read_only=True,
                ),
                ParamSpec(
                    "control_period_s",
                    1.0,
                    "Command heartbeat and dose status period (ROS time)",
                    0.01,
                    60.0,
                    read_only=True,
                ),
                ParamSpec(
                    "max_rate_ul_per_h",
                    1000.0,
                    "Highest rate a program or bolus may ask for (the device's maximum)",
                    0.001,
                    100000.0,
                    read_only=True,
                ),
                *_engine_specs(),
            ],
        )
        # A bad library or program file at start is a configuration error: refuse to start.
        self.library = self._load_library()
        self._program_at_start = self._initial_program()
        self._config = EngineConfig(
            max_rate_ul_per_h=self._max_rate(),
            line_dead_volume_ul=float(self.params.get("line_dead_volume_ul")),
            line_primed=bool(self.params.get("line_primed")),
            bucket_s=float(self.params.get("journal_bucket_s")),
            under_delivery_tolerance_ul=float(self.params.get("under_delivery_tolerance_ul")),
            under_delivery_tolerance_fraction=float(
                self.params.get("under_delivery_tolerance_fraction")
            ),
            max_volume_per_command_ul=float(self.params.get("max_volume_per_command_ul")),
            device_resolution_ul=float(self.params.get("device_resolution_ul")),
        )
        self.journal_path, self._journal_lock = self._lock_journal()
        self._new_ledger = self.params.get("journal_on_start") == "new"
        self.ledger = ""  # what the dose status says about the ledger, once it is open
        # Created at the first tick with valid ROS time (with sim time, time is 0 until /clock).
        self._engine: TherapyEngine | None = None
        self._early_alarms: list[Alarm] = []  # heard before ROS time was valid
        self._sequence = 0
        self._last_intent: CommandIntent | None = None
        self._intent_sequence = 0  # sequence number of the latest intent

        self._command_pub = rig_publisher(self, "pump/command")
        self._dose_pub = rig_publisher(self, "dose")
        self._alarm_pub = rig_publisher(self, "alarms")
        rig_subscription(self, "pump/state", self._on_pump_state)
        rig_subscription(self, "alarms", self._on_alarm)
        rig_subscription(self, "occlusion", self._on_occlusion)
        self.create_service(SetProgram, "set_program", self._on_set_program)
        self.create_service(RequestBolus, "request_bolus", self._on_request_bolus)
        self.create_service(ClinicianBolus, "clinician_bolus", self._on_clinician_bolus)
        self.create_service(Refill, "refill", self._on_refill)
        self.create_service(Trigger, "suspend", self._on_suspend)
        self.create_service(Trigger, "resume", self._on_resume)
        self.create_service(Trigger, "~/clear_alarms", self._on_clear_alarms)
        self.create_service(
            AcceptJournalRollback, "~/accept_journal_rollback", self._on_accept_rollback
        )
        self.create_service(
            ConfirmDeviceChange, "~/confirm_device_change", self._on_confirm_device_change
        )
        self.create_timer(float(self.params.get("control_period_s")), self._tick)
        self.get_logger().info(f"dose journal: {self.journal_path}")

    def _lock_journal(self) -> tuple[Path, OwnerLock]:
        """The journal's path and its lock, held from now until close(): a second rig on the
        same ledger is refused here, before it publishes anything."""
        namespace, domain = self.get_namespace(), self.context.get_domain_id()
        given = str(self.params.get("journal_path"))
        path = Path(given) if given else default_journal_path(namespace, domain)
        legacy = legacy_journal_path(namespace)
        if (
            not given
            and self.params.get("journal_on_start") == "resume"
            and legacy.exists()
            and not path.exists()
        ):
            raise ValueError(
                f"a dose journal from an earlier pump_rig is at {legacy}; move it (with its "
                f".id and .hwm files) to {path.parent}/ to resume it, or set journal_path"
            )
        owner = {"namespace": namespace, "domain": domain, "node": self.get_fully_qualified_name()}
        try:
            return path, OwnerLock.acquire(path, f"dose journal {path}", owner)
        except LockHeldError as exc:
            raise ValueError(
                f"{exc}: stop that rig first, or give this one another namespace or ROS domain"
            ) from None

    @property
    def engine(self) -> TherapyEngine:
        if self._engine is None:
            raise TherapyError("the controller is waiting for ROS time (/clock) to start")
        return self._engine

    @property
    def started(self) -> bool:
        if self._engine is None and clock_valid(self):
            self._engine = self._open_engine(new_ledger=self._new_ledger)
            self._announce_ledger(self._engine)
            program = self._engine.program
            if program is not None:
                self.get_logger().info(f"program: {program.summary()}")
            # Alarms latched on the topic reach a new subscriber at once, often before the
            # first /clock: they count from the start, not never.
            early, self._early_alarms = self._early_alarms, []
            for msg in early:
                self._engine.on_alarm(now_s(self), msg.code, msg.severity, msg.active, msg.source)
            self._flush_alarms()
        return self._engine is not None

    def _open_engine(
        self, confirm_rollback: str = "", *, new_ledger: bool = False
    ) -> TherapyEngine:
        return TherapyEngine.open(
            t_s=now_s(self),
            library=self.library,
            journal_path=self.journal_path,
            config=self._config,
            initial_program=self._program_at_start,
            confirm_rollback=confirm_rollback,
            journal_lock=self._journal_lock,
            new_ledger=new_ledger,
        )

    def _announce_ledger(self, engine: TherapyEngine) -> None:
        """Say loudly which ledger doses: a resumed one carries a dose history (and maybe a
        program) from an earlier run."""
        log = self.get_logger()
        if JOURNAL_FAULT in engine.snapshot(now_s(self)).active_alarms:
            self.ledger = f"faulted {self.journal_path} (JOURNAL_FAULT: see the dose status)"
            return
        if engine.resumed_records:
            program = engine.program
            self.ledger = (
                f"resumed {self.journal_path} ({engine.resumed_records} records"
                + (f", program {program.name}" if program is not None else "")
                + ")"
            )
            log.warning(f"dose ledger {self.ledger}; journal_on_start:=new starts a new one")
            return
        self.ledger = f"new {self.journal_path}"
        kept = engine.archived_journal
        log.info(
            f"dose ledger {self.ledger}" + (f" (the previous one kept as {kept})" if kept else "")
        )

    def _load_library(self) -> DrugLibrary:
        path = str(self.params.get("drug_library"))
        return load_drug_library(Path(path) if path else default_drug_library_path())

    def _initial_program(self) -> TherapyProgram | None:
        path = str(self.params.get("program_file"))
        if not path:
            return None
        return load_program_file(
            Path(path), max_rate_ul_per_h=self._max_rate(), library=self.library
        )

    def _max_rate(self) -> float:
        return float(self.params.get("max_rate_ul_per_h"))

    def _refuse_before_start(self, response: Any) -> bool:
        """Services answer "not yet" until ROS time is valid (see ``started``)."""
        if self.started:
            return False
        response.message = "controller not started: no ROS time yet"
        return True

    # -- inputs ---------------------------------------------------------------------------
    def _on_pump_state(self, msg: PumpState) -> None:
        # Keep our command sequence ahead of whatever the driver last applied (a restarted
        # controller must not reuse old sequence numbers: the driver re-arms only on new ones).
        self._sequence = max(self._sequence, msg.last_sequence)
        if msg.state in (PumpState.DISCONNECTED,) or not self.started:
            return
        self.engine.on_device_resolution(msg.volume_resolution_ul)
        # Who answers first: another pump's counter is not this ledger's volume.
        self.engine.on_device_identity(stamp_to_s(msg.header.stamp) or now_s(self), msg.device)
        self.engine.on_device_volume(
            stamp_to_s(msg.header.stamp) or now_s(self),
            msg.delivered_volume_ul,
            command_applied=msg.last_sequence >= self._intent_sequence,
        )
        if msg.state == PumpState.IDLE and self._last_intent is not None:
            # The device stopped by itself (end of a bolus volume): re-plan now, not next tick.
            self._tick()
        else:
            self._flush_alarms()

    def _on_alarm(self, msg: Alarm) -> None:
        if msg.source == self.get_fully_qualified_name():
            return
        if not self.started:
            self._early_alarms.append(msg)
            return
        self.engine.on_alarm(now_s(self), msg.code, msg.severity, msg.active, msg.source)
        self._tick()

    def _on_occlusion(self, msg: OcclusionStatus) -> None:
        code = _UNSAFE_LINE.get(msg.state)
        if code is not None and self.started:
            self.engine.on_alarm(now_s(self), code, int(Severity.CRITICAL), True, "occlusion")
            self._tick()

    # -- services -------------------------------------------------------------------------
    def _on_set_program(
        self, request: SetProgram.Request, response: SetProgram.Response
    ) -> SetProgram.Response:
        if self._refuse_before_start(response):
            return response
        try:
            program = parse_program(
                request.program_yaml,
                source="set_program",
                max_rate_ul_per_h=self._max_rate(),
                library=self.library,
            )
            response.message = self.engine.set_program(
                now_s(self),
                program,
                override_titration=request.override_titration_limit,
                override_reason=request.override_reason,
            )
        except (ProgramError, TherapyError) as exc:
            response.success, response.message = False, f"program rejected: {exc}"
            self.get_logger().warning(response.message)
            return response
        response.success = True
        self.get_logger().info(response.message)
        self._tick()
        return response

    def _on_request_bolus(
        self, request: RequestBolus.Request, response: RequestBolus.Response
    ) -> RequestBolus.Response:
        response.next_allowed_in_s = -1.0
        if self._refuse_before_start(response):
            return response
        answer = self.engine.request_bolus(now_s(self), request.request_id)
        response.granted = answer.granted
        response.message = answer.message
        response.dose_ug = answer.dose_ug
        response.volume_ul = answer.volume_ul
        response.next_allowed_in_s = answer.next_allowed_in_s
        self.get_logger().info(f"patient bolus: {answer.message}")
        self._tick()
        return response

    def _on_clinician_bolus(
        self, request: ClinicianBolus.Request, response: ClinicianBolus.Response
    ) -> ClinicianBolus.Response:
        if self._refuse_before_start(response):
            return response
        try:
            response.message = self.engine.clinician_bolus(
                now_s(self),
                request.kind,
                dose_ug=request.dose_ug,
                volume_ul=request.volume_ul,
                duration_s=request.duration_s,
            )
        except TherapyError as exc:
            response.success, response.message = False, f"bolus refused: {exc}"
            return response
        response.success = True
        self.get_logger().info(response.message)
        self._tick()
        return response

    def _on_refill(self, request: Refill.Request, response: Refill.Response) -> Refill.Response:
        if self._refuse_before_start(response):
            return response
        t_s = now_s(self)
        try:
            result = self.engine.refill(
                t_s,
                volume_ul=request.volume_ul,
                drug=request.drug,
                concentration_ug_per_ml=request.concentration_ug_per_ml,
                withdrawn_ul=request.withdrawn_ul,
                bridge=request.bridge,
                flush=request.flush,
            )
        except TherapyError as exc:
            response.success, response.message = False, f"refill refused: {exc}"
            return response
        response.success = True
        response.message = result.message
        response.discarded_ul = result.discarded_ul
        response.reservoir_volume_ul = result.reservoir_volume_ul
        response.days_to_refill = result.days_to_refill
        if result.next_refill_s is not None:
            response.next_refill = s_to_stamp(result.next_refill_s)
        self.get_logger().info(f"refill: {result.message}")
        self._tick()
        return response

    def _on_suspend(self, _req: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self._refuse_before_start(response):
            return response
        self.engine.suspend(now_s(self), "suspended by operator")
        self._tick()
        response.success, response.message = True, "therapy suspended"
        return response

    def _on_resume(self, _req: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self._refuse_before_start(response):
            return response
        try:
            self.engine.resume(now_s(self))
        except TherapyError as exc:
            response.success, response.message = False, f"cannot resume: {exc}"
            return response
        self._tick()
        response.success, response.message = True, "therapy resumed"
        return response

    def _on_clear_alarms(
        self, _req: Trigger.Request, response: Trigger.Response
    ) -> Trigger.Response:
        if self._refuse_before_start(response):
            return response
        self.engine.clear_alarms(now_s(self))
        self._tick()
        response.success = True
        response.message = "alarms cleared; therapy stays stopped until resume"
        return response

    def _on_confirm_device_change(
        self, request: ConfirmDeviceChange.Request, response: ConfirmDeviceChange.Response
    ) -> ConfirmDeviceChange.Response:
        if self._refuse_before_start(response):
            return response
        try:
            response.message = self.engine.confirm_device_change(now_s(self), request.reason)
        except TherapyError as exc:
            response.success, response.message = False, str(exc)
            return response
        response.success = True
        self.get_logger().warning(response.message)
        self._tick()
        return response

    def _on_accept_rollback(
        self, request: AcceptJournalRollback.Request, response: AcceptJournalRollback.Response
    ) -> AcceptJournalRollback.Response:
        """Reopen the journal accepting that it lost its last records (an operator's call)."""
        if self._refuse_before_start(response):
            return response
        reason = request.reason.strip()
        if not reason:
            response.success, response.message = False, "a reason is needed (it is journaled)"
            return response
        if JOURNAL_FAULT not in self.engine.snapshot(now_s(self)).active_alarms:
            response.success, response.message = False, "the dose journal has no fault"
            return response
        engine = self._open_engine(confirm_rollback=reason)
        if engine.state is TherapyState.ALARM:  # not a rollback, or still unreadable
            response.success = False
            response.message = f"not accepted: {engine.snapshot(now_s(self)).detail}"
            return response
        self.engine.close()
        self._engine = engine
        # The faulted engine's critical alarm is latched on the topic: end it there too.
        self._publish_alarm(
            AlarmEvent(JOURNAL_FAULT, int(Severity.CRITICAL), False, "rollback accepted")
        )
        self._announce_ledger(engine)
        response.success = True
        response.message = f"journal rollback accepted: {engine.snapshot(now_s(self)).detail}"
        self.get_logger().warning(response.message)
        self._tick()
        return response

    # -- outputs --------------------------------------------------------------------------
    def _tick(self) -> None:
        if not self.started:
            return
        t_s = now_s(self)
        intent = self.engine.command(t_s)
        if intent is not self._last_intent:
            self._sequence += 1
            self._last_intent = intent
            self._intent_sequence = self._sequence
        self._command_pub.publish(
            PumpCommand(
                header=Header(stamp=s_to_stamp(t_s)),
                action=int(intent.action),
                flow_rate_ul_per_h=intent.flow_rate_ul_per_h,
                volume_limit_ul=intent.volume_limit_ul,
                stop_at_delivered_ul=intent.stop_at_device_ul,
                sequence=self._sequence,
                reason=intent.reason,
            )
        )
        snap = self.engine.snapshot(t_s)
        sources = sorted(snap.dose_24h_by_source_ug)
        msg = DoseStatus(
            header=Header(stamp=s_to_stamp(t_s)),
            therapy_state=int(snap.therapy_state),
            program=snap.program,
            drug=snap.drug,
            concentration_ug_per_ml=snap.concentration_ug_per_ml,
            basal_rate_ul_per_h=snap.basal_rate_ul_per_h,
            delivered_volume_ul=snap.delivered_volume_ul,
            delivered_dose_24h_ug=snap.delivered_dose_24h_ug,
            reservoir_volume_ul=snap.reservoir_volume_ul,
            boluses_24h=snap.boluses_24h,
            prescribed_volume_ul=snap.prescribed_volume_ul,
            ordered_volume_ul=snap.ordered_volume_ul,
            daily_limit_ug=snap.daily_limit_ug,
            dose_24h_sources=sources,
            dose_24h_by_source_ug=[snap.dose_24h_by_source_ug[s] for s in sources],
            delivered_dose_total_ug=snap.delivered_dose_total_ug,
            tip_concentration_ug_per_ml=snap.tip_concentration_ug_per_ml,
            reservoir_capacity_ul=snap.reservoir_capacity_ul,
            days_to_refill=snap.days_to_refill,
            active_bolus=snap.active_bolus,
            detail=snap.detail,
            ledger=self.ledger,
        )
        if snap.next_refill_s is not None:
            msg.next_refill = s_to_stamp(snap.next_refill_s)
        if snap.next_change_s is not None:
            msg.next_change = s_to_stamp(snap.next_change_s)
        self._dose_pub.publish(msg)
        self._flush_alarms()

    def _flush_alarms(self) -> None:
        if self._engine is None:
            return
        for event in self._engine.drain_alarm_events():
            self._publish_alarm(event)

    def _publish_alarm(self, event: AlarmEvent) -> None:
        log_alarm(self.get_logger(), event.severity, event.code, event.active, event.message)
        self._alarm_pub.publish(
            Alarm(
                header=Header(stamp=s_to_stamp(now_s(self))),
                severity=event.severity,
                code=event.code,
                active=event.active,
                source=self.get_fully_qualified_name(),
                message=event.message,
            )
        )

    def close(self) -> None:
        """Journal the last delivery bucket (a clean shutdown loses nothing), then let the
        journal go."""
        if self._engine is not None:
            self._engine.close()
        self._journal_lock.release()


def main(args: list[str] | None = None) -> None:
    from pump_rig.nodes.runner import run_node

    run_node(DosingController, args)


if __name__ == "__main__":
    main()
