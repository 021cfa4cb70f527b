"""dosing_controller: runs the therapy program and keeps the dose accounts.

Commands go out on every change and as a heartbeat every control period (the motor driver
stops the pump when the heartbeat stops). Dose is accounted from the volume the device reports
in ``pump/state``, never from what was commanded. Any critical alarm, from any node, stops
delivery; it restarts only after ``clear_alarms`` and ``resume``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pump_rig_interfaces.msg import Alarm, DoseStatus, OcclusionStatus, PumpCommand, PumpState
from pump_rig_interfaces.srv import SetProgram
from rclpy.node import Node
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from pump_rig.core.alarm_latch import Severity
from pump_rig.core.dosing import AlarmEvent, CommandIntent, DosingCore, TherapyError
from pump_rig.core.program import ProgramError, TherapyProgram, load_program_file, parse_program
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


class DosingController(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("dosing_controller", **kwargs)
        self.params = ParamSet(
            self,
            [
                ParamSpec(
                    "program_file",
                    "",
                    "Therapy program YAML loaded at start ('' = start with no program)",
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
                    "Highest basal rate a program may ask for (the device's maximum)",
                    0.001,
                    100000.0,
                    read_only=True,
                ),
            ],
        )
        self._program_at_start = self._initial_program()
        # Created at the first tick with valid ROS time (with sim time, time is 0 until /clock).
        self._core: DosingCore | None = None
        self._sequence = 0
        self._last_intent: CommandIntent | None = None

        self._command_pub = rig_publisher(self, "pump/command")
        self._dose_pub = rig_publisher(self, "dose")
        self._alarm_pub = rig_publisher(self, "alarms")
        rig_subscription(self, "pump/state", self._on_pump_state)
        rig_subscription(self, "alarms", self._on_alarm)
        rig_subscription(self, "occlusion", self._on_occlusion)
        self.create_service(SetProgram, "set_program", self._on_set_program)
        self.create_service(Trigger, "suspend", self._on_suspend)
        self.create_service(Trigger, "resume", self._on_resume)
        self.create_service(Trigger, "~/clear_alarms", self._on_clear_alarms)
        self.create_timer(float(self.params.get("control_period_s")), self._tick)
        if self._program_at_start is not None:
            self.get_logger().info(f"program at start: {self._program_at_start.summary()}")

    @property
    def core(self) -> DosingCore:
        if self._core is None:
            raise TherapyError("the controller is waiting for ROS time (/clock) to start")
        return self._core

    @property
    def started(self) -> bool:
        if self._core is None and clock_valid(self):
            self._core = DosingCore(t_s=now_s(self), program=self._program_at_start)
        return self._core is not None

    def _initial_program(self) -> TherapyProgram | None:
        path = str(self.params.get("program_file"))
        if not path:
            return None
        # A bad program file at start is a configuration error: refuse to start, loudly.
        return load_program_file(Path(path), max_rate_ul_per_h=self._max_rate())

    def _max_rate(self) -> float:
        return float(self.params.get("max_rate_ul_per_h"))

    def _refuse_before_start(self, response: Any) -> bool:
        """Services answer "not yet" until ROS time is valid (see ``started``)."""
        if self.started:
            return False
        response.success, response.message = False, "controller not started: no ROS time yet"
        return True

    # -- inputs ---------------------------------------------------------------------------
    def _on_pump_state(self, msg: PumpState) -> None:
        # Keep our command sequence ahead of whatever the driver last applied (a restarted
        # controller must not reuse old sequence numbers: the driver re-arms only on new ones).
        self._sequence = max(self._sequence, msg.last_sequence)
        if msg.state in (PumpState.DISCONNECTED,) or not self.started:
            return
        self.core.on_device_volume(
            stamp_to_s(msg.header.stamp) or now_s(self), msg.delivered_volume_ul
        )
        self._flush_alarms()

    def _on_alarm(self, msg: Alarm) -> None:
        if msg.source == self.get_fully_qualified_name() or not self.started:
            return
        self.core.on_alarm(now_s(self), msg.code, msg.severity, msg.active, msg.source)
        self._tick()

    def _on_occlusion(self, msg: OcclusionStatus) -> None:
        code = _UNSAFE_LINE.get(msg.state)
        if code is not None and self.started:
            self.core.on_alarm(now_s(self), code, int(Severity.CRITICAL), True, "occlusion")
            self._tick()

    # -- services -------------------------------------------------------------------------
    def _on_set_program(
        self, request: SetProgram.Request, response: SetProgram.Response
    ) -> SetProgram.Response:
        if self._refuse_before_start(response):
            return response
        try:
            program = parse_program(
                request.program_yaml, source="set_program", max_rate_ul_per_h=self._max_rate()
            )
        except ProgramError as exc:
            response.success, response.message = False, f"program rejected: {exc}"
            self.get_logger().warning(response.message)
            return response
        self.core.set_program(now_s(self), program)
        response.success = True
        response.message = (
            f"program {program.name!r} applied: {program.drug} "
            f"{program.concentration_ug_per_ml:g} µg/mL at {program.basal_rate_ul_per_h:g} µL/h "
            f"({program.daily_dose_ug:g} µg/day)"
        )
        self.get_logger().info(response.message)
        self._tick()
        return response

    def _on_suspend(self, _req: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self._refuse_before_start(response):
            return response
        self.core.suspend(now_s(self), "suspended by operator")
        self._tick()
        response.success, response.message = True, "therapy suspended"
        return response

    def _on_resume(self, _req: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self._refuse_before_start(response):
            return response
        try:
            self.core.resume(now_s(self))
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
        self.core.clear_alarms(now_s(self))
        self._tick()
        response.success = True
        response.message = "alarms cleared; therapy stays stopped until resume"
        return response

    # -- outputs --------------------------------------------------------------------------
    def _tick(self) -> None:
        if not self.started:
            return
        t_s = now_s(self)
        intent = self.core.command(t_s)
        if intent != self._last_intent:
            self._sequence += 1
            self._last_intent = intent
        self._command_pub.publish(
            PumpCommand(
                header=Header(stamp=s_to_stamp(t_s)),
                action=int(intent.action),
                flow_rate_ul_per_h=intent.flow_rate_ul_per_h,
                volume_limit_ul=intent.volume_limit_ul,
                sequence=self._sequence,
                reason=intent.reason,
            )
        )
        snap = self.core.snapshot(t_s)
        self._dose_pub.publish(
            DoseStatus(
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
            )
        )
        self._flush_alarms()

    def _flush_alarms(self) -> None:
        for event in self.core.drain_alarm_events():
            self._publish_alarm(event)

    def _publish_alarm(self, event: AlarmEvent) -> None:
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


def main(args: list[str] | None = None) -> None:
    from pump_rig.nodes.runner import run_node

    run_node(DosingController, args)


if __name__ == "__main__":
    main()
