"""The rig's nodes in one process over real DDS, on mock hardware behind a real pty."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from pump_rig_interfaces.msg import DoseStatus, PumpCommand, PumpState
from pump_rig_interfaces.srv import InjectFault, SetProgram
from rclpy.parameter import Parameter
from std_srvs.srv import Trigger

from pump_rig.cli.stack import Stack, StackOptions
from pump_rig.core.rig_files import default_port_link, legacy_journal_path, ros_domain_id
from tests.ros.conftest import PROGRAM, Probe, last

pytestmark = pytest.mark.ros

SPEED = 60.0  # 1 wall second = 1 simulated minute
# Occlusion at 20 µL/h into ~1 µL/kPa needs ~30 simulated minutes to build 10 kPa: run those
# tests at 10 simulated minutes per wall second.
FAST = 600.0


def running(probe: Probe) -> Any:
    states = probe.watch("pump/state")
    return probe.wait_for(
        lambda: (s := last(states)) is not None and s.state == PumpState.RUNNING and s,
        what="pump RUNNING",
    )


def test_constant_rate_therapy_delivers_what_the_device_reports(
    make_stack: Any, probe: Probe
) -> None:
    stack = make_stack(speed=600.0, program=PROGRAM)
    state = running(probe)
    assert state.flow_rate_ul_per_h == pytest.approx(20.0)
    dose = probe.watch("dose")
    start = state.delivered_volume_ul
    # Wait for one simulated hour of delivery as the device counts it (6 s of wall time).
    probe.wait_for(
        lambda: (s := last(probe.watch("pump/state"))) and s.delivered_volume_ul - start >= 20.0,
        timeout_s=60.0,
        what="20 µL delivered",
    )
    last_dose = probe.wait_for(lambda: last(dose), what="dose status")
    assert last_dose.therapy_state == DoseStatus.RUNNING
    assert last_dose.program == "baclofen-constant"
    # Accounted from device volume: never more than the device counter has moved.
    device = last(probe.watch("pump/state")).delivered_volume_ul
    assert 0 < last_dose.delivered_volume_ul <= device + 1e-6
    # The plunger itself has moved at least what the device reported (the wire carries 6
    # decimals, hence the tolerance) and about the rate times the time it ran.
    assert stack.mock is not None
    assert stack.mock.pump_snapshot().delivered_ul >= device - 1e-6


def test_occlusion_stops_the_pump_through_estop_without_the_controller(
    make_stack: Any, probe: Probe
) -> None:
    # No dosing controller: the test itself commands the pump, then stops talking.
    stack = make_stack(speed=SPEED, controller=False)
    command = PumpCommand(action=PumpCommand.INFUSE, flow_rate_ul_per_h=200.0, sequence=1)
    states = probe.watch("pump/state")

    def heartbeat_then_running() -> bool:
        probe.publish("pump/command", command)
        s = last(states)
        return s is not None and s.state == PumpState.RUNNING

    probe.wait_for(heartbeat_then_running, what="pump RUNNING on the test's command")
    answer = probe.call(InjectFault, "inject_fault", InjectFault.Request(kind="occlusion"))
    assert answer.success, answer.message

    def heartbeat_until_estopped() -> bool:
        probe.publish("pump/command", command)  # the "controller" keeps asking to infuse
        s = last(states)
        return s is not None and s.state == PumpState.ESTOPPED

    probe.wait_for(heartbeat_until_estopped, timeout_s=60.0, what="pump ESTOPPED")
    estop = probe.wait_for(lambda: last(probe.watch("estop")), what="estop message")
    assert estop.engaged and estop.source.endswith("pressure_monitor")
    alarms = probe.watch("alarms")
    probe.wait_for(
        lambda: any(a.code == "OCCLUSION" and a.severity == 2 and a.active for a in alarms),
        what="critical OCCLUSION alarm",
    )
    # The plunger itself has stopped, although commands to infuse keep coming.
    assert stack.mock is not None
    assert stack.mock.pump_snapshot().flow_ul_per_h == 0.0


def test_critical_alarm_stops_and_only_clear_plus_resume_restarts(
    make_stack: Any, probe: Probe
) -> None:
    make_stack(speed=FAST, program=PROGRAM)
    running(probe)
    assert probe.call(InjectFault, "inject_fault", InjectFault.Request(kind="occlusion")).success
    dose = probe.watch("dose")
    probe.wait_for(
        lambda: (d := last(dose)) is not None and d.therapy_state == DoseStatus.ALARM,
        timeout_s=60.0,
        what="therapy ALARM",
    )
    # Resume is refused while the alarm stands.
    assert not probe.call(Trigger, "resume", Trigger.Request()).success
    # The monitor refuses to clear while the line is still occluded.
    refused = probe.call(Trigger, "pressure_monitor/clear_alarms", Trigger.Request())
    assert not refused.success and "OCCLUDED" in refused.message
    assert probe.call(Trigger, "clear_faults", Trigger.Request()).success
    probe.wait_for(
        lambda: probe.call(Trigger, "pressure_monitor/clear_alarms", Trigger.Request()).success,
        timeout_s=60.0,
        what="monitor to accept the clear once the line is open",
    )
    assert probe.call(Trigger, "dosing_controller/clear_alarms", Trigger.Request()).success
    # Cleared, but not resumed: still stopped.
    probe.wait_for(
        lambda: (d := last(dose)) is not None and d.therapy_state == DoseStatus.SUSPENDED,
        what="therapy SUSPENDED after clear",
    )
    state = last(probe.watch("pump/state"))
    assert state is not None and state.state != PumpState.RUNNING
    assert probe.call(Trigger, "resume", Trigger.Request()).success
    running(probe)


def test_invalid_program_is_rejected_and_the_running_one_continues(
    make_stack: Any, probe: Probe
) -> None:
    make_stack(speed=SPEED, program=PROGRAM)
    running(probe)
    bad = PROGRAM.read_text().replace("daily_dose_ug: 240.0", "daily_dose_ug: -240.0")
    answer = probe.call(SetProgram, "set_program", SetProgram.Request(program_yaml=bad))
    assert not answer.success
    assert "daily_dose_ug" in answer.message
    dose = probe.watch("dose")
    d = probe.wait_for(lambda: last(dose), what="dose")
    assert d.program == "baclofen-constant" and d.basal_rate_ul_per_h == pytest.approx(20.0)
    assert last(probe.watch("pump/state")).state == PumpState.RUNNING


def test_missing_serial_port_is_reported_by_name(make_stack: Any, probe: Probe) -> None:
    make_stack(port="/dev/pump_rig_no_such_port")
    states = probe.watch("pump/state")
    state = probe.wait_for(
        lambda: (s := last(states)) is not None and s.state == PumpState.DISCONNECTED and s,
        what="DISCONNECTED state",
    )
    assert "/dev/pump_rig_no_such_port" in state.detail


def test_driver_refuses_rates_above_its_limit(make_stack: Any, probe: Probe) -> None:
    make_stack(
        speed=SPEED,
        controller=False,
        extra={"motor_driver": [Parameter("max_rate_ul_per_h", Parameter.Type.DOUBLE, 50.0)]},
    )
    states = probe.watch("pump/state")
    alarms = probe.watch("alarms")
    command = PumpCommand(action=PumpCommand.INFUSE, flow_rate_ul_per_h=51.0, sequence=1)

    def refused() -> bool:
        probe.publish("pump/command", command)
        return any(a.code == "COMMAND_REJECTED" and a.active for a in alarms)

    probe.wait_for(refused, what="COMMAND_REJECTED alarm")
    s = probe.wait_for(
        lambda: (s := last(states)) is not None and "above the driver limit" in s.detail and s,
        what="pump/state saying why",
    )
    assert s.state != PumpState.RUNNING


def test_stale_commands_stop_the_pump(make_stack: Any, probe: Probe) -> None:
    make_stack(speed=SPEED, controller=False)
    states = probe.watch("pump/state")
    command = PumpCommand(action=PumpCommand.INFUSE, flow_rate_ul_per_h=100.0, sequence=1)

    def heartbeat_then_running() -> bool:
        probe.publish("pump/command", command)
        s = last(states)
        return s is not None and s.state == PumpState.RUNNING

    probe.wait_for(heartbeat_then_running, what="RUNNING")
    # Stop sending: the driver must stop by itself and say why.
    alarms = probe.watch("alarms")
    probe.wait_for(
        lambda: any(a.code == "COMMAND_STALE" and a.active for a in alarms),
        what="COMMAND_STALE alarm",
    )
    probe.wait_for(
        lambda: (s := last(states)) is not None and s.state == PumpState.IDLE,
        what="pump IDLE after stale commands",
    )


def test_sensor_dropout_raises_sensor_fault_and_estop(make_stack: Any, probe: Probe) -> None:
    make_stack(speed=SPEED, program=PROGRAM)
    running(probe)
    assert probe.call(
        InjectFault, "inject_fault", InjectFault.Request(kind="sensor_dropout")
    ).success
    alarms = probe.watch("alarms")
    probe.wait_for(
        lambda: any(a.code == "SENSOR_FAULT" and a.active and a.severity == 2 for a in alarms),
        timeout_s=60.0,
        what="SENSOR_FAULT alarm",
    )
    probe.wait_for(
        lambda: (
            (s := last(probe.watch("pump/state"))) is not None and s.state == PumpState.ESTOPPED
        ),
        what="ESTOPPED",
    )


def test_unknown_fault_kind_is_refused_by_name(make_stack: Any, probe: Probe) -> None:
    make_stack(speed=SPEED)
    answer = probe.call(InjectFault, "inject_fault", InjectFault.Request(kind="gremlins"))
    assert not answer.success
    assert "gremlins" in answer.message and "occlusion" in answer.message


def test_a_second_rig_in_the_same_namespace_and_domain_is_refused_and_the_first_runs_on(
    tmp_path: Any, namespace: str, probe: Probe, monkeypatch: Any
) -> None:
    """Shell A runs a rig; shell B starts another in the same namespace and ROS domain. B is
    refused with one line naming A (its pid), whether it collides on the port link or, with
    a link of its own, on the dose journal; A's link still points at A's pump and A doses on.
    Before, B re-pointed A's link at its own pump and A's controller counted B's volume."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    first = Stack(StackOptions(namespace=namespace, speed=SPEED, program=PROGRAM))
    try:
        first.start()
        running(probe)
        link = default_port_link(namespace, ros_domain_id())
        pump = link.readlink()
        with pytest.raises(ValueError, match=rf"port link {link} is in use by pid {os.getpid()}"):
            Stack(StackOptions(namespace=namespace, speed=SPEED, program=PROGRAM))
        own_link = [Parameter("port_link", Parameter.Type.STRING, str(tmp_path / "b_pump"))]
        with pytest.raises(ValueError, match=r"dose journal .* is in use by pid \d+ .*rig "):
            Stack(
                StackOptions(
                    namespace=namespace,
                    speed=SPEED,
                    program=PROGRAM,
                    extra={"mock_hardware": own_link},
                )
            )
        assert link.readlink() == pump
        dose = probe.watch("dose")
        before = probe.wait_for(lambda: last(dose), what="dose").delivered_volume_ul
        after = probe.wait_for(
            lambda: (d := last(dose)) is not None and d.delivered_volume_ul > before and d,
            what="the first rig delivering on",
        )
        assert after.program == "baclofen-constant"
    finally:
        first.shutdown()


