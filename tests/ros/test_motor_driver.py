"""motor_driver against every backend's emulator on a real pty: lifecycle, faults, limits.

The test plays the dosing controller (it publishes ``pump/command``); the mock's plunger is the
ground truth for what the pump really does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from pump_rig_interfaces.msg import EmergencyStop, PumpCommand, PumpState
from pump_rig_interfaces.srv import InjectFault
from rclpy.parameter import Parameter
from std_srvs.srv import Trigger

from pump_rig.cli.stack import Stack
from pump_rig.core.pump_types import PumpRunState
from pump_rig.drivers.backends import BACKENDS
from tests.ros.conftest import Probe, last

pytestmark = pytest.mark.ros

BACKEND_NAMES = sorted(BACKENDS)
RATE_UL_PER_H = 600.0


def make_rig(make_stack: Callable[..., Stack], backend: str, **driver: Any) -> Stack:
    """The rig without a dosing controller, on ``backend``'s emulator, in real time."""
    driver_params = [Parameter("backend", value=backend)]
    driver_params += [Parameter(name, value=value) for name, value in driver.items()]
    return make_stack(
        controller=False,
        extra={
            "mock_hardware": [Parameter("backend", value=backend)],
            "motor_driver": driver_params,
        },
    )


def command(sequence: int, rate: float = RATE_UL_PER_H, limit: float = 0.0) -> PumpCommand:
    return PumpCommand(
        action=PumpCommand.INFUSE,
        flow_rate_ul_per_h=rate,
        volume_limit_ul=limit,
        sequence=sequence,
        reason="test",
    )


def keep_commanding(probe: Probe, cmd: PumpCommand, until: Callable[[], Any], what: str) -> Any:
    """Publish ``cmd`` as a controller's heartbeat would, until ``until()`` holds."""

    def step() -> Any:
        probe.publish("pump/command", cmd)
        return until()

    return probe.wait_for(step, timeout_s=30.0, what=what)


def state_is(probe: Probe, *states: int) -> Callable[[], Any]:
    messages = probe.watch("pump/state")
    return lambda: (s := last(messages)) is not None and s.state in states and s


def alarm_raised(probe: Probe, code: str) -> Callable[[], Any]:
    alarms = probe.watch("alarms")
    return lambda: next((a for a in alarms if a.code == code and a.active), None)


def plunger(stack: Stack) -> PumpRunState:
    assert stack.mock is not None
    return stack.mock.pump_snapshot().state


def run_pump(probe: Probe, stack: Stack, sequence: int = 1) -> None:
    keep_commanding(
        probe,
        command(sequence),
        lambda: state_is(probe, PumpState.RUNNING)() and plunger(stack) is PumpRunState.RUNNING,
        f"the pump running on command {sequence}",
    )


def stays_stopped(probe: Probe, stack: Stack, cmd: PumpCommand, polls: int = 4) -> None:
    """Over ``polls`` more pump/state reports (the driver applies commands every poll), the
    plunger never moves although ``cmd`` keeps coming."""
    states = probe.watch("pump/state")
    start = len(states)

    def observed() -> bool:
        assert plunger(stack) is not PumpRunState.RUNNING, "the pump restarted by itself"
        assert all(s.state != PumpState.RUNNING for s in states[start:]), "reported RUNNING"
        return len(states) >= start + polls

    keep_commanding(probe, cmd, observed, f"{polls} more pump states")


# ---- lifecycle --------------------------------------------------------------------------------


def change_state(probe: Probe, transition: int) -> None:
    answer = probe.call(
        ChangeState,
        "motor_driver/change_state",
        ChangeState.Request(transition=Transition(id=transition)),
    )
    assert answer.success, f"transition {transition} refused"


