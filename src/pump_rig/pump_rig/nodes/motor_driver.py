"""motor_driver: drives the syringe pump over a serial line (pyserial), as a lifecycle node.

configure: open the port, identify the device, set the syringe diameter.
activate: apply ``pump/command`` (within this node's own limits) and publish ``pump/state``.
deactivate: stop the pump. cleanup: close the port.

Whatever it is told, it stops the pump when the emergency stop is engaged, when commands go
stale, and when the device misbehaves; after such a stop it pumps again only on a new command.
With ``autostart`` (default) it configures and activates itself, retrying while the port is
missing, so a plain ``ros2 run`` or launch works without a lifecycle manager.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from pump_rig_interfaces.msg import Alarm, EmergencyStop, PumpCommand, PumpState
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from std_msgs.msg import Header

from pump_rig.core.alarm_latch import Severity
from pump_rig.core.drive_policy import DriveLimits, DrivePolicy, DriveTarget
from pump_rig.core.pump_device import DeviceDisconnected, DeviceError
from pump_rig.drivers.serial_link import SerialLink
from pump_rig.drivers.stepper_driver import DeviceStatus, StepperPumpDriver
from pump_rig.nodes.contract import (
    diagnostics_publisher,
    rig_publisher,
    rig_subscription,
)
from pump_rig.nodes.params import ParamSet, ParamSpec, positive
from pump_rig.nodes.ros_time import clock_valid, now_s, s_to_stamp, wall_clock

# Consecutive failed exchanges after which the device counts as lost.
MAX_FAILED_POLLS = 3


class MotorDriver(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("motor_driver", **kwargs)
        self.params = ParamSet(
            self,
            [
                ParamSpec("port", "", "Serial device of the pump, e.g. /dev/pump0", read_only=True),
                ParamSpec("baud", 115200, "Serial baud rate", 300, 1000000, read_only=True),
                ParamSpec("backend", "stepper", "Pump protocol: stepper", read_only=True),
                ParamSpec(
                    "syringe_inner_diameter_mm",
                    14.43,
                    "Syringe inner diameter sent to the device at configure",
                    0.1,
                    50.0,
                    read_only=True,
                ),
                ParamSpec(
                    "max_rate_ul_per_h",
                    1000.0,
                    "Highest rate this driver lets the pump run at, whatever it is commanded",
                    0.001,
                    1.0e6,
                    read_only=True,
                    validator=positive,
                ),
                ParamSpec(
                    "max_volume_per_command_ul",
                    2000.0,
                    "Largest volume limit one command may carry (bolus, prime)",
                    0.001,
                    1.0e6,
                    read_only=True,
                    validator=positive,
                ),
                ParamSpec(
                    "command_timeout_s",
                    5.0,
                    "A running command not refreshed for this long (ROS time) stops the pump",
                    0.01,
                    3600.0,
                    read_only=True,
                    validator=positive,
                ),
                ParamSpec(
                    "command_timeout_wall_s",
                    2.0,
                    "...and for at least this long in wall time (accelerated simulations)",
                    0.0,
                    3600.0,
                    read_only=True,
                ),
                ParamSpec(
                    "poll_period_s",
                    0.5,
                    "Device status poll and pump/state period (ROS time)",
                    0.001,
                    60.0,
                    read_only=True,
                ),
                ParamSpec(
                    "reply_timeout_s",
                    0.2,
                    "Serial reply timeout (wall time)",
                    0.001,
                    10.0,
                    read_only=True,
                ),
                ParamSpec(
                    "reconnect_period_s",
                    1.0,
                    "Wait between reconnect attempts (wall time)",
                    0.01,
                    60.0,
                    read_only=True,
                ),
                ParamSpec(
                    "autostart",
                    True,
                    "Configure and activate on start, retrying while the device is missing",
                    read_only=True,
                ),
            ],
        )
        self.policy = DrivePolicy(
            DriveLimits(
                max_rate_ul_per_h=float(self.params.get("max_rate_ul_per_h")),
                max_volume_per_command_ul=float(self.params.get("max_volume_per_command_ul")),
                command_timeout_s=float(self.params.get("command_timeout_s")),
                command_timeout_wall_s=float(self.params.get("command_timeout_wall_s")),
            )
        )
        self._device: StepperPumpDriver | None = None
        self._identity = ""
        self._active = False
        self._applied: DriveTarget | None = None
        self._status: DeviceStatus | None = None
        self._failed_polls = 0
        self._last_error = ""
        self._conditions: dict[str, bool] = {}
        self._closing = False
        self._configure_failures = 0

        self._state_pub = rig_publisher(self, "pump/state")
        self._alarm_pub = rig_publisher(self, "alarms")
        self._diag_pub = diagnostics_publisher(self)
        rig_subscription(self, "pump/command", self._on_command)
        rig_subscription(self, "estop", self._on_estop)
        self.create_timer(float(self.params.get("poll_period_s")), self._poll)
        self.create_timer(1.0, self._publish_diagnostics, clock=wall_clock())
        self._autostart_timer = None
        if self.params.get("autostart"):
            self._autostart_timer = self.create_timer(
                float(self.params.get("reconnect_period_s")), self._autostart, clock=wall_clock()
            )
            self._autostart()

    # -- lifecycle --------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._connect()
        except DeviceError as exc:
            self._configure_failures += 1
            if self._autostart_timer is not None and self._configure_failures <= 5:
                # Started together with the device (launch, mock): give it a few seconds.
                self.get_logger().warning(f"waiting for the pump: {exc}")
                self._last_error = str(exc)
            else:
                self._note_error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._configure_failures = 0
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        self.get_logger().info("active: applying pump/command")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._stop_device("deactivated")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._disconnect()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def _autostart(self) -> None:
        label = self._state_machine.current_state[1]
        if label == "unconfigured":
            self.trigger_configure()
            label = self._state_machine.current_state[1]
        if label == "inactive":
            self.trigger_activate()
            label = self._state_machine.current_state[1]
        if label == "active" and self._autostart_timer is not None:
            self._autostart_timer.cancel()
            self._autostart_timer = None

    # -- device link ------------------------------------------------------------------------
    def _connect(self) -> None:
        port = str(self.params.get("port"))
        if not port:
            raise DeviceDisconnected(
                "parameter 'port' is empty: set it to the pump's serial device"
            )
        backend = str(self.params.get("backend"))
        if backend != "stepper":
            raise DeviceError(f"unknown backend {backend!r}; known: stepper")
        link = SerialLink.open(
            port,
            baud=int(self.params.get("baud")),
            timeout_s=float(self.params.get("reply_timeout_s")),
        )
        device = StepperPumpDriver(link)
        try:
            identity = device.identify()
            # A device found running (e.g. after a link loss) is stopped before anything else.
            device.stop()
            device.set_diameter(float(self.params.get("syringe_inner_diameter_mm")))
        except DeviceError:
            device.close()
            raise
        self._device = device
        self._identity = f"{identity.model} fw {identity.firmware} sn {identity.serial}"
        self._applied = None
        self._failed_polls = 0
        self._set_condition("DEVICE_LOST", False, Severity.CRITICAL, f"connected to {port}")
        self.get_logger().info(f"connected to {self._identity} on {port}")

    def _disconnect(self) -> None:
        if self._device is not None:
            device, self._device = self._device, None
            device.close()

    def _lost(self, reason: str) -> None:
        self._note_error(reason)
        self._disconnect()
        self.policy.on_device_fault()
        self._set_condition("DEVICE_LOST", True, Severity.CRITICAL, reason)

    # -- inputs -----------------------------------------------------------------------------
    def _on_command(self, msg: PumpCommand) -> None:
        if not clock_valid(self):
            return  # staleness is judged in ROS time: wait until there is one
        verdict = self.policy.on_command(
            now_s(self),
            msg.action,
            msg.flow_rate_ul_per_h,
            msg.volume_limit_ul,
            msg.sequence,
            wall_s=time.monotonic(),
        )
        if not verdict.accepted:
            self._set_condition("COMMAND_REJECTED", True, Severity.WARNING, verdict.message)
            self.get_logger().error(f"command {msg.sequence} refused: {verdict.message}")
        else:
            self._set_condition("COMMAND_REJECTED", False, Severity.WARNING, "")
            if not self.policy.is_stale(now_s(self), time.monotonic()):
                self._set_condition("COMMAND_STALE", False, Severity.CRITICAL, "")
        self._apply()

    def _on_estop(self, msg: EmergencyStop) -> None:
        self.policy.on_estop(msg.engaged, f"{msg.source}: {msg.reason}")
        self._set_condition(
            "ESTOP",
            msg.engaged,
            Severity.CRITICAL,
            f"emergency stop from {msg.source}: {msg.reason}",
        )
        # Act now, not at the next poll.
        self._apply()
        self._publish_state()

    # -- control ----------------------------------------------------------------------------
    def _poll(self) -> None:
        if not clock_valid(self):
            return
        t_s = now_s(self)
        if self.policy.is_stale(t_s, time.monotonic()):
            self._set_condition(
                "COMMAND_STALE",
                True,
                Severity.CRITICAL,
                f"no pump/command for more than {self.policy.limits.command_timeout_s:g} s",
            )
        if self._device is None:
            if not self._closing and self._state_machine.current_state[1] in ("inactive", "active"):
                self._try_reconnect()
            self._publish_state()
            return
        self._apply()
        self._read_status()
        self._publish_state()

    def _try_reconnect(self) -> None:
        try:
            self._connect()
        except DeviceError as exc:
            self._note_error(f"reconnect failed: {exc}")

    def _apply(self) -> None:
        device = self._device
        if device is None:
            return
        target = (
            self.policy.target(now_s(self), time.monotonic())
            if self._active
            else self._idle_target()
        )
        previous = self._applied
        try:
            if not target.running:
                device_running = self._status is not None and self._status.state == "RUNNING"
                if previous is None or previous.running or device_running:
                    device.stop()
            elif previous is not None and previous.running and _same_run(previous, target):
                if previous.rate_ul_per_h != target.rate_ul_per_h:
                    device.set_rate(target.rate_ul_per_h)
            else:
                device.stop()
                device.set_direction(target.direction)
                device.set_volume_limit(target.volume_limit_ul)
                device.set_rate(target.rate_ul_per_h)
                device.start()
            self._applied = target
        except DeviceDisconnected as exc:
            self._lost(f"device lost: {exc}")
        except DeviceError as exc:
            self._note_error(f"command not applied: {exc}")
            self.policy.on_device_fault()

    def _idle_target(self) -> DriveTarget:
        return replace(
            self.policy.target(now_s(self), time.monotonic()),
            running=False,
            reason="driver inactive",
        )

    def _read_status(self) -> None:
        device = self._device
        if device is None:
            return
        try:
            status = device.status()
        except DeviceDisconnected as exc:
            self._lost(f"device lost: {exc}")
            return
        except DeviceError as exc:
            self._failed_polls += 1
            self._note_error(f"status failed: {exc}")
            if self._failed_polls >= MAX_FAILED_POLLS:
                self._lost(f"device not answering: {exc}")
            return
        self._failed_polls = 0
        self._status = status
        stalled = status.state == "STALLED"
        self._set_condition(
            "MOTOR_STALL", stalled, Severity.CRITICAL, "plunger stalled while driven"
        )
        if stalled:
            self.policy.on_device_fault()
            self._apply()

    def _stop_device(self, reason: str) -> None:
        if self._device is None:
            return
        try:
            self._device.stop()
        except DeviceError as exc:
            if self._status is not None and self._status.state == "RUNNING":
                self._note_error(f"could not stop the pump ({reason}): {exc}")
            else:  # e.g. the mock hardware went away first at shutdown: nothing was running
                self.get_logger().info(f"stop not sent ({reason}): {exc}")

    # -- outputs ----------------------------------------------------------------------------
    def _publish_state(self) -> None:
        t_s = now_s(self)
        msg = PumpState(header=Header(stamp=s_to_stamp(t_s)), device=self._identity)
        msg.last_sequence = self.policy.last_sequence
        status = self._status
        if status is not None:
            msg.delivered_volume_ul = status.delivered_ul
            msg.syringe_remaining_ul = status.remaining_ul
            msg.flow_rate_ul_per_h = status.rate_ul_per_h if status.state == "RUNNING" else 0.0
        target = self.policy.target(t_s, time.monotonic())
        if self._device is None:
            msg.state = PumpState.DISCONNECTED
            msg.detail = self._last_error or "not connected"
            msg.flow_rate_ul_per_h = 0.0
        elif self.policy.estopped:
            msg.state = PumpState.ESTOPPED
            msg.detail = target.reason
        elif status is not None and status.state == "STALLED":
            msg.state, msg.detail = PumpState.STALLED, "plunger stalled"
        elif status is not None and status.state == "FAULT":
            msg.state, msg.detail = PumpState.FAULT, "device reports a fault"
        elif status is not None and status.state == "RUNNING":
            msg.state, msg.detail = PumpState.RUNNING, ""
        else:
            msg.state, msg.detail = PumpState.IDLE, target.reason
        self._state_pub.publish(msg)

    def _set_condition(self, code: str, active: bool, severity: Severity, message: str) -> None:
        """Publish an alarm when a condition starts or ends (not on every poll)."""
        if self._conditions.get(code, False) == active:
            return
        self._conditions[code] = active
        self._alarm_pub.publish(
            Alarm(
                header=Header(stamp=s_to_stamp(now_s(self))),
                severity=int(severity),
                code=code,
                active=active,
                source=self.get_fully_qualified_name(),
                message=message or ("condition ended" if not active else code),
            )
        )
        if active:
            self.get_logger().error(f"{code}: {message}")

    def _note_error(self, message: str) -> None:
        if message != self._last_error:
            self.get_logger().error(message)
        self._last_error = message

    def _publish_diagnostics(self) -> None:
        level = DiagnosticStatus.OK
        if self._device is None:
            level = DiagnosticStatus.ERROR
        elif any(self._conditions.values()):
            level = DiagnosticStatus.WARN
        values = [
            KeyValue(key="device", value=self._identity),
            KeyValue(key="port", value=str(self.params.get("port"))),
            KeyValue(key="lifecycle", value=self._state_machine.current_state[1]),
            KeyValue(key="last_error", value=self._last_error),
        ]
        if self._device is not None:
            stats = self._device.stats
            values += [
                KeyValue(key=name, value=str(value))
                for name, value in vars(stats).items()
                if not name.startswith("_")
            ]
        status = DiagnosticStatus(
            level=level,
            name=f"{self.get_fully_qualified_name()}: pump",
            message="connected" if self._device else "disconnected",
            hardware_id=self._identity or str(self.params.get("port")),
            values=values,
        )
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)

    def close(self) -> None:
        """Stop the pump and close the port (shutdown)."""
        self._closing = True
        self._stop_device("shutdown")
        self._disconnect()


def _same_run(a: DriveTarget, b: DriveTarget) -> bool:
    """Same direction, limit and command: only the rate may need changing."""
    return (a.direction, a.volume_limit_ul, a.sequence) == (
        b.direction,
        b.volume_limit_ul,
        b.sequence,
    ) or (a.direction == b.direction and a.volume_limit_ul == b.volume_limit_ul == 0.0)


def main(args: list[str] | None = None) -> None:
    from pump_rig.nodes.runner import run_node

    run_node(MotorDriver, args)


if __name__ == "__main__":
    main()
