"""motor_driver: drives the syringe pump over a serial line, as a managed (lifecycle) node.

configure: open the port, identify the device, stop it, set the syringe diameter and verify
the value read back. activate: apply ``pump/command`` within this node's own limits.
deactivate: stop the pump. cleanup: close the port. The pump family is the ``backend``
parameter (``drivers/backends.py``); everything here talks to ``core.pump_device.PumpDevice``.

Whatever it is told, it stops the pump when the emergency stop is engaged, when commands go
stale, when the rolling hour's infused volume reaches its cap, and on every device fault it
cannot prove harmless (timeout, garbage, an answer that does not fit, a device alarm, a write
failure, the port vanishing): it sends a stop while it can still talk, reports FAULT,
DISCONNECTED or STALLED, raises the matching alarm and reconnects with backoff. After any such
stop the pump runs again only on a new command, never by itself after a reconnect.

With ``autostart`` (default) it configures and activates itself, retrying while the port is
missing, so a plain ``ros2 run`` or launch works without a lifecycle manager.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from pump_rig_interfaces.msg import Alarm, EmergencyStop, PumpCommand, PumpState
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import FluidPressure
from std_msgs.msg import Header

from pump_rig.core.alarm_latch import Severity
from pump_rig.core.backoff import Backoff
from pump_rig.core.drive_policy import DriveLimits, DrivePolicy, DriveTarget
from pump_rig.core.hourly_volume import HourlyVolumeGuard
from pump_rig.core.pump_device import (
    DeviceAlarm,
    DeviceAlarmKind,
    DeviceDisconnected,
    DeviceError,
    DeviceProtocolError,
    DeviceState,
    DeviceTimeout,
    PumpDevice,
    PumpIdentity,
    PumpStatus,
)
from pump_rig.core.pump_profile import find_pump_profile
from pump_rig.core.syringe_catalog import load_syringe_catalog
from pump_rig.drivers.backends import BACKENDS, DeviceOptions, find_backend
from pump_rig.nodes.alarm_log import log_alarm
from pump_rig.nodes.contract import diagnostics_publisher, rig_publisher, rig_subscription
from pump_rig.nodes.params import ParamSet, ParamSpec, positive
from pump_rig.nodes.ros_time import clock_valid, now_s, s_to_stamp, wall_clock

# Alarm codes this node raises (DESIGN contract codes, plus DEVICE_FAULT for a device that
# answers but cannot be trusted, and COMMAND_REJECTED for a command outside the limits).
DEVICE_LOST = "DEVICE_LOST"
DEVICE_FAULT = "DEVICE_FAULT"
MOTOR_STALL = "MOTOR_STALL"
DOSE_LIMIT = "DOSE_LIMIT"
COMMAND_STALE = "COMMAND_STALE"
COMMAND_REJECTED = "COMMAND_REJECTED"
ESTOP = "ESTOP"

# A diameter read back may differ from the one set by the device's number format only.
_DIAMETER_READBACK_TOLERANCE = 0.001  # relative: 4 significant digits round by at most 0.05 %
PRESSURE_FRAME = "pump_firmware_pressure_sensor"


@dataclass(frozen=True)
class _Run:
    """What the device was last set to do: the policy's target and the limit given to it."""

    target: DriveTarget
    device_limit_ul: float
    # The limit the command itself asked of this run (its volume limit, or what its absolute
    # stop left), before the hourly cap: a smaller device limit is the cap's.
    asked_ul: float = 0.0