def test_a_leftover_ledger_is_resumed_only_when_asked_and_then_said_so(
    tmp_path: Any, namespace: str
) -> None:
    """A rig ran a program and stopped. Started again on the same journal with resume (the
    controller's default, and `pumprig up --port`), it goes on with that ledger and says so
    in the dose status; started as a new ledger (`pumprig up` on the mock), it doses nothing,
    says it is new, and the old journal is kept as a dated copy."""
    journal = tmp_path / "ledger" / "dose_journal.jsonl"
    runs = iter(range(3))

    def run(**options: Any) -> DoseStatus:
        # Each start in a namespace of its own: a latched dose status of the run before
        # cannot be taken for this one's.
        ns = f"{namespace}_{next(runs)}"
        options.setdefault("extra", {})["mock_hardware"] = [
            Parameter("port_link", Parameter.Type.STRING, str(tmp_path / "pump"))
        ]
        watcher = Probe(ns)
        stack = Stack(StackOptions(namespace=ns, speed=SPEED, journal=journal, **options))
        try:
            dose = watcher.watch("dose")
            stack.start()
            status: DoseStatus = watcher.wait_for(
                lambda: (d := last(dose)) is not None and d.ledger and d, what="dose status"
            )
            return status
        finally:
            stack.shutdown()
            watcher.close()

    first = run(program=PROGRAM, new_ledger=True)
    assert first.ledger == f"new {journal}" and first.program == "baclofen-constant"
    resumed = run()
    assert resumed.ledger.startswith(f"resumed {journal} (")
    assert "program baclofen-constant" in resumed.ledger
    assert resumed.program == "baclofen-constant"
    fresh = run(new_ledger=True)
    assert fresh.ledger == f"new {journal}" and fresh.program == ""
    assert fresh.therapy_state == DoseStatus.NO_PROGRAM
    kept = sorted(p.name for p in journal.parent.glob("dose_journal.jsonl.2*"))
    assert len(kept) == 1 and not kept[0].endswith((".id", ".hwm"))


