"""Dosing controller core: therapy state machine (invariant 2) and dose accounting (invariant 6)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pump_rig.core.dosing import (
    INVALID_DEVICE_VOLUME,
    LOW_RESERVOIR,
    RESERVOIR_EMPTY,
    VOLUME_COUNTER_RESET,
    AlarmEvent,
    AlarmSeverity,
    DosingCore,
    TherapyError,
    TherapyState,
)
from pump_rig.core.program import TherapyProgram, parse_program
from pump_rig.core.pump_types import SECONDS_PER_DAY, SECONDS_PER_HOUR, PumpAction

CRITICAL = int(AlarmSeverity.CRITICAL)
WARNING = int(AlarmSeverity.WARNING)
INFO = int(AlarmSeverity.INFO)
T0 = 1000.0  # ROS time need not start at zero


def make_program(
    *,
    name: str = "baclofen-constant",
    concentration: float = 500.0,
    daily_dose: float = 240.0,
    volume: float = 18000.0,
    capacity: float = 20000.0,
    low: float = 2000.0,
) -> TherapyProgram:
    return parse_program(
        f"""
name: {name}
drug: baclofen
concentration_ug_per_ml: {concentration!r}
mode: continuous
daily_dose_ug: {daily_dose!r}
reservoir: {{capacity_ul: {capacity!r}, volume_ul: {volume!r}, low_alarm_ul: {low!r}}}
"""
    )


PROGRAM = make_program()  # 20 µL/h, 1 µL = 0.5 µg


def running_core(t_s: float = T0, device_ul: float = 0.0) -> DosingCore:
    core = DosingCore(t_s=t_s, program=PROGRAM)
    core.on_device_volume(t_s, device_ul)  # baseline
    return core


def state_of(core: DosingCore) -> TherapyState:
    # a call, so mypy does not narrow the property between steps
    return core.state


def codes(events: list[AlarmEvent]) -> list[tuple[str, bool]]:
    return [(e.code, e.active) for e in events]


# --- state machine -----------------------------------------------------------------------------


def test_no_program_stops_and_refuses_resume() -> None:
    core = DosingCore(t_s=T0)
    assert state_of(core) is TherapyState.NO_PROGRAM
    intent = core.command(T0)
    assert intent.action is PumpAction.STOP
    assert intent.flow_rate_ul_per_h == 0.0
    assert "no program" in intent.reason
    with pytest.raises(TherapyError, match="no program"):
        core.resume(T0)
    snap = core.snapshot(T0)
    assert snap.therapy_state is TherapyState.NO_PROGRAM
    assert (snap.program, snap.drug, snap.basal_rate_ul_per_h) == ("", "", 0.0)


def test_program_at_start_runs_at_basal_rate() -> None:
    core = DosingCore(t_s=T0, program=PROGRAM)
    assert state_of(core) is TherapyState.RUNNING
    intent = core.command(T0 + 1)
    assert intent.action is PumpAction.INFUSE
    assert intent.flow_rate_ul_per_h == pytest.approx(20.0)
    assert intent.volume_limit_ul == 0.0  # basal: no per-command limit
    snap = core.snapshot(T0)
    assert snap.therapy_state is TherapyState.RUNNING
    assert snap.program == "baclofen-constant"
    assert snap.drug == "baclofen"
    assert snap.concentration_ug_per_ml == 500.0
    assert snap.reservoir_volume_ul == 18000.0
    assert snap.boluses_24h == 0
    assert snap.active_alarms == ()


def test_first_program_later_starts_therapy() -> None:
    core = DosingCore(t_s=T0)
    core.set_program(T0 + 5, PROGRAM)
    assert state_of(core) is TherapyState.RUNNING


def test_suspend_and_resume() -> None:
    core = running_core()
    core.suspend(T0 + 10, "operator break")
    assert state_of(core) is TherapyState.SUSPENDED
    intent = core.command(T0 + 11)
    assert intent.action is PumpAction.STOP
    assert "operator break" in intent.reason
    core.suspend(T0 + 12)  # idempotent
    core.resume(T0 + 20)
    assert state_of(core) is TherapyState.RUNNING
    core.resume(T0 + 21)  # resuming while running is harmless
    assert core.command(T0 + 21).action is PumpAction.INFUSE


def test_invariant_2_critical_alarm_stops_clear_alone_does_not_restart() -> None:
    core = running_core()
    core.on_alarm(T0 + 1, "OCCLUSION", CRITICAL, True, "/rig/pressure_monitor")
    assert state_of(core) is TherapyState.ALARM
    intent = core.command(T0 + 1)
    assert intent.action is PumpAction.STOP
    assert "OCCLUSION" in intent.reason

    with pytest.raises(TherapyError, match="OCCLUSION"):
        core.resume(T0 + 2)  # the critical alarm is still active
    assert state_of(core) is TherapyState.ALARM

    # The condition ends: still ALARM (latched), resume still refused.
    core.on_alarm(T0 + 3, "OCCLUSION", CRITICAL, False, "/rig/pressure_monitor")
    assert state_of(core) is TherapyState.ALARM
    assert core.command(T0 + 3).action is PumpAction.STOP
    with pytest.raises(TherapyError, match="clear alarms first"):
        core.resume(T0 + 4)

    # Clear alone: SUSPENDED, still stopped.
    core.clear_alarms(T0 + 5)
    assert state_of(core) is TherapyState.SUSPENDED
    assert core.command(T0 + 5).action is PumpAction.STOP
    assert "resume" in core.command(T0 + 5).reason

    # Clear + resume: running again.
    core.resume(T0 + 6)
    assert state_of(core) is TherapyState.RUNNING
    assert core.command(T0 + 6).action is PumpAction.INFUSE


def test_critical_alarm_from_any_source_and_any_code() -> None:
    for code, source in [("ESTOP", "motor_driver"), ("SOMETHING_NEW", "x"), ("LEAK", "occlusion")]:
        core = running_core()
        core.on_alarm(T0 + 1, code, CRITICAL, True, source)
        assert state_of(core) is TherapyState.ALARM, code
        assert core.command(T0 + 1).action is PumpAction.STOP


def test_unknown_high_severity_counts_as_critical() -> None:
    core = running_core()
    core.on_alarm(T0 + 1, "WEIRD", 7, True, "x")
    assert state_of(core) is TherapyState.ALARM


def test_warning_and_info_alarms_do_not_stop() -> None:
    core = running_core()
    core.on_alarm(T0 + 1, "OCCLUSION", WARNING, True, "pressure_monitor")
    core.on_alarm(T0 + 1, "NOTE", INFO, True, "x")
    assert state_of(core) is TherapyState.RUNNING
    assert core.snapshot(T0 + 1).active_alarms == ("OCCLUSION",)
    core.on_alarm(T0 + 2, "OCCLUSION", WARNING, False, "pressure_monitor")
    assert core.snapshot(T0 + 2).active_alarms == ()


def test_alarm_sources_are_tracked_separately() -> None:
    core = running_core()
    core.on_alarm(T0 + 1, "SENSOR_FAULT", WARNING, True, "a")
    core.on_alarm(T0 + 1, "SENSOR_FAULT", WARNING, True, "b")
    core.on_alarm(T0 + 2, "SENSOR_FAULT", WARNING, False, "a")
    assert core.snapshot(T0 + 2).active_alarms == ("SENSOR_FAULT",)


def test_critical_alarm_reraised_after_clear_latches_again() -> None:
    core = running_core()
    core.on_alarm(T0 + 1, "OCCLUSION", CRITICAL, True, "occlusion")
    core.clear_alarms(T0 + 2)
    core.on_alarm(T0 + 3, "OCCLUSION", CRITICAL, True, "occlusion")  # still occluded
    assert state_of(core) is TherapyState.ALARM
    with pytest.raises(TherapyError):
        core.resume(T0 + 4)


def test_suspend_during_alarm_keeps_alarm_and_clear_needs_resume() -> None:
    core = running_core()
    core.on_alarm(T0 + 1, "MOTOR_STALL", CRITICAL, True, "motor_driver")
    core.suspend(T0 + 2, "operator")
    assert state_of(core) is TherapyState.ALARM
    core.clear_alarms(T0 + 3)
    assert state_of(core) is TherapyState.SUSPENDED


def test_clear_alarms_without_alarm_does_not_resume_a_suspension() -> None:
    core = running_core()
    core.suspend(T0 + 1)
    core.clear_alarms(T0 + 2)
    assert state_of(core) is TherapyState.SUSPENDED


def test_own_alarm_codes_echoed_back_are_ignored() -> None:
    core = running_core()
    core.on_alarm(T0 + 1, RESERVOIR_EMPTY, CRITICAL, True, "/rig/dosing_controller")
    assert state_of(core) is TherapyState.RUNNING


def test_alarm_before_program_keeps_therapy_stopped_after_program() -> None:
    core = DosingCore(t_s=T0)
    core.on_alarm(T0 + 1, "ESTOP", CRITICAL, True, "motor_driver")
    core.set_program(T0 + 2, PROGRAM)
    assert state_of(core) is TherapyState.ALARM
    core.clear_alarms(T0 + 3)
    assert state_of(core) is TherapyState.SUSPENDED
    core.resume(T0 + 4)
    assert state_of(core) is TherapyState.RUNNING


def test_set_program_keeps_suspended_and_alarm_states() -> None:
    other = make_program(name="higher", daily_dose=480.0)
    core = running_core()
    core.suspend(T0 + 1)
    core.set_program(T0 + 2, other)
    assert state_of(core) is TherapyState.SUSPENDED
    core.resume(T0 + 3)
    assert core.command(T0 + 3).flow_rate_ul_per_h == pytest.approx(40.0)

    core.on_alarm(T0 + 4, "OCCLUSION", CRITICAL, True, "occlusion")
    core.set_program(T0 + 5, PROGRAM)
    assert state_of(core) is TherapyState.ALARM
    assert core.command(T0 + 5).action is PumpAction.STOP


def test_set_program_while_running_changes_rate_and_keeps_history() -> None:
    core = running_core()
    core.on_device_volume(T0 + 100, 10.0)
    before = core.snapshot(T0 + 100)
    core.set_program(T0 + 100, make_program(name="double", daily_dose=480.0))
    after = core.snapshot(T0 + 100)
    assert state_of(core) is TherapyState.RUNNING
    assert core.command(T0 + 100).flow_rate_ul_per_h == pytest.approx(40.0)
    assert after.delivered_volume_ul == before.delivered_volume_ul == 10.0
    assert after.delivered_dose_24h_ug == before.delivered_dose_24h_ug == pytest.approx(5.0)
    assert after.program == "double"


# --- accounting from device volume only (invariant 6) ------------------------------------------


def test_first_device_volume_only_sets_baseline() -> None:
    core = DosingCore(t_s=T0, program=PROGRAM)
    core.on_device_volume(T0, 1234.0)  # the device had delivered before we started
    snap = core.snapshot(T0)
    assert snap.delivered_volume_ul == 0.0
    assert snap.delivered_dose_24h_ug == 0.0
    assert snap.reservoir_volume_ul == 18000.0
    core.on_device_volume(T0 + 60, 1240.0)
    snap = core.snapshot(T0 + 60)
    assert snap.delivered_volume_ul == pytest.approx(6.0)
    assert snap.delivered_dose_24h_ug == pytest.approx(6.0 / 1000 * 500)
    assert snap.reservoir_volume_ul == pytest.approx(18000.0 - 6.0)


def test_accounting_ignores_intent() -> None:
    core = running_core()
    for k in range(1, 25):  # 24 h of RUNNING with INFUSE commands, device reports nothing
        core.command(T0 + k * SECONDS_PER_HOUR)
        core.on_device_volume(T0 + k * SECONDS_PER_HOUR, 0.0)
    snap = core.snapshot(T0 + 24 * SECONDS_PER_HOUR)
    assert snap.delivered_volume_ul == 0.0
    assert snap.delivered_dose_24h_ug == 0.0
    assert snap.reservoir_volume_ul == 18000.0
    # ...while the yardstick shows what should have gone in.
    assert snap.prescribed_volume_ul == pytest.approx(480.0)


def test_volume_delivered_while_stopped_still_counts() -> None:
    core = running_core()
    core.suspend(T0 + 1)
    core.on_device_volume(T0 + 2, 3.0)  # the device says it delivered: it did
    assert core.snapshot(T0 + 2).delivered_volume_ul == 3.0


def test_dose_uses_concentration_at_time_of_delivery() -> None:
    core = running_core()
    core.on_device_volume(T0 + 10, 10.0)  # 10 µL at 500 µg/mL = 5 µg
    core.set_program(T0 + 10, make_program(concentration=2000.0, daily_dose=960.0))
    core.on_device_volume(T0 + 20, 12.0)  # 2 µL at 2000 µg/mL = 4 µg
    assert core.snapshot(T0 + 20).delivered_dose_24h_ug == pytest.approx(9.0)


def test_counter_reset_rebaselines_without_counting() -> None:
    core = running_core(device_ul=100.0)
    core.on_device_volume(T0 + 10, 110.0)
    core.drain_alarm_events()
    core.on_device_volume(T0 + 20, 2.0)  # device restarted, counter from 0
    snap = core.snapshot(T0 + 20)
    assert snap.delivered_volume_ul == pytest.approx(10.0)
    assert VOLUME_COUNTER_RESET in snap.active_alarms
    events = core.drain_alarm_events()
    assert codes(events) == [(VOLUME_COUNTER_RESET, True)]
    assert events[0].severity == WARNING
    core.on_device_volume(T0 + 30, 5.0)
    assert core.snapshot(T0 + 30).delivered_volume_ul == pytest.approx(13.0)
    core.clear_alarms(T0 + 40)
    assert codes(core.drain_alarm_events()) == [(VOLUME_COUNTER_RESET, False)]
    assert state_of(core) is TherapyState.RUNNING  # a warning never stopped therapy


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_device_volume_ignored_with_alarm(bad: float) -> None:
    core = running_core(device_ul=50.0)
    core.on_device_volume(T0 + 10, bad)
    events = core.drain_alarm_events()
    assert codes(events) == [(INVALID_DEVICE_VOLUME, True)]
    assert core.snapshot(T0 + 10).delivered_volume_ul == 0.0
    core.on_device_volume(T0 + 11, bad)
    assert core.drain_alarm_events() == []  # raised once, not per sample
    core.on_device_volume(T0 + 20, 58.0)  # baseline was kept: all 8 µL count
    assert core.snapshot(T0 + 20).delivered_volume_ul == pytest.approx(8.0)
    assert codes(core.drain_alarm_events()) == [(INVALID_DEVICE_VOLUME, False)]
    assert state_of(core) is TherapyState.RUNNING


def test_volume_without_program_counts_volume_not_dose() -> None:
    core = DosingCore(t_s=T0)
    core.on_device_volume(T0, 0.0)
    core.on_device_volume(T0 + 1, 4.0)
    snap = core.snapshot(T0 + 1)
    assert snap.delivered_volume_ul == 4.0
    assert snap.delivered_dose_24h_ug == 0.0


# --- rolling 24 h window -------------------------------------------------------------------------


def test_24h_window_is_exact() -> None:
    core = running_core()
    t_a, t_b = T0 + 100.0, T0 + 5000.0
    core.on_device_volume(t_a, 2.0)  # 1 µg at t_a
    core.on_device_volume(t_b, 6.0)  # 2 µg at t_b
    day = SECONDS_PER_DAY
    assert core.snapshot(t_a + day - 1e-6).delivered_dose_24h_ug == pytest.approx(3.0)
    assert core.snapshot(t_a + day).delivered_dose_24h_ug == pytest.approx(2.0)
    assert core.snapshot(t_b + day - 1e-6).delivered_dose_24h_ug == pytest.approx(2.0)
    assert core.snapshot(t_b + day).delivered_dose_24h_ug == 0.0
    # delivered_volume_ul is cumulative, not windowed
    assert core.snapshot(t_b + day).delivered_volume_ul == pytest.approx(6.0)


def test_24h_window_over_many_days_does_not_drift() -> None:
    core = running_core()
    device = 0.0
    t = T0
    for _ in range(3 * 24 * 60):  # three days, one report a minute, 1/3 µL each
        t += 60.0
        device += 1.0 / 3.0
        core.on_device_volume(t, device)
    # the last 24 h hold exactly 1440 reports of 1/3 µL at 0.5 µg/µL
    assert core.snapshot(t).delivered_dose_24h_ug == pytest.approx(1440 / 3 * 0.5, rel=1e-9)
    assert core.snapshot(t + SECONDS_PER_DAY).delivered_dose_24h_ug == 0.0


# --- prescribed volume ---------------------------------------------------------------------------


def test_prescribed_volume_integrates_basal_rate_while_program_loaded() -> None:
    core = DosingCore(t_s=T0)
    assert core.snapshot(T0 + 3600).prescribed_volume_ul == 0.0  # no program: nothing
    core.set_program(T0 + 3600, PROGRAM)  # 20 µL/h
    core.suspend(T0 + 2 * 3600)
    core.on_alarm(T0 + 3 * 3600, "OCCLUSION", CRITICAL, True, "x")
    assert core.snapshot(T0 + 4 * 3600).prescribed_volume_ul == pytest.approx(60.0)
    core.set_program(T0 + 4 * 3600, make_program(daily_dose=480.0))  # 40 µL/h
    assert core.snapshot(T0 + 5 * 3600).prescribed_volume_ul == pytest.approx(100.0)


def test_time_going_back_integrates_nothing_negative() -> None:
    core = running_core()
    core.snapshot(T0 + 3600)
    assert core.snapshot(T0).prescribed_volume_ul == pytest.approx(20.0)


# --- reservoir ---------------------------------------------------------------------------------


def test_reservoir_low_then_empty_then_refilled_by_program() -> None:
    program = make_program(volume=100.0, capacity=1000.0, low=30.0)
    core = DosingCore(t_s=T0, program=program)
    core.on_device_volume(T0, 0.0)
    core.on_device_volume(T0 + 1, 60.0)
    assert core.drain_alarm_events() == []
    core.on_device_volume(T0 + 2, 75.0)  # 25 µL left <= 30
    events = core.drain_alarm_events()
    assert codes(events) == [(LOW_RESERVOIR, True)]
    assert events[0].severity == WARNING
    assert state_of(core) is TherapyState.RUNNING

    core.on_device_volume(T0 + 3, 101.0)  # device overshoots: reservoir clamps at 0
    events = core.drain_alarm_events()
    assert codes(events) == [(RESERVOIR_EMPTY, True)]
    assert events[0].severity == CRITICAL
    assert state_of(core) is TherapyState.EMPTY
    assert core.command(T0 + 3).action is PumpAction.STOP
    snap = core.snapshot(T0 + 3)
    assert snap.reservoir_volume_ul == 0.0
    assert snap.delivered_volume_ul == pytest.approx(101.0)
    assert set(snap.active_alarms) == {LOW_RESERVOIR, RESERVOIR_EMPTY}
    with pytest.raises(TherapyError, match="reservoir empty"):
        core.resume(T0 + 4)
    core.clear_alarms(T0 + 4)  # a condition alarm stays while its condition holds
    assert state_of(core) is TherapyState.EMPTY

    core.set_program(T0 + 5, make_program(volume=900.0, capacity=1000.0, low=30.0))
    assert codes(core.drain_alarm_events()) == [(RESERVOIR_EMPTY, False), (LOW_RESERVOIR, False)]
    assert state_of(core) is TherapyState.SUSPENDED  # a refill never restarts delivery by itself
    core.resume(T0 + 6)
    assert state_of(core) is TherapyState.RUNNING
    assert core.snapshot(T0 + 6).reservoir_volume_ul == 900.0


def test_program_loaded_below_low_alarm_warns_at_once() -> None:
    core = DosingCore(t_s=T0, program=make_program(volume=1000.0))
    assert codes(core.drain_alarm_events()) == [(LOW_RESERVOIR, True)]
    assert state_of(core) is TherapyState.RUNNING
    assert core.drain_alarm_events() == []


# --- property: accounting and STOP-when-not-RUNNING over random event sequences ---------------

_PROGRAMS = [
    make_program(
        name="a", concentration=500.0, daily_dose=240.0, volume=50.0, capacity=100.0, low=10.0
    ),
    make_program(
        name="b", concentration=2000.0, daily_dose=960.0, volume=80.0, capacity=100.0, low=10.0
    ),
    make_program(
        name="c", concentration=50.0, daily_dose=10.0, volume=100.0, capacity=100.0, low=10.0
    ),
]

_event = st.one_of(
    st.tuples(st.just("volume"), st.floats(min_value=0.0, max_value=20.0)),
    st.tuples(st.just("reset"), st.floats(min_value=0.0, max_value=5.0)),
    st.tuples(st.just("bad_volume"), st.sampled_from([math.nan, math.inf, -math.inf])),
    st.tuples(st.just("suspend"), st.none()),
    st.tuples(st.just("resume"), st.none()),
    st.tuples(st.just("clear"), st.none()),
    st.tuples(st.just("program"), st.integers(min_value=0, max_value=len(_PROGRAMS) - 1)),
    st.tuples(
        st.just("alarm"),
        st.tuples(
            st.sampled_from(["OCCLUSION", "ESTOP", "LEAK"]),
            st.sampled_from([INFO, WARNING, CRITICAL]),
            st.booleans(),
        ),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    start_with_program=st.booleans(),
    steps=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=4 * SECONDS_PER_HOUR), _event), max_size=60
    ),
)
def test_property_dose_from_device_deltas_and_stop_unless_running(
    start_with_program: bool, steps: list[tuple[float, tuple[str, object]]]
) -> None:
    t = T0
    program = _PROGRAMS[0] if start_with_program else None
    core = DosingCore(t_s=t, program=program)
    device: float | None = None
    increments: list[tuple[float, float]] = []  # (t, dose) the model expects
    delivered_ul = 0.0
    latched = False

    for dt, (kind, arg) in steps:
        t += dt
        if kind == "volume":
            assert isinstance(arg, float)
            if device is not None:
                delivered_ul += arg
                conc = program.concentration_ug_per_ml if program else 0.0
                if arg > 0:
                    increments.append((t, arg / 1000.0 * conc))
                device += arg
            else:
                device = arg
            core.on_device_volume(t, device)
        elif kind == "reset":
            assert isinstance(arg, float)
            if device is not None and arg < device:
                device = arg  # a decrease: re-baseline, nothing counted
                core.on_device_volume(t, device)
        elif kind == "bad_volume":
            assert isinstance(arg, float)
            core.on_device_volume(t, arg)
        elif kind == "suspend":
            core.suspend(t, "test")
            assert state_of(core) is not TherapyState.RUNNING
        elif kind == "resume":
            try:
                core.resume(t)
            except TherapyError:
                assert state_of(core) is not TherapyState.RUNNING
            else:
                assert not latched
                assert state_of(core) is TherapyState.RUNNING
        elif kind == "clear":
            core.clear_alarms(t)
            if latched:
                assert state_of(core) is not TherapyState.RUNNING  # invariant 2: never by itself
            latched = False
        elif kind == "program":
            assert isinstance(arg, int)
            program = _PROGRAMS[arg]
            core.set_program(t, program)
        elif kind == "alarm":
            assert isinstance(arg, tuple)
            code, severity, active = arg
            core.on_alarm(t, code, severity, active, "test")
            if active and severity == CRITICAL:
                latched = True

        state = state_of(core)
        intent = core.command(t)
        if state is TherapyState.RUNNING:
            assert intent.action is PumpAction.INFUSE
            assert program is not None
            assert intent.flow_rate_ul_per_h == program.basal_rate_ul_per_h
        else:
            assert intent.action is PumpAction.STOP
            assert intent.flow_rate_ul_per_h == 0.0
        if latched:
            assert state is TherapyState.ALARM

        snap = core.snapshot(t)
        assert snap.therapy_state is state
        assert snap.delivered_volume_ul == pytest.approx(delivered_ul, abs=1e-9)
        expected_dose = math.fsum(d for ti, d in increments if t < ti + SECONDS_PER_DAY)
        assert snap.delivered_dose_24h_ug == pytest.approx(expected_dose, abs=1e-9)
        assert snap.reservoir_volume_ul >= 0.0
