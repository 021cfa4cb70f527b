"""The motor driver's own safety rules (DESIGN invariants 1 and 2), without ROS."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pump_rig.core.drive_policy import DriveLimits, DrivePolicy
from pump_rig.core.pump_types import Direction, PumpAction

LIMITS = DriveLimits(max_rate_ul_per_h=100.0, max_volume_per_command_ul=50.0, command_timeout_s=5.0)


def running_policy(t_s: float = 0.0, rate: float = 20.0, seq: int = 1) -> DrivePolicy:
    policy = DrivePolicy(LIMITS)
    assert policy.on_command(t_s, PumpAction.INFUSE, rate, 0.0, seq).accepted
    return policy


def test_no_command_means_stopped() -> None:
    target = DrivePolicy(LIMITS).target(0.0)
    assert not target.running
    assert target.reason == "no command yet"


def test_infuse_command_runs_at_its_rate() -> None:
    target = running_policy(rate=20.0).target(1.0)
    assert target.running
    assert target.rate_ul_per_h == 20.0
    assert target.direction == Direction.INFUSE
    assert target.volume_limit_ul == 0.0


def test_withdraw_direction() -> None:
    policy = DrivePolicy(LIMITS)
    policy.on_command(0.0, PumpAction.WITHDRAW, 10.0, 5.0, 1)
    target = policy.target(0.0)
    assert target.running and target.direction == Direction.WITHDRAW
    assert target.volume_limit_ul == 5.0


@pytest.mark.parametrize(
    ("rate", "limit", "fragment"),
    [
        (100.5, 0.0, "above the driver limit 100"),
        (-1.0, 0.0, "invalid rate"),
        (math.nan, 0.0, "invalid rate"),
        (math.inf, 0.0, "invalid rate"),
        (10.0, 51.0, "volume limit 51"),
        (10.0, -1.0, "invalid volume limit"),
    ],
)
def test_commands_outside_limits_stop_the_pump(rate: float, limit: float, fragment: str) -> None:
    policy = running_policy()
    verdict = policy.on_command(1.0, PumpAction.INFUSE, rate, limit, 2)
    assert not verdict.accepted
    assert fragment in verdict.message
    target = policy.target(1.0)
    assert not target.running
    assert fragment in target.reason


def test_unknown_action_is_refused() -> None:
    policy = running_policy()
    assert not policy.on_command(1.0, 7, 10.0, 0.0, 2).accepted
    assert not policy.target(1.0).running


def test_stale_commands_stop_the_pump_and_a_repeat_does_not_restart_it() -> None:
    policy = running_policy(t_s=0.0, seq=3)
    assert policy.target(5.0).running  # exactly at the timeout: still fresh
    assert policy.is_stale(5.01)
    assert policy.target(5.01).reason == "command stale"
    # The same command arriving late (same sequence) must not restart the pump.
    policy.on_command(6.0, PumpAction.INFUSE, 20.0, 0.0, 3)
    assert not policy.target(6.0).running
    # A new command does.
    policy.on_command(7.0, PumpAction.INFUSE, 20.0, 0.0, 4)
    assert policy.target(7.0).running


def test_stop_command_is_never_stale() -> None:
    policy = DrivePolicy(LIMITS)
    policy.on_command(0.0, PumpAction.STOP, 0.0, 0.0, 1)
    assert not policy.is_stale(1e6)


def test_only_the_source_that_engaged_an_estop_releases_it() -> None:
    """The pressure monitor engaged the estop; any node publishing engaged=False used to
    release it. A release from another source is refused with the reason, and with two
    sources engaged both must release."""
    monitor, other = "/rig/pressure_monitor", "/rig/somebody"
    policy = running_policy(seq=5)
    assert policy.on_estop(True, "occlusion", monitor) is None
    refused = policy.on_estop(False, "all fine", other)
    assert refused == f"estop release from {other} refused: engaged by {monitor}"
    assert policy.estopped and "occlusion" in policy.target(1.0).reason
    policy.on_estop(True, "drill", other)
    assert policy.on_estop(False, "cleared", monitor) is None
    assert policy.estopped  # the drill still holds
    assert policy.on_estop(False, "drill over", other) is None
    assert not policy.estopped
    assert policy.on_estop(False, "again", other) is None  # nothing engaged: nothing refused


def test_estop_stops_and_release_alone_does_not_restart() -> None:
    policy = running_policy(seq=5)
    policy.on_estop(True, "occlusion")
    assert policy.estopped
    assert not policy.target(1.0).running
    assert "estop: occlusion" in policy.target(1.0).reason
    # Commands while engaged change nothing.
    policy.on_command(1.0, PumpAction.INFUSE, 20.0, 0.0, 6)
    assert not policy.target(1.0).running
    policy.on_estop(False, "")
    # Released, but the last command (seq 6) was received while stopped... it is newer than the
    # stop, so only a command after the release counts: heartbeat of seq 6 must not run it.
    policy.on_command(2.0, PumpAction.INFUSE, 20.0, 0.0, 6)
    assert not policy.target(2.0).running
    policy.on_command(3.0, PumpAction.INFUSE, 20.0, 0.0, 7)
    assert policy.target(3.0).running


def test_device_fault_requires_a_new_command() -> None:
    policy = running_policy(seq=2)
    policy.on_device_fault()
    assert not policy.target(0.0).running
    policy.on_command(0.5, PumpAction.INFUSE, 20.0, 0.0, 2)
    assert not policy.target(0.5).running
    policy.on_command(1.0, PumpAction.INFUSE, 20.0, 0.0, 3)
    assert policy.target(1.0).running


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_rate_ul_per_h"):
        DriveLimits(max_rate_ul_per_h=0.0, max_volume_per_command_ul=1.0, command_timeout_s=1.0)
    with pytest.raises(ValueError, match="command_timeout_s"):
        DriveLimits(
            max_rate_ul_per_h=1.0, max_volume_per_command_ul=1.0, command_timeout_s=math.nan
        )


events = st.one_of(
    st.tuples(
        st.just("cmd"),
        st.sampled_from([0, 1, 2, 9]),
        st.one_of(st.floats(min_value=-10, max_value=1000), st.just(math.nan)),
        st.one_of(st.floats(min_value=-10, max_value=200), st.just(math.inf)),
    ),
    st.tuples(st.just("estop"), st.booleans(), st.just(0.0), st.just(0.0)),
    st.tuples(st.just("fault"), st.just(0), st.just(0.0), st.just(0.0)),
    st.tuples(st.just("wait"), st.just(0), st.floats(min_value=0, max_value=20), st.just(0.0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=40))
def test_whatever_it_is_told_the_target_stays_within_limits(
    seq_events: list[tuple[str, int, float, float]],
) -> None:
    policy = DrivePolicy(LIMITS)
    t_s, seq, estop, last_cmd_t = 0.0, 0, False, None
    for kind, a, b, c in seq_events:
        if kind == "cmd":
            seq += 1
            policy.on_command(t_s, a, b, c, seq)
            last_cmd_t = t_s
        elif kind == "estop":
            estop = bool(a)
            policy.on_estop(estop, "test")
        elif kind == "fault":
            policy.on_device_fault()
        else:
            t_s += b
        target = policy.target(t_s)
        if target.running:
            assert 0 < target.rate_ul_per_h <= LIMITS.max_rate_ul_per_h
            assert 0 <= target.volume_limit_ul <= LIMITS.max_volume_per_command_ul
            assert not estop
            assert last_cmd_t is not None and t_s - last_cmd_t <= LIMITS.command_timeout_s


def test_staleness_needs_wall_time_too_when_it_is_known() -> None:
    limits = DriveLimits(
        max_rate_ul_per_h=100.0,
        max_volume_per_command_ul=50.0,
        command_timeout_s=5.0,
        command_timeout_wall_s=2.0,
    )
    policy = DrivePolicy(limits)
    policy.on_command(0.0, PumpAction.INFUSE, 20.0, 0.0, 1, wall_s=1000.0)
    # 60 simulated seconds went by in 0.1 s of wall time (accelerated run): not stale.
    assert not policy.is_stale(60.0, 1000.1)
    assert policy.target(60.0, 1000.1).running
    # Both clocks past their limits: stale.
    assert policy.is_stale(60.0, 1002.5)
    assert not policy.target(60.0, 1002.5).running
    # Real time (speed 1): the ROS-time limit is the longer one and decides.
    policy.on_command(100.0, PumpAction.INFUSE, 20.0, 0.0, 2, wall_s=2000.0)
    assert not policy.is_stale(104.0, 2004.0)
    assert policy.is_stale(105.5, 2005.5)


def test_a_rate_below_the_pumps_floor_is_refused_with_the_reason() -> None:
    policy = DrivePolicy(
        DriveLimits(
            max_rate_ul_per_h=1000.0,
            max_volume_per_command_ul=100.0,
            command_timeout_s=5.0,
            min_rate_ul_per_h=15.4,
        )
    )
    verdict = policy.on_command(0.0, PumpAction.INFUSE, 2.0, 0.0, 1)
    assert not verdict.accepted
    assert "below the 15.4 µL/h" in verdict.message
    assert not policy.target(0.0).running
    assert policy.on_command(1.0, PumpAction.INFUSE, 20.0, 0.0, 2).accepted
    assert policy.target(1.0).running
    # Stopping is always allowed, whatever the floor.
    assert policy.on_command(2.0, PumpAction.STOP, 0.0, 0.0, 3).accepted
