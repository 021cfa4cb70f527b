"""pressure_monitor: judges the line from pressure samples; raises alarms and the emergency stop.

The emergency path is pressure -> this node -> ``estop`` -> motor_driver: it does not pass
through the dosing controller, so a hung controller cannot keep the pump pushing into an
occlusion. Alarms and the estop latch until ``clear_alarms``, which is refused while the line
is still judged unsafe.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from pump_rig_interfaces.msg import Alarm, EmergencyStop, OcclusionStatus, PumpState
from rclpy.node import Node
from sensor_msgs.msg import FluidPressure
from std_srvs.srv import Trigger

from pump_rig.core.alarm_latch import AlarmLatch, AlarmRecord, Severity
from pump_rig.core.occlusion_detector import (
    DetectorConfig,
    LineAssessment,
    LineState,
    OcclusionDetector,
)
from pump_rig.nodes.alarm_log import log_alarm
from pump_rig.nodes.contract import (
    diagnostics_publisher,
    rig_publisher,
    rig_subscription,
)
from pump_rig.nodes.params import ParamSet, ParamSpec
from pump_rig.nodes.ros_time import clock_valid, now_s, s_to_stamp, stamp_to_s, wall_clock

# Which alarm each unsafe line state raises. All of them engage the emergency stop.
ALARM_FOR_STATE = {
    LineState.OCCLUDED: ("OCCLUSION", Severity.CRITICAL),
    LineState.LEAK: ("LEAK", Severity.CRITICAL),
    LineState.SENSOR_FAULT: ("SENSOR_FAULT", Severity.CRITICAL),
    LineState.SUSPECTED: ("OCCLUSION", Severity.WARNING),
}


def detector_param_specs() -> list[ParamSpec]:
    """One read-only parameter per DetectorConfig field, named ``detector.<field>``."""
    defaults = DetectorConfig()
    specs = []
    for field in dataclasses.fields(DetectorConfig):
        value = getattr(defaults, field.name)
        description = str(field.metadata.get("description", f"occlusion detector: {field.name}"))
        specs.append(ParamSpec(f"detector.{field.name}", value, description, read_only=True))
    return specs


class PressureMonitor(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("pressure_monitor", **kwargs)
        self.params = ParamSet(
            self,
            [
                ParamSpec(
                    "check_period_s",
                    1.0,
                    "Period of the no-sample watchdog check (ROS time)",
                    0.01,
                    60.0,
                    read_only=True,
                ),
                ParamSpec(
                    "sample_timeout_wall_s",
                    2.0,
                    "A missing sample is a fault only once this much wall time has passed too "
                    "(accelerated simulations)",
                    0.0,
                    3600.0,
                    read_only=True,
                ),
                ParamSpec(
                    "sensor_fitted",
                    True,
                    "False on a rig with no line pressure transducer (e.g. a New Era pump without "
                    "one): missing samples are then not a sensor fault, and occlusion detection "
                    "is off until samples come (diagnostics say so)",
                    read_only=True,
                ),
                *detector_param_specs(),
            ],
        )
        self._sensor_fitted = bool(self.params.get("sensor_fitted"))
        if not self._sensor_fitted:
            self.get_logger().warning(
                "sensor_fitted is false: no pressure samples expected, occlusion detection off"
            )
        config_values = {
            field.name: self.params.get(f"detector.{field.name}")
            for field in dataclasses.fields(DetectorConfig)
        }
        self.detector = OcclusionDetector(DetectorConfig.from_mapping(config_values))
        self.latch = AlarmLatch()
        self._pump_running = False
        self._last: LineAssessment | None = None
        self._estop_engaged = False
        self._samples = 0
        self._last_sample_wall_s = time.monotonic()

        self._occlusion_pub = rig_publisher(self, "occlusion")
        self._alarm_pub = rig_publisher(self, "alarms")
        self._estop_pub = rig_publisher(self, "estop")
        self._diag_pub = diagnostics_publisher(self)
        rig_subscription(self, "pressure", self._on_pressure)
        rig_subscription(self, "pump/state", self._on_pump_state)
        self.create_service(Trigger, "~/clear_alarms", self._on_clear_alarms)
        self.create_timer(float(self.params.get("check_period_s")), self._check_timeout)
        self.create_timer(
            1.0,
            self._publish_diagnostics,
            clock=wall_clock(),
        )

    def _on_pump_state(self, msg: PumpState) -> None:
        self._pump_running = msg.state == PumpState.RUNNING

    def _on_pressure(self, msg: FluidPressure) -> None:
        t_s = stamp_to_s(msg.header.stamp) or now_s(self)
        pressure_kpa = msg.fluid_pressure / 1000.0
        self._samples += 1
        self._last_sample_wall_s = time.monotonic()
        self._handle(self.detector.update(t_s, pressure_kpa, pump_running=self._pump_running))

    def _check_timeout(self) -> None:
        if not clock_valid(self) or not self._sensor_fitted:
            return
        # The no-sample watchdog is about a dead sensor or publisher: with accelerated time, a
        # few milliseconds of jitter are many simulated seconds, so require wall time as well.
        wall_quiet_s = time.monotonic() - self._last_sample_wall_s
        if wall_quiet_s < float(self.params.get("sample_timeout_wall_s")):
            return
        assessment = self.detector.check_timeout(now_s(self))
        if assessment is not None:
            self._handle(assessment)

    def _handle(self, assessment: LineAssessment) -> None:
        self._last = assessment
        self._occlusion_pub.publish(
            OcclusionStatus(
                header=self._header(assessment.t_s),
                state=int(assessment.state),
                pressure_kpa=_finite_or_nan(assessment.pressure_kpa),
                baseline_kpa=_finite_or_nan(assessment.baseline_kpa),
                rise_rate_kpa_per_min=_finite_or_nan(assessment.rise_rate_kpa_per_min),
                detector=assessment.detector,
            )
        )
        alarm = ALARM_FOR_STATE.get(assessment.state)
        if alarm is None:
            return
        code, severity = alarm
        message = f"{assessment.reason} ({assessment.detector})"
        record = self.latch.raise_alarm(assessment.t_s, code, severity, message)
        if record is not None:
            self._publish_alarm(record)
        if severity == Severity.CRITICAL and not self._estop_engaged:
            self._set_estop(True, f"{code}: {assessment.reason}", assessment.t_s)

    def _on_clear_alarms(
        self, _req: Trigger.Request, response: Trigger.Response
    ) -> Trigger.Response:
        last = self._last
        if last is not None and last.state in (
            LineState.OCCLUDED,
            LineState.LEAK,
            LineState.SENSOR_FAULT,
        ):
            response.success = False
            response.message = (
                f"line still {last.state.name} ({last.reason}); fix the cause before clearing"
            )
            return response
        t_s = now_s(self)
        cleared = self.latch.clear(t_s)
        for record in cleared:
            self._publish_alarm(record)
        released = self._estop_engaged
        if released:
            self._set_estop(False, "cleared by operator", t_s)
        self.detector.reset()
        response.success = True
        response.message = f"pressure monitor: cleared {len(cleared)} alarm(s)" + (
            "; estop released" if released else "; no estop was engaged"
        )
        return response

    def _set_estop(self, engaged: bool, reason: str, t_s: float) -> None:
        self._estop_engaged = engaged
        self._estop_pub.publish(
            EmergencyStop(
                header=self._header(t_s),
                engaged=engaged,
                source=self.get_fully_qualified_name(),
                reason=reason,
            )
        )
        if engaged:
            self.get_logger().error(f"estop ENGAGED: {reason}")
        else:
            self.get_logger().info(f"estop released: {reason}")

    def _publish_alarm(self, record: AlarmRecord) -> None:
        log_alarm(
            self.get_logger(), int(record.severity), record.code, record.active, record.message
        )
        self._alarm_pub.publish(
            Alarm(
                header=self._header(record.t_s),
                severity=int(record.severity),
                code=record.code,
                active=record.active,
                source=self.get_fully_qualified_name(),
                message=record.message,
            )
        )

    def _header(self, t_s: float) -> Any:
        from std_msgs.msg import Header

        return Header(stamp=s_to_stamp(t_s), frame_id="line_pressure_sensor")

    def _publish_diagnostics(self) -> None:
        last = self._last
        level = DiagnosticStatus.OK
        if last is not None and last.state != LineState.OK:
            level = DiagnosticStatus.ERROR if self._estop_engaged else DiagnosticStatus.WARN
        message = last.state.name if last else "no samples yet"
        if last is None and not self._sensor_fitted:
            level, message = (
                DiagnosticStatus.WARN,
                "no pressure sensor fitted: occlusion detection off",
            )
        status = DiagnosticStatus(
            level=level,
            name=f"{self.get_fully_qualified_name()}: line",
            message=message,
            hardware_id="line_pressure_sensor",
            values=[
                KeyValue(key="samples", value=str(self._samples)),
                KeyValue(key="pressure_kpa", value=f"{last.pressure_kpa:.3f}" if last else ""),
                KeyValue(key="baseline_kpa", value=f"{last.baseline_kpa:.3f}" if last else ""),
                KeyValue(key="estop_engaged", value=str(self._estop_engaged)),
                KeyValue(key="active_alarms", value=",".join(r.code for r in self.latch.active)),
            ],
        )
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def _finite_or_nan(value: float) -> float:
    return value if math.isfinite(value) else math.nan


def main(args: list[str] | None = None) -> None:
    from pump_rig.nodes.runner import run_node

    run_node(PressureMonitor, args)


if __name__ == "__main__":
    main()