class MotorDriver(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("motor_driver", **kwargs)
        self.params = ParamSet(self, _param_specs())
        self.policy = DrivePolicy(
            DriveLimits(
                max_rate_ul_per_h=float(self.params.get("max_rate_ul_per_h")),
                max_volume_per_command_ul=float(self.params.get("max_volume_per_command_ul")),
                command_timeout_s=float(self.params.get("command_timeout_s")),
                command_timeout_wall_s=float(self.params.get("command_timeout_wall_s")),
            )
        )
        self.hourly = HourlyVolumeGuard(float(self.params.get("max_volume_per_hour_ul")))
        self._backoff = Backoff(
            float(self.params.get("reconnect_period_s")),
            max(
                float(self.params.get("reconnect_period_s")),
                float(self.params.get("reconnect_max_period_s")),
            ),
        )
        self._driver: PumpDevice | None = None  # kept across reconnects (counter continuity)
        self._device: PumpDevice | None = None  # set while connected and configured
        self._identity: PumpIdentity | None = None
        self._diameter_mm: float | None = None
        self._active = False
        self._applied: _Run | None = None
        self._status: PumpStatus | None = None
        # Commands written to the device, and how many of them the last status read followed:
        # a status read before the latest write says nothing about the flow or state now.
        self._writes = 0
        self._status_writes = 0
        self._fault_state = PumpState.DISCONNECTED  # what to report while not connected
        self._stall_sequence: int | None = None  # MOTOR_STALL holds until a newer command
        self._hour_trip_sequence: int | None = None  # DOSE_LIMIT holds likewise
        self._configured_limits = self.policy.limits
        self._last_error = ""
        self._conditions: dict[str, bool] = {}
        self._closing = False
        self._connects = 0
        self._faults = 0

        self._state_pub = rig_publisher(self, "pump/state")
        self._alarm_pub = rig_publisher(self, "alarms")
        self._pressure_pub = (
            rig_publisher(self, "pressure") if self.params.get("publish_pressure") else None
        )
        self._diag_pub = diagnostics_publisher(self)
        rig_subscription(self, "pump/command", self._on_command)
        rig_subscription(self, "estop", self._on_estop)
        self.create_timer(float(self.params.get("poll_period_s")), self._poll)
        wall = wall_clock()
        self.create_timer(1.0, self._publish_diagnostics, clock=wall)
        self.create_timer(0.05, self._reconnect_if_due, clock=wall)
        self._autostart_timer = None
        if self.params.get("autostart"):
            self._autostart_timer = self.create_timer(
                float(self.params.get("reconnect_period_s")), self._autostart, clock=wall
            )
            self._autostart()

    # -- lifecycle --------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._connect()
        except (DeviceError, ValueError) as exc:
            if self._autostart_timer is not None and self._backoff.failures < 5:
                # Started together with the device (launch, mock): give it a few seconds.
                self.get_logger().warning(f"waiting for the pump: {exc}")
                self._last_error = str(exc)
            else:
                self._note_error(f"configure failed: {exc}")
            self._backoff.failed(time.monotonic())
            self._release_driver()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        self.get_logger().info("active: applying pump/command")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._stop_device("deactivated")
        self._applied = None
        self._read_status()
        self._publish_state()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_driver()
        self._status = None
        self._fault_state = PumpState.DISCONNECTED
        self._last_error = "not configured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    @property
    def lifecycle_state(self) -> str:
        return str(self._state_machine.current_state[1])

    def _autostart(self) -> None:
        if not self._backoff.due(time.monotonic()):
            return
        if self.lifecycle_state == "unconfigured":
            self.trigger_configure()
        if self.lifecycle_state == "inactive":
            self.trigger_activate()
        if self.lifecycle_state == "active" and self._autostart_timer is not None:
            self._autostart_timer.cancel()
            self._autostart_timer = None

    # -- device link ------------------------------------------------------------------------
    def _syringe_diameter_mm(self) -> float:
        syringe = str(self.params.get("syringe"))
        if syringe:
            return load_syringe_catalog().get(syringe).inner_diameter_mm
        return float(self.params.get("syringe_inner_diameter_mm"))

    def _connect(self) -> None:
        """Open (or reopen) the port, identify, stop, set and verify the syringe diameter."""
        port = str(self.params.get("port"))
        if not port:
            raise DeviceDisconnected(
                "parameter 'port' is empty: set it to the pump's serial device"
            )
        backend = find_backend(str(self.params.get("backend")))
        diameter_mm = self._syringe_diameter_mm()
        self._check_profile(diameter_mm)
        if self._driver is None:
            self._driver = backend.open(
                DeviceOptions(
                    port=port,
                    baud=int(self.params.get("baud")),
                    reply_timeout_s=float(self.params.get("reply_timeout_s")),
                    address=int(self.params.get("address")),
                    safe_mode=bool(self.params.get("safe_mode")),
                )
            )
        else:
            self._driver.reconnect()
        driver = self._driver
        try:
            identity = driver.identify()
            # A device found running (e.g. after a link loss) is stopped before anything else,
            # and an alarm it raised meanwhile is acknowledged: it was reported when it came.
            driver.stop()
            status = driver.status()
            if status.alarm is not None:
                self._note_error(f"device alarm on connect: {status.alarm.value} {status.detail}")
                driver.clear_alarm()
            applied_mm = driver.configure_syringe(diameter_mm)
            if abs(applied_mm - diameter_mm) > _DIAMETER_READBACK_TOLERANCE * diameter_mm:
                raise DeviceProtocolError(
                    f"syringe diameter read back as {applied_mm:g} mm, {diameter_mm:g} mm was set"
                )
            status = driver.status()
        except DeviceError:
            driver.close()
            raise
        # The hour's count starts from the counter as found, before anything runs.
        self.hourly.record(now_s(self), status.delivered_ul)
        self._device = driver
        self._identity = identity
        self._diameter_mm = applied_mm
        self._status = status
        self._applied = None
        self._connects += 1
        self._backoff.reset()
        for code in (DEVICE_LOST, DEVICE_FAULT):
            self._set_condition(code, False, Severity.CRITICAL, f"connected to {port}")
        self.get_logger().info(f"connected to {identity} on {port}, syringe {applied_mm:g} mm")

    def _check_profile(self, diameter_mm: float) -> None:
        """The pump profile's rate range at this diameter narrows this node's own limits, so a
        command the device would refuse is refused here, with the reason."""
        limits = self._configured_limits
        name = str(self.params.get("pump_profile"))
        if name:
            profile = find_pump_profile(name)
            low, high = profile.rate_limits_ul_per_h(diameter_mm)
            limits = replace(limits, min_rate_ul_per_h=min(low, limits.max_rate_ul_per_h))
            if high < limits.max_rate_ul_per_h:
                self.get_logger().info(
                    f"rate limit {high:g} µL/h: the most {profile.name} pumps with a "
                    f"{diameter_mm:g} mm syringe (max_rate_ul_per_h is "
                    f"{limits.max_rate_ul_per_h:g})"
                )
                limits = replace(limits, max_rate_ul_per_h=high)
        self.policy.limits = limits

    def _release_driver(self) -> None:
        self._device = None
        driver, self._driver = self._driver, None
        if driver is not None:
            driver.close()

    def _reconnect_if_due(self) -> None:
        if self._device is not None or self._closing or self._driver is None:
            return
        if self.lifecycle_state not in ("inactive", "active"):
            return
        if not self._backoff.due(time.monotonic()):
            return
        try:
            self._connect()
        except (DeviceError, ValueError) as exc:
            delay = self._backoff.failed(time.monotonic())
            self._note_error(f"reconnect failed (next try in {delay:g} s): {exc}")
        self._publish_state()

    def _fault(self, reason: str, *, lost: bool, can_talk: bool = True) -> None:
        """A fault that cannot be proven harmless: stop, report, alarm, reconnect later."""
        self._faults += 1
        self._note_error(reason)
        self.policy.on_device_fault()
        if can_talk:
            self._stop_device(f"fault: {reason}")
        device = self._device
        self._device = None
        self._applied = None
        if device is not None:
            device.close()
        self._fault_state = PumpState.DISCONNECTED if lost else PumpState.FAULT
        code = DEVICE_LOST if lost else DEVICE_FAULT
        self._set_condition(code, True, Severity.CRITICAL, reason)
        self._backoff.failed(time.monotonic())
        self._publish_state()

    def _on_device_error(self, exc: DeviceError, what: str) -> None:
        if isinstance(exc, DeviceAlarm) and exc.alarm is DeviceAlarmKind.STALLED:
            self._stalled(f"{what}: {exc}")
            return
        lost = isinstance(exc, DeviceDisconnected | DeviceTimeout)
        self._fault(f"{what}: {exc}", lost=lost, can_talk=not isinstance(exc, DeviceDisconnected))

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
            stop_at_delivered_ul=msg.stop_at_delivered_ul,
        )
        if not verdict.accepted:
            self._set_condition(COMMAND_REJECTED, True, Severity.WARNING, verdict.message)
            self.get_logger().error(f"command {msg.sequence} refused: {verdict.message}")
        else:
            self._set_condition(COMMAND_REJECTED, False, Severity.WARNING, "")
            if not self.policy.is_stale(now_s(self), time.monotonic()):
                self._set_condition(COMMAND_STALE, False, Severity.CRITICAL, "")
            if self._stall_sequence is not None and msg.sequence > self._stall_sequence:
                self._stall_sequence = None
                self._set_condition(MOTOR_STALL, False, Severity.CRITICAL, "new command")
            trip = self._hour_trip_sequence
            if trip is not None and msg.sequence > trip and self.hourly.budget_ul(now_s(self)) > 0:
                self._hour_trip_sequence = None
                self._set_condition(DOSE_LIMIT, False, Severity.CRITICAL, "new command")
        if self._apply():
            self._read_status()

    def _on_estop(self, msg: EmergencyStop) -> None:
        refused = self.policy.on_estop(msg.engaged, msg.reason, msg.source)
        if refused is not None:
            self.get_logger().warning(refused)
        self._set_condition(
            ESTOP,
            self.policy.estopped,
            Severity.CRITICAL,
            f"emergency stop from {msg.source}: {msg.reason}",
        )
        # Act now, not at the next poll, and report what the device says after it.
        if self._apply():
            self._read_status()
        self._publish_state()

    # -- control ----------------------------------------------------------------------------
    def _poll(self) -> None:
        if not clock_valid(self):
            return
        t_s = now_s(self)
        if self.policy.is_stale(t_s, time.monotonic()):
            self._set_condition(
                COMMAND_STALE,
                True,
                Severity.CRITICAL,
                f"no pump/command for more than {self.policy.limits.command_timeout_s:g} s",
            )
        if self._device is not None:
            self._apply()
            self._read_status()
        self._publish_state()

    def _target(self) -> DriveTarget:
        target = self.policy.target(now_s(self), time.monotonic())
        if not self._active:
            return replace(target, running=False, reason="driver inactive")
        if self._stall_sequence is not None:
            return replace(target, running=False, reason="stalled: waiting for a new command")
        if self._hour_trip_sequence is not None:
            return replace(target, running=False, reason="hourly volume cap reached")
        return target

    def _apply(self) -> bool:
        """Bring the device to the target; True when anything was written to it."""
        device = self._device
        if device is None:
            return False
        target = self._target()
        previous = self._applied
        writes = self._writes
        try:
            if not target.running:
                device_running = self._status is not None and self._status.running
                if previous is None or previous.target.running or device_running:
                    self._writes += 1
                    device.stop()
                self._applied = _Run(target, 0.0)
            elif (
                previous is not None
                and previous.target.running
                and _same_run(previous.target, target)
            ):
                if previous.target.rate_ul_per_h != target.rate_ul_per_h:
                    self._writes += 1
                    device.set_rate(target.rate_ul_per_h)
                self._applied = replace(previous, target=target)
            else:
                self._writes += 1
                device.stop()
                asked = target.volume_limit_ul
                if target.stop_at_delivered_ul > 0.0:
                    # An absolute stop on the counter: read it now the pump stands still, so
                    # what the previous command delivered in the meantime counts.
                    left = target.stop_at_delivered_ul - device.status().delivered_ul
                    if left <= 0.0:
                        self._applied = _Run(target, 0.0, 0.0)  # reached: it stays stopped
                        return True
                    asked = left if asked <= 0.0 else min(asked, left)
                limit = self.hourly.device_limit_ul(now_s(self), target.rate_ul_per_h, asked)
                device.set_direction(target.direction)
                applied_limit = device.set_volume_limit(limit)
                device.set_rate(target.rate_ul_per_h)
                device.start()
                self._applied = _Run(target, applied_limit, asked)
        except DeviceError as exc:
            # Refused, garbled or unanswered: what the device now does is unknown.
            self._on_device_error(exc, "command not applied")
        return self._writes != writes

    def _read_status(self) -> None:
        device = self._device
        if device is None:
            return
        writes = self._writes
        try:
            status = device.status()
        except DeviceError as exc:
            self._on_device_error(exc, "status failed")
            return
        self._status, self._status_writes = status, writes
        t_s = now_s(self)
        self.hourly.record(t_s, status.delivered_ul)
        self._publish_pressure(t_s, status)
        if status.counter_lost_ul > 0.0:
            self._note_error(
                f"device lost up to {status.counter_lost_ul:.3f} µL of its volume count "
                f"({status.detail or 'counter went back'})"
            )
        if status.alarm is DeviceAlarmKind.STALLED or status.state is DeviceState.STALLED:
            self._stalled(status.detail or "plunger stalled while driven")
        elif status.alarm is not None or status.state is DeviceState.FAULT:
            self._fault(
                f"device alarm {status.alarm.value if status.alarm else 'FAULT'}: "
                f"{status.detail or 'device reports a fault'}",
                lost=False,
            )
        elif self._hour_trip_sequence is None and (
            # Within one device step of the cap counts: a device stops on whole steps...
            self.hourly.volume_ul(t_s) >= self.hourly.max_ul - status.resolution_ul
            # ...and so does a run the device ended at the hour's budget it was given.
            or self._stopped_at_hourly_budget(status)
        ):
            self._hour_trip_sequence = self.policy.last_sequence
            self.policy.on_device_fault()
            self._set_condition(
                DOSE_LIMIT,
                True,
                Severity.CRITICAL,
                f"the pump infused {self.hourly.volume_ul(t_s):.3f} µL in the last hour: "
                f"the driver's cap is {self.hourly.max_ul:g} µL per hour",
            )
            if self._apply():
                self._read_status()

    def _stopped_at_hourly_budget(self, status: PumpStatus) -> bool:
        run = self._applied
        if run is None or not run.target.running or status.running or not status.limit_reached:
            return False
        asked = run.asked_ul
        return run.device_limit_ul > 0.0 and (asked <= 0.0 or run.device_limit_ul < asked)

    def _stalled(self, reason: str) -> None:
        self._stall_sequence = self.policy.last_sequence
        self.policy.on_device_fault()
        self._set_condition(MOTOR_STALL, True, Severity.CRITICAL, reason)
        device = self._device
        if device is not None:
            try:
                device.clear_alarm()  # leaves the device stopped
            except DeviceError as exc:
                self._fault(f"could not stop the stalled pump: {exc}", lost=False)
                return
        self._applied = _Run(self._target(), 0.0)

    def _stop_device(self, reason: str) -> None:
        if self._device is None:
            return
        try:
            self._device.stop()
        except DeviceError as exc:
            if self._status is not None and self._status.running:
                self._note_error(f"could not stop the pump ({reason}): {exc}")
            else:  # e.g. the mock hardware went away first at shutdown: nothing was running
                self.get_logger().info(f"stop not sent ({reason}): {exc}")

    # -- outputs ----------------------------------------------------------------------------
    def _publish_state(self) -> None:
        t_s = now_s(self)
        msg = PumpState(header=Header(stamp=s_to_stamp(t_s)))
        msg.device = str(self._identity) if self._identity else ""
        msg.last_sequence = self.policy.last_sequence
        msg.syringe_remaining_ul = math.nan  # unknown unless the device counts it
        status = self._status
        # Flow and running only as the device reported them after the latest write to it.
        running = status is not None and status.running and self._status_writes == self._writes
        if status is not None:
            msg.delivered_volume_ul = status.delivered_ul
            if status.remaining_ul is not None:
                msg.syringe_remaining_ul = status.remaining_ul
            msg.flow_rate_ul_per_h = status.rate_ul_per_h if running else 0.0
            msg.volume_resolution_ul = status.resolution_ul
        target = self._target()
        if self._device is None:
            msg.state = self._fault_state
            msg.detail = self._last_error or "not connected"
            msg.flow_rate_ul_per_h = 0.0
        elif self.policy.estopped:
            msg.state, msg.detail = PumpState.ESTOPPED, target.reason
        elif self._stall_sequence is not None:
            msg.state, msg.detail = PumpState.STALLED, "plunger stalled"
        elif running:
            msg.state, msg.detail = PumpState.RUNNING, ""
        else:
            msg.state, msg.detail = PumpState.IDLE, target.reason
        self._state_pub.publish(msg)

    def _publish_pressure(self, t_s: float, status: PumpStatus) -> None:
        """The firmware's pressure channel as the rig's ``pressure`` (no separate sensor)."""
        if self._pressure_pub is None or status.pressure_kpa is None:
            return  # not fitted, or invalid: the pressure monitor sees a dropout
        self._pressure_pub.publish(
            FluidPressure(
                header=Header(stamp=s_to_stamp(t_s), frame_id=PRESSURE_FRAME),
                fluid_pressure=status.pressure_kpa * 1000.0,
                variance=0.0,
            )
        )

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
        log_alarm(self.get_logger(), int(severity), code, active, message or "condition ended")

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
        identity = self._identity
        t_s = now_s(self)
        values = [
            KeyValue(key="backend", value=str(self.params.get("backend"))),
            KeyValue(key="model", value=identity.model if identity else ""),
            KeyValue(key="firmware", value=identity.firmware if identity else ""),
            KeyValue(key="serial_number", value=identity.serial if identity else ""),
            KeyValue(key="port", value=str(self.params.get("port"))),
            KeyValue(key="lifecycle", value=self.lifecycle_state),
            KeyValue(key="syringe_inner_diameter_mm", value=f"{self._diameter_mm or 0.0:g}"),
            KeyValue(key="infused_last_hour_ul", value=f"{self.hourly.volume_ul(t_s):.3f}"),
            KeyValue(key="max_volume_per_hour_ul", value=f"{self.hourly.max_ul:g}"),
            KeyValue(key="connects", value=str(self._connects)),
            KeyValue(key="faults", value=str(self._faults)),
            KeyValue(
                key="active_alarms", value=",".join(k for k, v in self._conditions.items() if v)
            ),
            KeyValue(key="last_error", value=self._last_error),
        ]
        driver = self._driver
        if driver is not None:
            stats = driver.stats
            values += [KeyValue(key=name, value=str(value)) for name, value in vars(stats).items()]
        status = DiagnosticStatus(
            level=level,
            name=f"{self.get_fully_qualified_name()}: pump",
            message="connected" if self._device else (self._last_error or "disconnected"),
            hardware_id=str(identity) if identity else str(self.params.get("port")),
            values=values,
        )
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)

    def close(self) -> None:
        """Stop the pump and close the port (shutdown)."""
        self._closing = True
        self._stop_device("shutdown")
        self._release_driver()