def test_a_journal_left_at_the_old_domain_blind_place_is_not_silently_replaced(
    namespace: str,
) -> None:
    """Releases before per-domain paths kept the journal at $ROS_HOME/pump_rig/<namespace>/.
    A controller that would resume finds it there and nothing at the new place: it refuses
    with one line saying where to move it, instead of starting an empty dose history."""
    old = legacy_journal_path(namespace)
    old.parent.mkdir(parents=True)
    old.write_text("(an earlier release's ledger)\n")
    with pytest.raises(ValueError, match=rf"a dose journal from an earlier pump_rig is at {old}"):
        Stack(StackOptions(namespace=namespace, speed=SPEED))
    assert old.read_text() == "(an earlier release's ledger)\n"


def test_two_accelerated_rigs_in_one_domain_keep_their_own_simulated_time(
    tmp_path: Any, namespace: str, probe: Probe
) -> None:
    """A rig at x60 and another at x600 in the same ROS domain. Each rig's /clock lives in
    its namespace, so each keeps its own simulated time: the x60 rig's nodes see x60 time,
    it raises no alarm, and it doses on. Before, both mocks published the global /clock and
    drove each other's sim time into SENSOR_FAULT and an estop."""
    other = namespace + "_b"

    def stack(ns: str, speed: float, link: str) -> Stack:
        extra = {"mock_hardware": [Parameter("port_link", Parameter.Type.STRING, link)]}
        made = Stack(StackOptions(namespace=ns, speed=speed, program=PROGRAM, extra=extra))
        made.start()
        return made

    slow = stack(namespace, SPEED, str(tmp_path / "a"))
    fast = stack(other, 10 * SPEED, str(tmp_path / "b"))
    try:
        running(probe)
        alarms = probe.watch("alarms")
        controller = slow.node("dosing_controller")
        clock = controller.get_clock()
        t0_sim, t0_wall = clock.now().nanoseconds * 1e-9, time.monotonic()
        probe.wait_for(lambda: time.monotonic() - t0_wall > 3.0 and True, what="3 wall s")
        ratio = (clock.now().nanoseconds * 1e-9 - t0_sim) / (time.monotonic() - t0_wall)
        assert 20.0 < ratio < 90.0  # ~x60 (less while the clock waits on events), not x600
        assert fast.sim_now_s() - slow.sim_now_s() > 0.0  # the x600 rig is ahead: two times
        assert not [a for a in alarms if a.active], [f"{a.code}: {a.message}" for a in alarms]
        assert last(probe.watch("pump/state")).state == PumpState.RUNNING
    finally:
        fast.shutdown()
        slow.shutdown()
