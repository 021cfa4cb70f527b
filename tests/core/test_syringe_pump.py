"""Plunger mechanics: exact delivery, self-stops at the exact time, stalls, input checks."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pump_rig.core.pump_types import SECONDS_PER_DAY, SECONDS_PER_HOUR, Direction, PumpRunState
from pump_rig.core.syringe_pump import MechanicsSpec, SyringePump

DIAMETER_MM = 14.43


def make_pump(**overrides: float) -> SyringePump:
    kwargs: dict[str, float] = {
        "inner_diameter_mm": DIAMETER_MM,
        "syringe_volume_ul": 10_000.0,
        "loaded_volume_ul": 10_000.0,
        "max_rate_ul_per_h": 100_000.0,
    }
    kwargs.update(overrides)
    return SyringePump(**kwargs)  # type: ignore[arg-type]


def running_pump(rate_ul_per_h: float, t_s: float = 0.0, **overrides: float) -> SyringePump:
    pump = make_pump(**overrides)
    pump.set_rate(t_s, rate_ul_per_h)
    pump.start(t_s)
    return pump


def test_ul_per_step_follows_diameter_and_lead_screw() -> None:
    pump = make_pump()
    expected = math.pi * (DIAMETER_MM / 2) ** 2 * 0.8 / (200 * 16)
    assert pump.ul_per_step == pytest.approx(expected, rel=1e-15)
    coarse = SyringePump(
        inner_diameter_mm=10.0,
        syringe_volume_ul=1000.0,
        loaded_volume_ul=0.0,
        max_rate_ul_per_h=10.0,
        mechanics=MechanicsSpec(lead_screw_pitch_mm=2.0, steps_per_rev=100, microsteps=1),
    )
    assert coarse.ul_per_step == pytest.approx(math.pi * 25.0 * 2.0 / 100, rel=1e-15)


def test_thirty_days_in_one_jump_is_rate_times_time() -> None:
    rate = 10.0
    t_end = 30 * SECONDS_PER_DAY
    pump = running_pump(rate)
    snap = pump.snapshot(t_end)
    exact_steps = rate * t_end / SECONDS_PER_HOUR / pump.ul_per_step
    assert snap.steps == math.floor(exact_steps)
    assert snap.delivered_ul == pytest.approx(snap.steps * pump.ul_per_step, rel=1e-15)
    assert 0.0 <= rate * t_end / SECONDS_PER_HOUR - snap.delivered_ul < pump.ul_per_step
    assert snap.remaining_ul == pytest.approx(10_000.0 - snap.delivered_ul, rel=1e-12)
    assert snap.state is PumpRunState.RUNNING
    assert snap.flow_ul_per_h == rate


def test_small_steps_and_rate_reanchoring_match_one_jump() -> None:
    rate = 10.0
    t_end = 30 * SECONDS_PER_DAY
    jump = running_pump(rate)
    small = running_pump(rate)
    reanchored = running_pump(rate)
    minute = 60.0
    for i in range(1, int(t_end / minute) + 1):
        t = i * minute
        small.advance(t)
        reanchored.set_rate(t, rate)  # starts a new segment every minute
    expected = jump.snapshot(t_end)
    assert small.snapshot(t_end) == expected
    # Re-anchoring carries the fractional microstep over; rounding may move one step at most.
    got = reanchored.snapshot(t_end)
    assert abs(got.steps - expected.steps) <= 1
    exact_steps = rate * t_end / SECONDS_PER_HOUR / jump.ul_per_step
    assert abs(got.steps - exact_steps) < 1.0 + 1e-9 * exact_steps


def test_rate_change_mid_run_integrates_piecewise() -> None:
    pump = running_pump(36.0)  # 0.01 µL/s
    pump.set_rate(1000.0, 360.0)  # 0.1 µL/s
    snap = pump.snapshot(2000.0)
    assert abs(snap.delivered_ul - (10.0 + 100.0)) < pump.ul_per_step


def test_volume_limit_stops_at_the_exact_step_time() -> None:
    pump = make_pump()
    pump.set_rate(100.0, 36.0)  # 0.01 µL/s
    pump.set_volume_limit(100.0, 5.0)
    pump.start(100.0)
    n = math.floor(5.0 / pump.ul_per_step)
    t_stop = 100.0 + n * pump.ul_per_step / 0.01
    event = pump.next_event_s()
    assert event == pytest.approx(t_stop, rel=1e-12)
    assert pump.snapshot(t_stop - 1e-6).state is PumpRunState.RUNNING
    jump = make_pump()
    jump.set_rate(100.0, 36.0)
    jump.set_volume_limit(100.0, 5.0)
    jump.start(100.0)
    for p in (pump, jump):
        snap = p.snapshot(1e7)  # far past the event in one jump
        assert snap.state is PumpRunState.IDLE
        assert snap.limit_reached
        assert snap.steps == n
        assert snap.flow_ul_per_h == 0.0
        assert 0.0 <= 5.0 - snap.delivered_ul < p.ul_per_step
        assert p.next_event_s() is None
    assert pump.snapshot(2e7) == jump.snapshot(2e7)
    # A new start counts the limit afresh.
    jump.start(2e7)
    assert not jump.snapshot(2e7).limit_reached
    assert jump.next_event_s() == pytest.approx(2e7 + n * jump.ul_per_step / 0.01, rel=1e-12)


def test_volume_limit_already_passed_stops_now() -> None:
    pump = running_pump(360.0)  # 0.1 µL/s
    pump.set_volume_limit(100.0, 5.0)  # 10 µL already moved
    snap = pump.snapshot(100.0)
    assert snap.state is PumpRunState.IDLE
    assert snap.limit_reached
    assert abs(snap.delivered_ul - 10.0) < pump.ul_per_step


def test_empty_syringe_stops_at_the_exact_time_and_start_stays_idle() -> None:
    pump = running_pump(3.6, loaded_volume_ul=1.0)  # 0.001 µL/s
    n = math.floor(1.0 / pump.ul_per_step)
    t_empty = n * pump.ul_per_step / 0.001
    assert pump.next_event_s() == pytest.approx(t_empty, rel=1e-12)
    assert pump.snapshot(t_empty * 0.999).state is PumpRunState.RUNNING
    snap = pump.snapshot(SECONDS_PER_DAY * 365)
    assert snap.state is PumpRunState.IDLE
    assert not snap.limit_reached
    assert snap.steps == n
    assert snap.remaining_ul == 0.0  # the sub-step residue is dead volume
    assert 0.0 <= 1.0 - snap.delivered_ul < pump.ul_per_step
    pump.start(SECONDS_PER_DAY * 366)  # nothing left to push: not an error, run ends at once
    assert pump.snapshot(SECONDS_PER_DAY * 366).state is PumpRunState.IDLE
    assert pump.snapshot(SECONDS_PER_DAY * 367).steps == n


def test_exact_whole_step_load_empties_completely() -> None:
    pump = make_pump(loaded_volume_ul=0.0)
    pump.load(0.0, 1000 * pump.ul_per_step)
    pump.set_rate(0.0, 1000.0)
    pump.start(0.0)
    snap = pump.snapshot(1e6)
    assert snap.steps == 1000
    assert snap.remaining_ul == 0.0
    assert snap.delivered_ul == pytest.approx(1000 * pump.ul_per_step, rel=1e-12)


def test_withdraw_stops_when_the_syringe_is_full() -> None:
    pump = make_pump(loaded_volume_ul=9_999.0)
    pump.set_direction(0.0, Direction.WITHDRAW)
    pump.set_rate(0.0, 36.0)
    pump.start(0.0)
    assert pump.flow_ul_per_s() == pytest.approx(-0.01)
    snap = pump.snapshot(1e6)
    assert snap.state is PumpRunState.IDLE
    assert snap.steps == -math.floor(1.0 / pump.ul_per_step)
    assert snap.delivered_ul < 0.0
    assert 0.0 <= 10_000.0 - snap.remaining_ul < pump.ul_per_step


def test_stall_freezes_the_plunger_while_the_motor_is_commanded() -> None:
    pump = running_pump(360.0)
    pump.set_volume_limit(0.0, 30.0)
    pump.set_stalled(100.0, True)
    stalled = pump.snapshot(100.0)
    assert stalled.state is PumpRunState.STALLED
    assert stalled.flow_ul_per_h == 0.0
    assert pump.flow_ul_per_s() == 0.0
    assert pump.next_event_s() is None
    assert pump.snapshot(10_000.0).steps == stalled.steps
    pump.set_stalled(10_000.0, False)
    assert pump.snapshot(10_000.0).state is PumpRunState.RUNNING
    # The limit keeps counting the volume moved before the stall: 20 µL to go at 0.1 µL/s.
    event = pump.next_event_s()
    assert event is not None
    assert event == pytest.approx(10_200.0, abs=2 * pump.ul_per_step / 0.1)
    pump.stop(10_050.0)
    assert pump.snapshot(10_050.0).state is PumpRunState.IDLE
    pump.start(10_060.0)  # stall flag still set -> commanded but blocked
    pump.set_stalled(10_060.0, True)
    pump.set_stalled(10_070.0, False)
    pump.set_stalled(10_080.0, True)
    assert pump.snapshot(10_090.0).state is PumpRunState.STALLED


def test_stall_flag_while_idle_applies_at_start() -> None:
    pump = make_pump()
    pump.set_stalled(0.0, True)
    assert pump.snapshot(0.0).state is PumpRunState.IDLE
    pump.set_rate(1.0, 10.0)
    pump.start(1.0)
    assert pump.snapshot(2.0).state is PumpRunState.STALLED


def test_set_rate_zero_while_running_holds_the_plunger() -> None:
    pump = running_pump(360.0)
    pump.set_rate(10.0, 0.0)
    snap = pump.snapshot(1000.0)
    assert snap.state is PumpRunState.RUNNING
    assert snap.flow_ul_per_h == 0.0
    assert abs(snap.delivered_ul - 1.0) < pump.ul_per_step


def test_diameter_change_keeps_volume_accounting_consistent() -> None:
    pump = running_pump(360.0)
    pump.stop(100.0)  # ~10 µL with the first syringe
    first = pump.snapshot(100.0)
    pump.set_diameter(100.0, 4.699)
    pump.start(100.0)
    snap = pump.snapshot(200.0)  # ~10 µL more with much smaller steps
    assert snap.inner_diameter_mm == 4.699
    assert pump.ul_per_step == pytest.approx(math.pi * (4.699 / 2) ** 2 * 0.8 / 3200)
    second_ul = (snap.steps - first.steps) * pump.ul_per_step
    assert snap.delivered_ul == pytest.approx(first.delivered_ul + second_ul, rel=1e-14)
    assert abs(snap.delivered_ul - 20.0) < 0.05
    assert snap.delivered_ul + snap.remaining_ul == pytest.approx(10_000.0, rel=1e-14)


def test_load_refills_only_when_idle() -> None:
    pump = running_pump(360.0)
    with pytest.raises(ValueError, match="while the pump is running"):
        pump.load(10.0, 5000.0)
    pump.stop(10.0)
    pump.load(20.0, 5000.0)
    snap = pump.snapshot(20.0)
    assert snap.remaining_ul == 5000.0
    assert abs(snap.delivered_ul - 1.0) < pump.ul_per_step  # history is kept


def _raises(match: str, action: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match=match):
        action()


def test_invalid_inputs_raise_clear_messages() -> None:
    pump = make_pump()
    _raises("diameter must be within", lambda: pump.set_diameter(0.0, 0.05))
    _raises("diameter must be within", lambda: pump.set_diameter(0.0, 51.0))
    _raises("diameter must be within", lambda: pump.set_diameter(0.0, math.nan))
    _raises("finite number >= 0", lambda: pump.set_rate(0.0, -1.0))
    _raises("finite number >= 0", lambda: pump.set_rate(0.0, math.inf))
    _raises("finite number >= 0", lambda: pump.set_rate(0.0, math.nan))
    _raises("above the pump maximum", lambda: pump.set_rate(0.0, 100_001.0))
    _raises("volume limit", lambda: pump.set_volume_limit(0.0, -1.0))
    _raises("loaded volume must be within", lambda: pump.load(0.0, 10_001.0))
    _raises("rate is 0", lambda: pump.start(0.0))
    pump.set_rate(0.0, 10.0)
    pump.start(0.0)
    _raises("diameter while the pump is running", lambda: pump.set_diameter(1.0, 10.0))
    _raises(
        "direction while the pump is running", lambda: pump.set_direction(1.0, Direction.WITHDRAW)
    )
    _raises("positive finite", lambda: make_pump(syringe_volume_ul=0.0))
    _raises("positive finite", lambda: make_pump(max_rate_ul_per_h=-1.0))
    _raises("loaded volume", lambda: make_pump(loaded_volume_ul=-1.0))
    _raises("lead_screw_pitch_mm", lambda: MechanicsSpec(lead_screw_pitch_mm=0.0))
    _raises("microsteps", lambda: MechanicsSpec(microsteps=0))


def test_time_going_backwards_raises_everywhere() -> None:
    pump = running_pump(10.0, t_s=100.0)
    calls: list[Callable[[], object]] = [
        lambda: pump.advance(99.0),
        lambda: pump.snapshot(99.0),
        lambda: pump.set_rate(99.0, 1.0),
        lambda: pump.set_volume_limit(99.0, 1.0),
        lambda: pump.stop(99.0),
        lambda: pump.start(99.0),
        lambda: pump.set_stalled(99.0, True),
        lambda: pump.advance(math.nan),
    ]
    for call in calls:
        _raises("time", call)
    assert pump.snapshot(100.0).state is PumpRunState.RUNNING  # nothing changed


# ---- property test -----------------------------------------------------------------------
OPS = ("rate", "direction", "limit", "start", "stop", "stall", "unstall", "load", "diameter")


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[float, str, float]]:
    n = draw(st.integers(min_value=1, max_value=25))
    out: list[tuple[float, str, float]] = []
    for _ in range(n):
        dt = draw(st.one_of(st.just(0.0), st.floats(0.0, 5e5, allow_nan=False)))
        op = draw(st.sampled_from(OPS))
        value = draw(
            st.one_of(
                st.floats(-10.0, 2e5, allow_nan=False),
                st.sampled_from([0.0, 0.01, 1.0, 10.0, 500.0, 3000.0, 100_000.0]),
            )
        )
        out.append((dt, op, value))
    return out


def apply_op(pump: SyringePump, op: str, t: float, value: float) -> None:
    if op == "rate":
        pump.set_rate(t, value)
    elif op == "direction":
        pump.set_direction(t, Direction.WITHDRAW if value > 100 else Direction.INFUSE)
    elif op == "limit":
        pump.set_volume_limit(t, value)
    elif op == "start":
        pump.start(t)
    elif op == "stop":
        pump.stop(t)
    elif op in ("stall", "unstall"):
        pump.set_stalled(t, op == "stall")
    elif op == "load":
        pump.load(t, value)
    else:
        pump.set_diameter(t, value)


@settings(max_examples=150, deadline=None)
@given(operations())
def test_random_operations_keep_delivery_consistent_with_flow(
    ops: list[tuple[float, str, float]],
) -> None:
    pump = make_pump(syringe_volume_ul=2000.0, loaded_volume_ul=1000.0)
    t = 0.0
    prev = pump.snapshot(t)
    total_loaded = 1000.0  # delivered + remaining == total loaded, adjusted at each load
    for dt, op, value in ops:
        flow_ul_per_s = pump.flow_ul_per_s()
        t += dt
        snap = pump.snapshot(t)
        # Between two calls the flow was constant until (possibly) a self-stop.
        moved = snap.delivered_ul - prev.delivered_ul
        ups = pump.ul_per_step
        if snap.state is prev.state:
            assert abs(moved - flow_ul_per_s * dt) <= ups * (1 + 1e-9) + 1e-9 * abs(moved)
        else:
            assert prev.state is PumpRunState.RUNNING and snap.state is PumpRunState.IDLE
            assert moved * flow_ul_per_s >= 0.0
            assert abs(moved) <= abs(flow_ul_per_s) * dt + ups * (1 + 1e-9)
            full = 2000.0 - snap.remaining_ul < ups
            assert snap.limit_reached or snap.remaining_ul == 0.0 or full
        # Conserved, except the sub-step dead volume of an empty syringe.
        conserved = snap.delivered_ul + snap.remaining_ul
        if snap.remaining_ul == 0.0:
            assert -1e-6 <= total_loaded - conserved < ups
        else:
            assert conserved == pytest.approx(total_loaded, abs=1e-6)
        assert 0.0 <= snap.remaining_ul <= 2000.0 + 1e-9
        event = pump.next_event_s()
        assert event is None or event > t

        motor_on = snap.state is not PumpRunState.IDLE
        expect_error = {
            "rate": not (0.0 <= value <= 100_000.0),
            "direction": motor_on,
            "limit": value < 0.0,
            "start": not motor_on and snap.rate_ul_per_h == 0.0,
            "stop": False,
            "stall": False,
            "unstall": False,
            "load": motor_on or not (0.0 <= value <= 2000.0),
            "diameter": motor_on or not (0.1 <= value <= 50.0),
        }[op]
        if expect_error:
            with pytest.raises(ValueError):
                apply_op(pump, op, t, value)
        else:
            apply_op(pump, op, t, value)
            if op == "load":
                total_loaded = snap.delivered_ul + value
        prev = pump.snapshot(t)