def _same_run(a: DriveTarget, b: DriveTarget) -> bool:
    """Same direction, limit and command: only the rate may need changing."""
    same_stop = a.stop_at_delivered_ul == b.stop_at_delivered_ul
    return same_stop and (
        (a.direction, a.volume_limit_ul, a.sequence) == (b.direction, b.volume_limit_ul, b.sequence)
        or (a.direction == b.direction and a.volume_limit_ul == b.volume_limit_ul == 0.0)
    )


def _param_specs() -> list[ParamSpec]:
    backends = ", ".join(sorted(BACKENDS))
    return [
        ParamSpec(
            "port", "", "Serial device of the pump, e.g. /dev/pump_rig/ne1000-0", read_only=True
        ),
        ParamSpec("backend", "stepper", f"Pump family: {backends}", read_only=True),
        ParamSpec(
            "baud", 0, "Serial baud rate (0 = the backend's default)", 0, 1000000, read_only=True
        ),
        ParamSpec(
            "address", 0, "Network address of the pump (New Era: 0-99)", 0, 99, read_only=True
        ),
        ParamSpec(
            "safe_mode",
            False,
            "New Era Safe mode: framed, CRC-checked messages and the pump's own link watchdog",
            read_only=True,
        ),
        ParamSpec(
            "pump_profile",
            "",
            "Pump profile (hardware/pumps/<name>.yaml or a path) for rate limits; '' = none",
            read_only=True,
        ),
        ParamSpec(
            "syringe",
            "",
            "Syringe from hardware/syringes.yaml (e.g. bd_plastipak_30ml); '' = use "
            "syringe_inner_diameter_mm",
            read_only=True,
        ),
        ParamSpec(
            "syringe_inner_diameter_mm",
            14.43,
            "Syringe inner diameter sent to the device at configure (when 'syringe' is '')",
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
            "max_volume_per_hour_ul",
            1000.0,
            "Most volume the pump may infuse in any rolling hour; reaching it stops the pump "
            "(DOSE_LIMIT) until a new command",
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
            "reply_timeout_s", 0.2, "Serial reply timeout (wall time)", 0.001, 10.0, read_only=True
        ),
        ParamSpec(
            "reconnect_period_s",
            1.0,
            "First wait before reconnecting after a fault (wall time); doubles on each failure",
            0.01,
            60.0,
            read_only=True,
        ),
        ParamSpec(
            "reconnect_max_period_s",
            30.0,
            "Longest wait between reconnect attempts (wall time)",
            0.01,
            3600.0,
            read_only=True,
        ),
        ParamSpec(
            "publish_pressure",
            False,
            "Publish the device's own pressure channel on 'pressure' (a rig without a separate "
            "sensor)",
            read_only=True,
        ),
        ParamSpec(
            "autostart",
            True,
            "Configure and activate on start, retrying while the device is missing",
            read_only=True,
        ),
    ]


def main(args: list[str] | None = None) -> None:
    from pump_rig.nodes.runner import run_node

    run_node(MotorDriver, args)


if __name__ == "__main__":
    main()