def lifecycle_label(probe: Probe) -> str:
    return str(
        probe.call(GetState, "motor_driver/get_state", GetState.Request()).current_state.label
    )


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_lifecycle_transitions_from_a_test(
    make_stack: Callable[..., Stack], probe: Probe, backend: str
) -> None:
    stack = make_rig(make_stack, backend, autostart=False, syringe="bd_plastipak_30ml")
    assert stack.mock is not None
    assert lifecycle_label(probe) == "unconfigured"
    probe.wait_for(state_is(probe, PumpState.DISCONNECTED), what="DISCONNECTED while unconfigured")

    # configure: port opened, device identified, syringe set and read back; still not pumping.
    change_state(probe, Transition.TRANSITION_CONFIGURE)
    assert lifecycle_label(probe) == "inactive"
    assert stack.mock.pump_snapshot().inner_diameter_mm == pytest.approx(21.59)
    idle = keep_commanding(probe, command(1), state_is(probe, PumpState.IDLE), "IDLE when inactive")
    assert idle.device, "pump/state names the device identified at configure"
    stays_stopped(probe, stack, command(1))

    # activate: commands are applied.
    change_state(probe, Transition.TRANSITION_ACTIVATE)
    run_pump(probe, stack, sequence=2)

    # deactivate: the pump stops.
    change_state(probe, Transition.TRANSITION_DEACTIVATE)
    probe.wait_for(lambda: plunger(stack) is PumpRunState.IDLE, what="the plunger stopped")
    stays_stopped(probe, stack, command(3))

    # cleanup: the port is closed; reported as not connected.
    change_state(probe, Transition.TRANSITION_CLEANUP)
    assert lifecycle_label(probe) == "unconfigured"
    probe.wait_for(state_is(probe, PumpState.DISCONNECTED), what="DISCONNECTED after cleanup")
    assert plunger(stack) is PumpRunState.IDLE


# ---- faults -----------------------------------------------------------------------------------

# (fault, magnitude, what the driver reports, the alarm it raises)
FAULTS = [
    ("serial_garbage", 1.0, (PumpState.FAULT,), "DEVICE_FAULT"),  # every reply corrupted
    ("serial_drop", 1.0, (PumpState.DISCONNECTED,), "DEVICE_LOST"),  # no reply at all
    ("serial_delay", 3.0, (PumpState.DISCONNECTED,), "DEVICE_LOST"),  # replies after 3 s
    ("unplug", 0.0, (PumpState.DISCONNECTED,), "DEVICE_LOST"),
    ("motor_stall", 0.0, (PumpState.STALLED,), "MOTOR_STALL"),
]


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize(
    ("fault", "magnitude", "reported", "alarm"), FAULTS, ids=[f[0] for f in FAULTS]
)
def test_a_fault_stops_the_pump_raises_the_alarm_and_nothing_restarts_it_but_a_new_command(
    make_stack: Callable[..., Stack],
    probe: Probe,
    backend: str,
    fault: str,
    magnitude: float,
    reported: tuple[int, ...],
    alarm: str,
) -> None:
    stack = make_rig(make_stack, backend, reconnect_period_s=0.2, reconnect_max_period_s=0.5)
    run_pump(probe, stack)
    answer = probe.call(
        InjectFault, "inject_fault", InjectFault.Request(kind=fault, magnitude=magnitude)
    )
    assert answer.success, answer.message

    keep_commanding(probe, command(1), state_is(probe, *reported), f"pump/state {reported}")
    keep_commanding(probe, command(1), alarm_raised(probe, alarm), f"{alarm} raised")
    if fault != "unplug":  # unplugged, the host cannot reach the pump until it is back
        keep_commanding(
            probe, command(1), lambda: plunger(stack) is PumpRunState.IDLE, "the plunger stopped"
        )

    # The fault ends; the driver reconnects (stopping the pump first) but never restarts it on
    # the command that was running when the fault came.
    assert probe.call(Trigger, "clear_faults", Trigger.Request()).success
    # A stall is reported until a new command; the other faults end with a reconnect.
    after = PumpState.STALLED if fault == "motor_stall" else PumpState.IDLE
    keep_commanding(probe, command(1), state_is(probe, after), f"pump/state {after} again")
    assert plunger(stack) is PumpRunState.IDLE
    stays_stopped(probe, stack, command(1))
    run_pump(probe, stack, sequence=2)  # a new command runs it again


