"""mock_hardware: the bench in software — syringe pump, fluid line and pressure sensor.

The pump is exposed as a serial device on a pseudo-terminal speaking the real device protocol,
so motor_driver runs the same pyserial code as on the bench. Pressure samples are published on
``pressure`` on a fixed schedule of simulated time. With ``speed`` above 1 this node is the time
source: it publishes ``/clock`` and every other node runs with ``use_sim_time``; the physics is
solved in closed form between events, so months of therapy run in minutes.

Integrate between events instead of ticking blindly. The other nodes' ROS-time timers fire at
most once per ``/clock`` message, which at ×50 000 jumps ~1000 s of simulated time per 20 ms
update; a rate change due at a given time would land late by up to one jump plus the wall
latency of controller → driver → serial → emulator times ``speed`` (hundreds of simulated
seconds, ~0.1–1 % of dose per change). So the clock slows down around events it is told of
(core/sim_clock.py): it never jumps over an event time (the first ``/clock`` at or after it is
the event time exactly), then runs at ``event_speed`` for ``event_window_s`` of simulated time,
so the reaction chain runs nearly in real time, then at full ``speed`` again. An event time
reached by another reader of the clock (the serial thread) is held until ``/clock`` has carried
it. Changes land on time at any speed, at a wall cost of about ``event_window_s / event_speed``
(plus at most one ``update_period_s``) per event. Events come from:

* ``dose`` (DoseStatus, latched): ``next_change``, the next scheduled change of delivery the
  dosing controller announces (flex step, bolus end);
* the emulated pump itself: after every serial exchange and every update, its next self-stop
  (volume limit reached, syringe empty or full), read under the session lock.

An event that does not happen after all (the controller changed its mind) costs one slow
window. With ``speed <= event_speed`` (hence at speed 1) events change nothing.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from pump_rig_interfaces.msg import DoseStatus, FaultEvent
from pump_rig_interfaces.srv import InjectFault
from rclpy.node import Node
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import FluidPressure
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from pump_rig.core.bench_model import BenchModel, BenchParams
from pump_rig.core.bench_session import BenchSession
from pump_rig.core.faults import SERIAL_FAULTS, FaultKind
from pump_rig.core.pump_types import PumpRunState
from pump_rig.core.rig_files import default_port_link, emulator_serial
from pump_rig.core.sim_clock import EVENT_HOLD, SimClock
from pump_rig.core.syringe_pump import PumpSnapshot
from pump_rig.drivers.backends import BACKENDS, EmulatorOptions, find_backend
from pump_rig.drivers.pty_device import ByteDevice, ByteDeviceTap, PtySerialDevice
from pump_rig.nodes.contract import (
    NO_PUB_EVENTS,
    diagnostics_publisher,
    rig_publisher,
    rig_subscription,
)
from pump_rig.nodes.params import ParamSet, ParamSpec
from pump_rig.nodes.ros_time import s_to_stamp, stamp_to_s, wall_clock

_STARTUP_HOLD_WALL_S = 5.0
_PUMP_HOLD = "pump"  # the clock's hold from a pump stop until it runs again


def bench_param_specs() -> list[ParamSpec]:
    """One read-only ``bench.<field>`` parameter per BenchParams field."""
    defaults = BenchParams()
    specs = []
    for field in dataclasses.fields(BenchParams):
        value = getattr(defaults, field.name)
        if not isinstance(value, bool | int | float | str):
            continue
        description = str(field.metadata.get("description", f"bench model: {field.name}"))
        specs.append(ParamSpec(f"bench.{field.name}", value, description, read_only=True))
    return specs


class _EventReportingDevice(ByteDeviceTap):
    """The emulator as the pty host sees it, telling the clock of the pump's next self-stop
    after every exchange (the host calls it with the session lock held)."""

    def __init__(self, emulator: ByteDevice, report: Callable[[], None]) -> None:
        super().__init__(emulator)
        self._report = report

    def feed(self, data: bytes, t_s: float) -> bytes:
        try:
            return self.inner.feed(data, t_s)
        finally:
            self._report()

    def due_output(self, t_s: float) -> bytes:
        try:
            return self.inner.due_output(t_s)
        finally:
            self._report()


def _pressure_output(value: object) -> str | None:
    return None if value in ("topic", "device") else f"must be 'topic' or 'device', got {value!r}"


def not_before_s(stamp: TimeMsg) -> float:
    """``stamp`` in float seconds, rounded up so that the /clock stamp made from it is not
    before ``stamp`` (at epoch times a float second is only good to ~0.24 µs): a ROS timer due
    at ``stamp`` fires on that /clock."""
    target_ns = stamp.sec * 1_000_000_000 + stamp.nanosec
    t_s = stamp_to_s(stamp)
    while round(t_s * 1e9) < target_ns:
        t_s = math.nextafter(t_s, math.inf)
    return t_s


class MockHardware(Node):
    def __init__(self, **kwargs: Any) -> None:
        # This node is the time source; it never listens to /clock itself.
        overrides = [p for p in kwargs.pop("parameter_overrides", []) if p.name != "use_sim_time"]
        super().__init__("mock_hardware", parameter_overrides=overrides, **kwargs)
        self.set_parameters([Parameter("use_sim_time", Parameter.Type.BOOL, False)])
        self.params = ParamSet(
            self,
            [
                ParamSpec(
                    "speed",
                    1.0,
                    "Simulated seconds per wall second; above 1 publishes /clock",
                    0.01,
                    1.0e6,
                    read_only=True,
                ),
                ParamSpec(
                    "event_speed",
                    50.0,
                    "Accelerated runs slow down to this many simulated seconds per wall second "
                    "around events (the dosing controller's next scheduled change of delivery, "
                    "the emulated pump stopping by itself), so that changes land on time at any "
                    "speed; only meaningful when speed is above it",
                    0.01,
                    100000.0,
                    read_only=True,
                ),
                ParamSpec(
                    "event_window_s",
                    5.0,
                    "Simulated seconds run at event_speed from each event (the clock never jumps "
                    "over an event time); costs about event_window_s / event_speed of wall time "
                    "per event",
                    0.0,
                    3600.0,
                    read_only=True,
                ),
                ParamSpec(
                    "event_hold_wall_s",
                    0.5,
                    "After the pump stops, the clock stays at event_speed until it runs again, "
                    "for at most this much wall time: a slow reaction (the basal after a bolus) "
                    "then costs simulated seconds, not hours",
                    0.0,
                    10.0,
                    read_only=True,
                ),
                ParamSpec(
                    "sim_start_s",
                    0.0,
                    "Simulated time at start, seconds since the epoch (0 = now)",
                    0.0,
                    4.0e9,
                    read_only=True,
                ),
                ParamSpec(
                    "sample_period_s",
                    1.0,
                    "Pressure sample period (simulated time)",
                    0.001,
                    3600.0,
                    read_only=True,
                ),
                ParamSpec(
                    "max_samples_per_wall_s",
                    50.0,
                    "Accelerated runs lengthen the sample period so that no more samples than "
                    "this are published per wall second",
                    1.0,
                    10000.0,
                    read_only=True,
                ),
                ParamSpec(
                    "update_period_s",
                    0.02,
                    "Wall-time period of /clock and of publishing due pressure samples",
                    0.001,
                    1.0,
                    read_only=True,
                ),
                ParamSpec(
                    "backend",
                    "stepper",
                    "Pump family the emulated device speaks: " + ", ".join(sorted(BACKENDS)),
                    read_only=True,
                ),
                ParamSpec(
                    "address", 0, "Network address of the emulated pump", 0, 99, read_only=True
                ),
                ParamSpec(
                    "safe_mode",
                    False,
                    "Emulated New Era pump starts in Safe mode (framed, CRC-checked messages)",
                    read_only=True,
                ),
                ParamSpec(
                    "pressure_output",
                    "topic",
                    "Where the line pressure sensor reports: 'topic' (its own node publishes "
                    "'pressure') or 'device' (the emulated pump's firmware pressure channel, for "
                    "motor_driver's publish_pressure; stepper backend only)",
                    read_only=True,
                    validator=_pressure_output,
                ),
                ParamSpec(
                    "port_link",
                    "",
                    "Path made a symlink to the emulated pump's pty ('' = <runtime dir>/"
                    "domain<ROS domain>/<ns>/pump, the runtime dir being $XDG_RUNTIME_DIR/"
                    "pump_rig or /tmp/pump_rig-<uid>); one emulator holds it at a time",
                    read_only=True,
                ),
                ParamSpec(
                    "seed",
                    1,
                    "Random seed of sensor noise and faults",
                    0,
                    2**31 - 1,
                    read_only=True,
                ),
                *bench_param_specs(),
            ],
        )
        bench_values: dict[str, object] = {
            spec.name.removeprefix("bench."): self.params.get(spec.name)
            for spec in bench_param_specs()
        }
        bench_values["seed"] = int(self.params.get("seed"))
        params = BenchParams.from_mapping(bench_values)
        speed = float(self.params.get("speed"))
        sim_start = float(self.params.get("sim_start_s")) or time.time()
        self.publishes_clock = not math.isclose(speed, 1.0)
        # Event times are held until _update publishes them, whoever reads the clock first.
        self.clock = SimClock(
            speed,
            sim_start,
            event_speed=float(self.params.get("event_speed")),
            event_window_s=float(self.params.get("event_window_s")),
            event_hold_wall_s=float(self.params.get("event_hold_wall_s")),
            hold_until_tick=self.publishes_clock,
        )
        self._lock = threading.Lock()
        self._pump_command = (False, 0.0)  # (running, rate) last seen
        # Until the pump first runs (the stack starting up, the first program), as after any
        # stop: the start-up's wall time then costs simulated seconds, not hours.
        self.clock.hold_slow(_STARTUP_HOLD_WALL_S, _PUMP_HOLD)
        t0 = self.clock.now_s()
        sample_period_s = self._sample_period_s(speed)
        self.session = BenchSession(
            BenchModel(params, t0_s=t0), sample_period_s=sample_period_s, t0_s=t0
        )
        namespace, domain = self.get_namespace(), self.context.get_domain_id()
        link = Path(str(self.params.get("port_link")) or default_port_link(namespace, domain))
        backend = find_backend(str(self.params.get("backend")))
        self._pressure_on_device = self.params.get("pressure_output") == "device"
        if self._pressure_on_device and not backend.has_pressure_channel:
            raise ValueError(
                f"pressure_output 'device': the {backend.name} backend has no pressure channel"
            )
        self.emulator = backend.emulator(
            EmulatorOptions(
                pump=self.session,
                pressure_source=self.session.last_sample_kpa if self._pressure_on_device else None,
                seed=int(self.params.get("seed")),
                address=int(self.params.get("address")),
                safe_mode=bool(self.params.get("safe_mode")),
                t0_s=t0,
                serial_number=emulator_serial("OSP-EMU", domain, namespace, link),
            )
        )
        link.parent.mkdir(parents=True, exist_ok=True)
        device: ByteDevice = (
            _EventReportingDevice(self.emulator, self._report_pump_event)
            if self.clock.slows_for_events
            else self.emulator
        )
        self.device = PtySerialDevice(
            device,
            self.clock.now_s,
            lock=self._lock,
            link_path=link,
            link_owner={
                "namespace": namespace,
                "domain": domain,
                "node": self.get_fully_qualified_name(),
            },
        )
        self.device.start()

        self._pressure_pub = rig_publisher(self, "pressure")
        self._clock_pub = (
            self.create_publisher(Clock, "/clock", 10, event_callbacks=NO_PUB_EVENTS)
            if self.publishes_clock
            else None
        )
        self._diag_pub = diagnostics_publisher(self)
        if self.clock.slows_for_events:
            rig_subscription(self, "dose", self._on_dose)
        self._fault_pub = rig_publisher(self, "bench/faults")
        self.create_service(InjectFault, "inject_fault", self._on_inject_fault)
        self.create_service(Trigger, "clear_faults", self._on_clear_faults)
        wall = wall_clock()
        self.create_timer(float(self.params.get("update_period_s")), self._update, clock=wall)
        self.create_timer(1.0, self._publish_diagnostics, clock=wall)
        self._published_samples = 0
        self.get_logger().info(
            f"mock {backend.name} pump on {self.port} (speed x{speed:g}, pressure every "
            f"{self.session.sample_period_s:g} s sim)"
        )

    @property
    def port(self) -> str:
        return str(self.device.port)

    def sim_now_s(self) -> float:
        return self.clock.now_s()

    def pump_snapshot(self) -> PumpSnapshot:
        """The plunger as the physics has it now (ground truth, for tests and the demo)."""
        with self._lock:
            return self.session.snapshot(self.clock.now_s())

    def _report_pump_event(self) -> None:
        """Slow the clock around the pump's next self-stop, and hold it slow from a stop until
        the pump runs again (the controller's reaction, e.g. the basal after a bolus, then
        costs simulated seconds, not hours). Call with ``self._lock`` held."""
        t_event = self.session.next_pump_event_s()
        if t_event is not None:
            self.clock.slow_at(t_event)
        pump = self.session.bench.pump
        running = pump.state is PumpRunState.RUNNING
        command = (running, pump.rate_ul_per_h if running else 0.0)
        if command != self._pump_command:
            # The pump was commanded anew: what an event was waiting for has come.
            self._pump_command = command
            if running:
                self.clock.release_slow(_PUMP_HOLD)
                self.clock.release_slow(EVENT_HOLD)
            else:
                self.clock.hold_slow(self.clock.event_hold_wall_s, _PUMP_HOLD)

    def _on_dose(self, msg: DoseStatus) -> None:
        if msg.next_change.sec or msg.next_change.nanosec:
            self.clock.slow_at(not_before_s(msg.next_change))  # ignored if already past

    def _sample_period_s(self, speed: float) -> float:
        """Accelerated runs sample less often in simulated time, about as often in wall time."""
        return max(
            float(self.params.get("sample_period_s")),
            speed / float(self.params.get("max_samples_per_wall_s")),
        )

    def _update(self) -> None:
        with self._lock:
            t_s = self.clock.tick_s()
            slow = self.clock.slows_for_events and self.clock.in_event_window()
            self.session.set_sample_period(
                self._sample_period_s(self.clock.event_speed if slow else self.clock.speed)
            )
            samples = self.session.collect(t_s)
            if self.clock.slows_for_events:
                self._report_pump_event()
        if self._clock_pub is not None:
            self._clock_pub.publish(Clock(clock=s_to_stamp(t_s)))
        if self._pressure_on_device:
            return  # the pump firmware reports the sensor (BenchSession.last_sample_kpa)
        for t_sample, pressure_kpa in samples:
            if pressure_kpa is None:
                continue  # dropout: the sensor sent nothing
            self._pressure_pub.publish(
                FluidPressure(
                    header=Header(stamp=s_to_stamp(t_sample), frame_id="line_pressure_sensor"),
                    fluid_pressure=pressure_kpa * 1000.0,
                    variance=(self.session.bench.params.sensor_noise_kpa * 1000.0) ** 2,
                )
            )
            self._published_samples += 1

    def inject(self, kind: FaultKind, magnitude: float = 0.0) -> str:
        """Inject a fault now; returns a description. ValueError for an impossible request."""
        if kind == FaultKind.UNPLUG:
            # Not under the session lock: the pty thread takes it to finish an exchange.
            self.device.unplug()
        with self._lock:
            t_s = self.clock.now_s()
            if kind in SERIAL_FAULTS - {FaultKind.UNPLUG}:
                if magnitude > 0.0:
                    self._set_fault_strength(kind, magnitude)
                self.emulator.set_fault(kind, True)
            elif kind != FaultKind.UNPLUG:
                self.session.inject_fault(t_s, kind, magnitude)
        message = f"injected {kind.value} at t={t_s:.3f} s"
        self._publish_fault(t_s, kind.value, True, magnitude, message)
        self.get_logger().warning(message)
        return message

    def _set_fault_strength(self, kind: FaultKind, magnitude: float) -> None:
        """Serial fault strength from the request's magnitude: the probability of a garbled
        or dropped reply (0-1), or the delay of late replies in seconds."""
        config = self.emulator.fault_config
        if kind is FaultKind.SERIAL_DELAY:
            config = dataclasses.replace(config, delay_s=magnitude)
        elif kind is FaultKind.SERIAL_DROP:
            config = dataclasses.replace(config, drop_probability=min(1.0, magnitude))
        elif kind is FaultKind.SERIAL_GARBAGE:
            config = dataclasses.replace(config, garbage_probability=min(1.0, magnitude))
        self.emulator.set_fault_config(config)

    def clear(self) -> str:
        with self._lock:
            t_s = self.clock.now_s()
            self.session.clear_faults(t_s)
            self.emulator.clear_faults()
        if not self.device.plugged:
            self.device.replug()  # not under the session lock (see inject)
        message = f"faults cleared at t={t_s:.3f} s"
        self._publish_fault(t_s, "all", False, 0.0, message)
        self.get_logger().info(message)
        return message

    def _publish_fault(
        self, t_s: float, kind: str, active: bool, magnitude: float, message: str
    ) -> None:
        self._fault_pub.publish(
            FaultEvent(
                header=Header(stamp=s_to_stamp(t_s), frame_id="bench"),
                kind=kind,
                active=active,
                magnitude=magnitude,
                message=message,
            )
        )

    def _on_inject_fault(
        self, request: InjectFault.Request, response: InjectFault.Response
    ) -> InjectFault.Response:
        try:
            kind = FaultKind.parse(request.kind)
            if not math.isfinite(request.magnitude) or request.magnitude < 0:
                raise ValueError(
                    f"magnitude must be a finite number >= 0 (got {request.magnitude})"
                )
            response.message = self.inject(kind, request.magnitude)
            response.success = True
        except ValueError as exc:
            response.success, response.message = False, str(exc)
        return response

    def _on_clear_faults(
        self, _req: Trigger.Request, response: Trigger.Response
    ) -> Trigger.Response:
        response.message = self.clear()
        response.success = True
        return response

    def _publish_diagnostics(self) -> None:
        with self._lock:
            t_s = self.clock.now_s()
            snap = self.session.snapshot(t_s)
            pressure = self.session.line_pressure_kpa(t_s)
            faults = sorted(k.value for k in self.session.bench.active_faults)
        faults += sorted(k.value for k in self.emulator.active_faults)
        status = DiagnosticStatus(
            level=DiagnosticStatus.WARN if faults else DiagnosticStatus.OK,
            name=f"{self.get_fully_qualified_name()}: bench",
            message="faults: " + ",".join(faults) if faults else "nominal",
            hardware_id=self.port,
            values=[
                KeyValue(key="sim_time_s", value=f"{t_s:.3f}"),
                KeyValue(key="speed", value=f"{self.clock.speed:g}"),
                KeyValue(key="clock_events_pending", value=str(self.clock.pending_events)),
                KeyValue(key="pump_state", value=snap.state.name),
                KeyValue(key="delivered_ul", value=f"{snap.delivered_ul:.6f}"),
                KeyValue(key="line_pressure_kpa", value=f"{pressure:.3f}"),
                KeyValue(key="samples_published", value=str(self._published_samples)),
            ],
        )
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = s_to_stamp(t_s)
        self._diag_pub.publish(msg)

    def close(self) -> None:
        self.device.close()


def main(args: list[str] | None = None) -> None:
    from pump_rig.nodes.runner import run_node

    run_node(MockHardware, args)


if __name__ == "__main__":
    main()