# ---- the driver's own limits ------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_the_hourly_volume_cap_holds_whatever_is_commanded(
    make_stack: Callable[..., Stack], probe: Probe, backend: str
) -> None:
    cap_ul = 0.5
    stack = make_rig(make_stack, backend, max_volume_per_hour_ul=cap_ul)
    assert stack.mock is not None
    start_ul = stack.mock.pump_snapshot().delivered_ul
    # At the driver's top rate, 1000 µL/h, the cap is reached in under 2 s.
    keep_commanding(
        probe, command(1, rate=1000.0), alarm_raised(probe, "DOSE_LIMIT"), "DOSE_LIMIT raised"
    )
    probe.wait_for(lambda: plunger(stack) is PumpRunState.IDLE, what="the plunger stopped")
    stays_stopped(probe, stack, command(1, rate=1000.0))
    infused = stack.mock.pump_snapshot().delivered_ul - start_ul
    # The device itself was limited to the hour's budget, so not even one poll's worth more;
    # it stops on the last whole step (0.041 µL here) within it.
    assert cap_ul - 0.05 <= infused <= cap_ul + 1e-6


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_an_absolute_stop_counts_what_the_running_command_delivered_before_it(
    make_stack: Callable[..., Stack], probe: Probe, backend: str
) -> None:
    """The controller's daily-maximum stop is on the device counter: the driver applies it
    after it has stopped the running command, so what that command delivered while the new one
    was on its way is not delivered again."""
    stack = make_rig(make_stack, backend)
    assert stack.mock is not None
    states = probe.watch("pump/state")
    # 600 µL/h, no limit, until the counter has moved a few of its own steps.
    running = keep_commanding(
        probe,
        command(1),
        lambda: (
            (s := last(states)) is not None
            and s.state == PumpState.RUNNING
            and s.delivered_volume_ul > 3 * max(s.volume_resolution_ul, 0.02)
            and s
        ),
        "some delivery reported",
    )
    stop_at = running.delivered_volume_ul + max(0.3, 3 * running.volume_resolution_ul)
    capped = command(2)
    capped.stop_at_delivered_ul = stop_at
    keep_commanding(
        probe,
        capped,
        lambda: (
            (s := last(states)) is not None
            and s.last_sequence == 2
            and s.state == PumpState.IDLE
            and plunger(stack) is PumpRunState.IDLE
        ),
        "the pump stopped at the absolute stop",
    )
    final = last(states)
    assert final is not None
    resolution = max(final.volume_resolution_ul, 1e-6)
    assert final.delivered_volume_ul <= stop_at + resolution
    # ...and used its room, but for the device's own rounding of the limit (the NE-1000 rounds
    # it down to four digits).
    assert final.delivered_volume_ul >= stop_at - max(0.05, 0.01 * stop_at)
    # A stop the counter has already passed does not start the pump at all.
    spent = command(3)
    spent.stop_at_delivered_ul = final.delivered_volume_ul - 0.1
    stays_stopped(probe, stack, spent)


# ---- the firmware pressure channel --------------------------------------------------------------


def test_a_rig_without_a_separate_sensor_gets_pressure_from_the_pump_firmware(
    make_stack: Callable[..., Stack], probe: Probe
) -> None:
    make_stack(
        controller=False,
        extra={
            "mock_hardware": [Parameter("pressure_output", value="device")],
            "motor_driver": [Parameter("publish_pressure", value=True)],
        },
    )
    pressure = probe.watch("pressure")
    occlusion = probe.watch("occlusion")
    probe.wait_for(lambda: len(pressure) >= 5, what="5 pressure samples")
    assert {p.header.frame_id for p in pressure} == {"pump_firmware_pressure_sensor"}
    # CSF pressure with ripple: 0.5 - 3 kPa.
    assert all(500.0 < p.fluid_pressure < 3000.0 for p in pressure)
    probe.wait_for(lambda: last(occlusion), what="the monitor judging the line")
    assert last(occlusion).state == 0  # OK: no sensor fault from a missing sensor


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_after_an_estop_the_state_is_the_pumps_at_once_and_never_a_stale_run(
    make_stack: Callable[..., Stack], probe: Probe, backend: str
) -> None:
    """Estop engaged while the pump runs: the first ESTOPPED state already reports no flow
    (the device was read after the stop was written), and released before the next poll the
    driver does not report the stale RUNNING at the old rate while the pump stands still.
    Before, ESTOPPED carried the old flow until the next poll and the release published
    RUNNING at the old rate (20 of 20 trials)."""
    stack = make_rig(make_stack, backend)
    run_pump(probe, stack)
    states = probe.watch("pump/state")
    start = len(states)
    probe.publish("estop", EmergencyStop(engaged=True, source="test", reason="drill"))
    estopped = probe.wait_for(
        lambda: next((s for s in states[start:] if s.state == PumpState.ESTOPPED), None),
        what="ESTOPPED",
    )
    assert estopped.flow_rate_ul_per_h == 0.0
    assert plunger(stack) is not PumpRunState.RUNNING
    released = len(states)
    probe.publish("estop", EmergencyStop(engaged=False, source="test", reason="drill over"))
    stays_stopped(probe, stack, command(1), polls=3)  # the same command: no new sequence
    after = states[released:]
    assert after and all(
        s.state != PumpState.RUNNING and s.flow_rate_ul_per_h == 0.0 for s in after
    )
