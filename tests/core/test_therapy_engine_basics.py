"""Therapy engine basics: state machine (invariant 2) and dose accounting (invariant 6).

Ported from the tests of the old ``DosingCore``. What changed with the engine, and is tested
here as the new behaviour: a later program no longer sets the reservoir volume (refills do) and
must match the reservoir's drug and concentration; raising the daily dose past the drug's
titration limit needs an explicit override with a reason; ``command()`` returns the same object
while nothing needs re-sending; an empty reservoir needs a refill and a resume; dose is what
leaves the catheter tip; the rolling 24 h window works on delivery buckets, each counted until
24 h after its end; the prescribed volume grows only while therapy is RUNNING.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pump_rig.core.program import TherapyProgram, default_drug_library, parse_program
from pump_rig.core.pump_types import SECONDS_PER_DAY, SECONDS_PER_HOUR, PumpAction
from pump_rig.core.therapy_engine import (
    DOSE_LIMIT,
    INVALID_DEVICE_VOLUME,
    LOW_RESERVOIR,
    RESERVOIR_EMPTY,
    UNDER_DELIVERY,
    VOLUME_COUNTER_RESET,
    AlarmEvent,
    AlarmSeverity,
    CommandIntent,
    EngineConfig,
    TherapyEngine,
    TherapyError,
    TherapyState,
)
from tests.core.therapy_fixtures import full_syringe

CRITICAL = int(AlarmSeverity.CRITICAL)
WARNING = int(AlarmSeverity.WARNING)
INFO = int(AlarmSeverity.INFO)
T0 = 1000.0  # ROS time need not start at zero
LIB = default_drug_library()
CONFIG = EngineConfig()  # 200 µL primed line, 60 s delivery buckets


def make_program(
    *,
    name: str = "baclofen-constant",
    drug: str = "baclofen",
    concentration: float = 500.0,
    daily_dose: float = 240.0,
    volume: float = 18000.0,
    capacity: float = 20000.0,
    low: float = 2000.0,
    max_daily: float | None = None,
) -> TherapyProgram:
    limit = "" if max_daily is None else f"max_daily_dose_ug: {max_daily!r}\n"
    return parse_program(
        f"""
name: {name}
drug: {drug}
concentration_ug_per_ml: {concentration!r}
mode: continuous
daily_dose_ug: {daily_dose!r}
{limit}reservoir: {{capacity_ul: {capacity!r}, volume_ul: {volume!r}, low_alarm_ul: {low!r}}}
"""
    )


PROGRAM = make_program()  # 20 µL/h, 1 µL = 0.5 µg


def new_engine(t_s: float = T0, config: EngineConfig = CONFIG) -> TherapyEngine:
    return TherapyEngine(t_s=t_s, library=LIB, config=config)


def running_engine(
    t_s: float = T0,
    device_ul: float = 0.0,
    program: TherapyProgram = PROGRAM,
    config: EngineConfig = CONFIG,
) -> TherapyEngine:
    engine = new_engine(t_s, config)
    engine.set_program(t_s, program)
    engine.on_device_volume(t_s, device_ul)  # baseline
    return engine


def state_of(engine: TherapyEngine) -> TherapyState:
    # a call, so mypy does not narrow the property between steps
    return engine.state


def codes(events: list[AlarmEvent]) -> list[tuple[str, bool]]:
    return [(e.code, e.active) for e in events]


# --- state machine -----------------------------------------------------------------------------


def test_no_program_stops_and_refuses_resume() -> None:
    engine = new_engine()
    assert state_of(engine) is TherapyState.NO_PROGRAM
    intent = engine.command(T0)
    assert intent.action is PumpAction.STOP
    assert intent.flow_rate_ul_per_h == 0.0
    assert "no program" in intent.reason
    with pytest.raises(TherapyError, match="no program"):
        engine.resume(T0)
    snap = engine.snapshot(T0)
    assert snap.therapy_state is TherapyState.NO_PROGRAM
    assert (snap.program, snap.drug, snap.basal_rate_ul_per_h) == ("", "", 0.0)
    assert (snap.daily_limit_ug, snap.reservoir_volume_ul, snap.next_change_s) == (0.0, 0.0, None)


def test_first_program_fills_the_reservoir_and_starts_therapy() -> None:
    engine = new_engine()
    message = engine.set_program(T0 + 5, PROGRAM)
    assert "reservoir filled with 18000 µL" in message
    assert state_of(engine) is TherapyState.RUNNING
    intent = engine.command(T0 + 6)
    assert intent.action is PumpAction.INFUSE
    assert intent.flow_rate_ul_per_h == pytest.approx(20.0, rel=1e-12)
    assert intent.volume_limit_ul == 0.0  # basal far from the daily maximum: no device limit
    snap = engine.snapshot(T0 + 6)
    assert snap.therapy_state is TherapyState.RUNNING
    assert snap.program == "baclofen-constant"
    assert snap.drug == "baclofen"
    assert snap.concentration_ug_per_ml == 500.0
    assert snap.basal_rate_ul_per_h == pytest.approx(20.0, rel=1e-12)
    assert snap.reservoir_volume_ul == 18000.0
    assert snap.reservoir_capacity_ul == 20000.0
    assert snap.boluses_24h == 0
    assert snap.active_alarms == ()
    assert snap.daily_limit_ug == 1000.0  # baclofen's maximum (config/drugs.yaml)
    assert snap.tip_concentration_ug_per_ml == 500.0  # a primed line holds the first fill
    assert snap.next_change_s is None  # a constant rate never changes
    assert snap.active_bolus == ""
    assert snap.detail == "basal"
    # 16000 µL above the low alarm at 480 µL/day
    assert snap.days_to_refill == pytest.approx(16000.0 / 480.0, rel=1e-12)
    assert snap.next_refill_s == pytest.approx(T0 + 6 + snap.days_to_refill * SECONDS_PER_DAY)


def test_program_limit_lower_than_the_drug_limit_is_in_force() -> None:
    engine = running_engine(program=make_program(max_daily=400.0))
    assert engine.snapshot(T0).daily_limit_ug == 400.0
    assert engine.daily_limit_ug() == 400.0


def test_command_returns_the_same_intent_while_nothing_needs_resending() -> None:
    engine = running_engine()
    first = engine.command(T0 + 1)
    assert engine.command(T0 + 2) is first
    engine.on_device_volume(T0 + 60, 1.0 / 3.0)
    assert engine.command(T0 + 3600) is first

    engine.suspend(T0 + 3601)
    stop = engine.command(T0 + 3601)
    assert stop.action is PumpAction.STOP
    assert engine.command(T0 + 3602) is stop

    engine.resume(T0 + 3603)
    again = engine.command(T0 + 3603)
    assert again == first  # the same command...
    assert again is not first  # ...but a new one to send: the pump was stopped in between

    engine.set_program(T0 + 3604, make_program(name="lower", daily_dose=120.0))
    lower = engine.command(T0 + 3604)
    assert lower is not again
    assert lower.flow_rate_ul_per_h == pytest.approx(10.0, rel=1e-12)
    assert engine.command(T0 + 3605) is lower


def test_suspend_and_resume() -> None:
    engine = running_engine()
    engine.suspend(T0 + 10, "operator break")
    assert state_of(engine) is TherapyState.SUSPENDED
    intent = engine.command(T0 + 11)
    assert intent.action is PumpAction.STOP
    assert "operator break" in intent.reason
    engine.suspend(T0 + 12)  # idempotent
    assert state_of(engine) is TherapyState.SUSPENDED
    engine.resume(T0 + 20)
    assert state_of(engine) is TherapyState.RUNNING
    engine.resume(T0 + 21)  # resuming while running is harmless
    assert state_of(engine) is TherapyState.RUNNING
    assert engine.command(T0 + 21).action is PumpAction.INFUSE


def test_invariant_2_critical_alarm_stops_clear_alone_does_not_restart() -> None:
    engine = running_engine()
    engine.on_alarm(T0 + 1, "OCCLUSION", CRITICAL, True, "/rig/pressure_monitor")
    assert state_of(engine) is TherapyState.ALARM
    intent = engine.command(T0 + 1)
    assert intent.action is PumpAction.STOP
    assert "OCCLUSION" in intent.reason

    with pytest.raises(TherapyError, match="OCCLUSION"):
        engine.resume(T0 + 2)  # the critical alarm is still active
    assert state_of(engine) is TherapyState.ALARM

    # The condition ends: still ALARM (latched), resume still refused.
    engine.on_alarm(T0 + 3, "OCCLUSION", CRITICAL, False, "/rig/pressure_monitor")
    assert state_of(engine) is TherapyState.ALARM
    assert engine.command(T0 + 3).action is PumpAction.STOP
    with pytest.raises(TherapyError, match="clear alarms first"):
        engine.resume(T0 + 4)

    # Clear alone: SUSPENDED, still stopped.
    engine.clear_alarms(T0 + 5)
    assert state_of(engine) is TherapyState.SUSPENDED
    assert engine.command(T0 + 5).action is PumpAction.STOP
    assert "resume" in engine.command(T0 + 5).reason

    # Clear + resume: running again.
    engine.resume(T0 + 6)
    assert state_of(engine) is TherapyState.RUNNING
    assert engine.command(T0 + 6).action is PumpAction.INFUSE


@pytest.mark.parametrize(
    ("code", "source"), [("ESTOP", "motor_driver"), ("SOMETHING_NEW", "x"), ("LEAK", "occlusion")]
)
def test_critical_alarm_from_any_source_and_any_code(code: str, source: str) -> None:
    engine = running_engine()
    engine.on_alarm(T0 + 1, code, CRITICAL, True, source)
    assert state_of(engine) is TherapyState.ALARM
    assert engine.command(T0 + 1).action is PumpAction.STOP


def test_unknown_high_severity_counts_as_critical() -> None:
    engine = running_engine()
    engine.on_alarm(T0 + 1, "WEIRD", 7, True, "x")
    assert state_of(engine) is TherapyState.ALARM


def test_warning_and_info_alarms_do_not_stop() -> None:
    engine = running_engine()
    engine.on_alarm(T0 + 1, "OCCLUSION", WARNING, True, "pressure_monitor")
    engine.on_alarm(T0 + 1, "NOTE", INFO, True, "x")
    assert state_of(engine) is TherapyState.RUNNING
    assert engine.command(T0 + 1).action is PumpAction.INFUSE
    assert engine.snapshot(T0 + 1).active_alarms == ("OCCLUSION",)
    engine.on_alarm(T0 + 2, "OCCLUSION", WARNING, False, "pressure_monitor")
    assert engine.snapshot(T0 + 2).active_alarms == ()


def test_alarm_sources_are_tracked_separately() -> None:
    engine = running_engine()
    engine.on_alarm(T0 + 1, "SENSOR_FAULT", WARNING, True, "a")
    engine.on_alarm(T0 + 1, "SENSOR_FAULT", WARNING, True, "b")
    engine.on_alarm(T0 + 2, "SENSOR_FAULT", WARNING, False, "a")
    assert engine.snapshot(T0 + 2).active_alarms == ("SENSOR_FAULT",)
    engine.on_alarm(T0 + 3, "SENSOR_FAULT", WARNING, False, "b")
    assert engine.snapshot(T0 + 3).active_alarms == ()


def test_critical_alarm_reraised_after_clear_latches_again() -> None:
    engine = running_engine()
    engine.on_alarm(T0 + 1, "OCCLUSION", CRITICAL, True, "occlusion")
    engine.clear_alarms(T0 + 2)
    engine.on_alarm(T0 + 3, "OCCLUSION", CRITICAL, True, "occlusion")  # still occluded
    assert state_of(engine) is TherapyState.ALARM
    with pytest.raises(TherapyError):
        engine.resume(T0 + 4)
    assert state_of(engine) is TherapyState.ALARM


def test_suspend_during_alarm_keeps_alarm_and_clear_needs_resume() -> None:
    engine = running_engine()
    engine.on_alarm(T0 + 1, "MOTOR_STALL", CRITICAL, True, "motor_driver")
    engine.suspend(T0 + 2, "operator")
    assert state_of(engine) is TherapyState.ALARM
    engine.clear_alarms(T0 + 3)
    assert state_of(engine) is TherapyState.SUSPENDED


def test_clear_alarms_without_alarm_does_not_resume_a_suspension() -> None:
    engine = running_engine()
    engine.suspend(T0 + 1)
    engine.clear_alarms(T0 + 2)
    assert state_of(engine) is TherapyState.SUSPENDED


def test_own_alarm_codes_echoed_back_are_ignored() -> None:
    engine = running_engine()
    engine.on_alarm(T0 + 1, RESERVOIR_EMPTY, CRITICAL, True, "/rig/dosing_controller")
    assert state_of(engine) is TherapyState.RUNNING
    assert engine.snapshot(T0 + 1).active_alarms == ()


def test_alarm_before_program_keeps_therapy_stopped_after_program() -> None:
    engine = new_engine()
    engine.on_alarm(T0 + 1, "ESTOP", CRITICAL, True, "motor_driver")
    engine.set_program(T0 + 2, PROGRAM)
    assert state_of(engine) is TherapyState.ALARM
    assert engine.command(T0 + 2).action is PumpAction.STOP
    engine.clear_alarms(T0 + 3)
    assert state_of(engine) is TherapyState.SUSPENDED
    engine.resume(T0 + 4)
    assert state_of(engine) is TherapyState.RUNNING


def test_set_program_keeps_suspended_and_alarm_states() -> None:
    higher = make_program(name="higher", daily_dose=480.0)
    engine = running_engine()
    engine.suspend(T0 + 1)
    engine.set_program(T0 + 2, higher, override_titration=True, override_reason="test")
    assert state_of(engine) is TherapyState.SUSPENDED
    engine.resume(T0 + 3)
    assert engine.command(T0 + 3).flow_rate_ul_per_h == pytest.approx(40.0, rel=1e-12)

    engine.on_alarm(T0 + 4, "OCCLUSION", CRITICAL, True, "occlusion")
    engine.set_program(T0 + 5, PROGRAM)
    assert state_of(engine) is TherapyState.ALARM
    assert engine.command(T0 + 5).action is PumpAction.STOP


def test_set_program_while_running_changes_rate_and_keeps_history() -> None:
    engine = running_engine()
    engine.on_device_volume(T0 + 100, 10.0)
    before = engine.snapshot(T0 + 100)
    # +30 %: exactly baclofen's titration limit, no override needed
    message = engine.set_program(T0 + 100, make_program(name="up30", daily_dose=312.0))
    assert "overridden" not in message
    assert engine.overrides == []
    after = engine.snapshot(T0 + 100)
    assert state_of(engine) is TherapyState.RUNNING
    assert engine.command(T0 + 100).flow_rate_ul_per_h == pytest.approx(26.0, rel=1e-12)
    assert after.delivered_volume_ul == before.delivered_volume_ul == 10.0
    assert after.delivered_dose_24h_ug == before.delivered_dose_24h_ug == pytest.approx(5.0)
    assert after.program == "up30"


def test_later_program_does_not_refill_the_reservoir() -> None:
    engine = running_engine()
    engine.on_device_volume(T0 + 100, 10.0)
    message = engine.set_program(T0 + 101, make_program(name="other", volume=5000.0))
    assert "filled" not in message
    assert engine.snapshot(T0 + 101).reservoir_volume_ul == pytest.approx(17990.0)
    assert engine.snapshot(T0 + 101).program == "other"


@pytest.mark.parametrize(
    ("program", "field"),
    [
        (make_program(name="m", drug="morphine", concentration=500.0), "drug"),
        (make_program(name="c", concentration=1000.0, daily_dose=240.0), "concentration_ug_per_ml"),
    ],
)
def test_program_for_another_fill_is_refused_and_changes_nothing(
    program: TherapyProgram, field: str
) -> None:
    engine = running_engine()
    intent = engine.command(T0 + 1)
    with pytest.raises(TherapyError, match=f"^{field}: "):
        engine.set_program(T0 + 2, program)
    assert engine.program is PROGRAM
    assert engine.command(T0 + 3) is intent  # nothing to re-send
    snap = engine.snapshot(T0 + 3)
    assert (snap.drug, snap.concentration_ug_per_ml) == ("baclofen", 500.0)
    assert snap.reservoir_volume_ul == 18000.0


def test_titration_limit_needs_an_override_with_a_reason() -> None:
    engine = running_engine()
    intent = engine.command(T0 + 1)
    too_high = make_program(name="too-high", daily_dose=313.0)  # +30.4 %: baclofen allows 30 %
    with pytest.raises(TherapyError, match="titration limit") as info:
        engine.set_program(T0 + 2, too_high)
    assert "30 % per change" in str(info.value)
    assert "override" in str(info.value)
    for reason in ("", "   "):
        with pytest.raises(TherapyError, match="reason"):
            engine.set_program(T0 + 3, too_high, override_titration=True, override_reason=reason)
    assert engine.program is PROGRAM
    assert engine.command(T0 + 4) is intent
    assert engine.overrides == []

    message = engine.set_program(
        T0 + 5, too_high, override_titration=True, override_reason=" dr. X, ward round "
    )
    assert "titration limit overridden (dr. X, ward round)" in message
    assert engine.overrides == [(T0 + 5, "dr. X, ward round")]
    assert engine.program is too_high
    assert engine.command(T0 + 5).flow_rate_ul_per_h == pytest.approx(313 / 12, rel=1e-12)
    # Going down never needs an override.
    engine.set_program(T0 + 6, make_program(name="down", daily_dose=100.0))
    assert len(engine.overrides) == 1


# --- accounting from device volume only (invariant 6) ------------------------------------------


def test_first_device_volume_only_sets_baseline() -> None:
    engine = new_engine()
    engine.set_program(T0, PROGRAM)
    engine.on_device_volume(T0, 1234.0)  # the device had delivered before we started
    snap = engine.snapshot(T0)
    assert snap.delivered_volume_ul == 0.0
    assert snap.delivered_dose_24h_ug == 0.0
    assert snap.reservoir_volume_ul == 18000.0
    engine.on_device_volume(T0 + 60, 1240.0)
    snap = engine.snapshot(T0 + 60)
    assert snap.delivered_volume_ul == pytest.approx(6.0)
    assert snap.delivered_dose_24h_ug == pytest.approx(6.0 / 1000 * 500)
    assert snap.delivered_dose_total_ug == pytest.approx(3.0)
    assert snap.dose_24h_by_source_ug["basal"] == pytest.approx(3.0)
    assert snap.reservoir_volume_ul == pytest.approx(18000.0 - 6.0)


def test_accounting_ignores_intent() -> None:
    engine = running_engine()
    for k in range(1, 25):  # 24 h of RUNNING with INFUSE commands, device reports nothing
        assert engine.command(T0 + k * SECONDS_PER_HOUR).action is PumpAction.INFUSE
        engine.on_device_volume(T0 + k * SECONDS_PER_HOUR, 0.0)
    snap = engine.snapshot(T0 + 24 * SECONDS_PER_HOUR)
    assert snap.delivered_volume_ul == 0.0
    assert snap.delivered_dose_24h_ug == 0.0
    assert snap.delivered_dose_total_ug == 0.0
    assert snap.reservoir_volume_ul == 18000.0
    # ...while the yardstick shows what should have gone in.
    assert snap.prescribed_volume_ul == pytest.approx(480.0)


def test_device_behind_the_command_raises_under_delivery_and_is_not_made_up() -> None:
    engine = running_engine()
    intent = engine.command(T0)
    engine.on_device_volume(T0 + 1, 0.0)  # the device runs the command from here
    engine.on_device_volume(T0 + 1801, 2.0)  # 2 µL in 30 min at 20 µL/h (10 expected)
    assert (UNDER_DELIVERY, True) in codes(engine.drain_alarm_events())
    assert state_of(engine) is TherapyState.RUNNING  # a warning
    assert engine.command(T0 + 1801) is intent  # the rate is not raised to catch up
    engine.clear_alarms(T0 + 1802)
    assert codes(engine.drain_alarm_events()) == [(UNDER_DELIVERY, False)]


def test_device_delivering_nothing_raises_under_delivery() -> None:
    engine = running_engine()
    engine.command(T0)
    for k in range(1, 61):  # one hour of reports of an unchanged counter at 20 µL/h commanded
        engine.on_device_volume(T0 + 60 * k, 0.0)
    assert UNDER_DELIVERY in engine.snapshot(T0 + 3600).active_alarms


def test_volume_delivered_while_stopped_still_counts() -> None:
    engine = running_engine()
    engine.suspend(T0 + 1)
    engine.on_device_volume(T0 + 2, 3.0)  # the device says it delivered: it did
    snap = engine.snapshot(T0 + 2)
    assert snap.delivered_volume_ul == 3.0
    assert snap.delivered_dose_24h_ug == pytest.approx(1.5)
    assert snap.reservoir_volume_ul == pytest.approx(17997.0)


def test_dose_is_what_leaves_the_catheter_tip_after_a_refill() -> None:
    # A 1 µL line: after a refill at a new concentration, the first 1 µL pushed is still old drug.
    engine = running_engine(config=EngineConfig(line_dead_volume_ul=1.0))
    engine.on_device_volume(T0 + 10, 10.0)  # 10 µL at 500 µg/mL = 5 µg
    result = engine.refill(
        T0 + 10, volume_ul=18000.0, drug="baclofen", concentration_ug_per_ml=2000.0
    )
    assert result.discarded_ul == pytest.approx(17990.0)
    assert state_of(engine) is TherapyState.RUNNING  # same drug: therapy goes on
    # the program's dose at the new concentration: 10 µg/h / 2000 µg/mL = 5 µL/h
    assert engine.command(T0 + 10).flow_rate_ul_per_h == pytest.approx(5.0, rel=1e-12)
    engine.on_device_volume(T0 + 20, 12.0)  # 1 µL at 500 µg/mL + 1 µL at 2000 = 2.5 µg
    snap = engine.snapshot(T0 + 20)
    assert snap.delivered_dose_24h_ug == pytest.approx(7.5, rel=1e-12)
    assert snap.tip_concentration_ug_per_ml == 2000.0
    assert snap.concentration_ug_per_ml == 2000.0
    assert snap.reservoir_volume_ul == pytest.approx(17998.0)
    # A program must now name the new concentration.
    with pytest.raises(TherapyError, match="concentration_ug_per_ml"):
        engine.set_program(T0 + 21, PROGRAM)
    engine.set_program(T0 + 21, make_program(name="c2000", concentration=2000.0))
    assert engine.snapshot(T0 + 21).program == "c2000"


def test_counter_reset_rebaselines_without_counting() -> None:
    engine = running_engine(device_ul=100.0)
    engine.on_device_volume(T0 + 10, 110.0)
    engine.drain_alarm_events()
    engine.on_device_volume(T0 + 20, 2.0)  # device restarted, counter from 0
    snap = engine.snapshot(T0 + 20)
    assert snap.delivered_volume_ul == pytest.approx(10.0)
    assert VOLUME_COUNTER_RESET in snap.active_alarms
    events = engine.drain_alarm_events()
    assert codes(events) == [(VOLUME_COUNTER_RESET, True)]
    assert events[0].severity == WARNING
    engine.on_device_volume(T0 + 30, 5.0)
    assert engine.snapshot(T0 + 30).delivered_volume_ul == pytest.approx(13.0)
    engine.clear_alarms(T0 + 40)
    assert codes(engine.drain_alarm_events()) == [(VOLUME_COUNTER_RESET, False)]
    assert state_of(engine) is TherapyState.RUNNING  # a warning never stopped therapy


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_device_volume_ignored_with_alarm(bad: float) -> None:
    engine = running_engine(device_ul=50.0)
    engine.on_device_volume(T0 + 10, bad)
    events = engine.drain_alarm_events()
    assert codes(events) == [(INVALID_DEVICE_VOLUME, True)]
    assert events[0].severity == WARNING
    assert engine.snapshot(T0 + 10).delivered_volume_ul == 0.0
    engine.on_device_volume(T0 + 11, bad)
    assert engine.drain_alarm_events() == []  # raised once, not per sample
    engine.on_device_volume(T0 + 20, 58.0)  # baseline was kept: all 8 µL count
    assert engine.snapshot(T0 + 20).delivered_volume_ul == pytest.approx(8.0)
    assert codes(engine.drain_alarm_events()) == [(INVALID_DEVICE_VOLUME, False)]
    assert state_of(engine) is TherapyState.RUNNING


def test_volume_without_program_counts_volume_not_dose() -> None:
    engine = new_engine()
    engine.on_device_volume(T0, 0.0)
    engine.on_device_volume(T0 + 1, 4.0)
    snap = engine.snapshot(T0 + 1)
    assert snap.delivered_volume_ul == 4.0
    assert snap.delivered_dose_24h_ug == 0.0


# --- rolling 24 h window (bucketed) ------------------------------------------------------------


def test_24h_window_counts_each_bucket_until_24h_after_its_end() -> None:
    engine = running_engine()
    t_a, t_b = T0 + 100.0, T0 + 5000.0
    engine.on_device_volume(t_a, 2.0)  # 1 µg at t_a
    engine.on_device_volume(t_a + 60, 2.0)  # nothing new; closes the bucket [t_a, t_a]
    engine.on_device_volume(t_b, 6.0)  # 2 µg at t_b
    engine.on_device_volume(t_b + 60, 6.0)  # closes [t_b, t_b]
    day = SECONDS_PER_DAY
    assert engine.snapshot(t_a + day - 1e-6).delivered_dose_24h_ug == pytest.approx(3.0)
    assert engine.snapshot(t_a + day).delivered_dose_24h_ug == pytest.approx(2.0)
    assert engine.snapshot(t_b + day - 1e-6).delivered_dose_24h_ug == pytest.approx(2.0)
    assert engine.snapshot(t_b + day).delivered_dose_24h_ug == 0.0
    # delivered_volume_ul and the total dose are cumulative, not windowed
    assert engine.snapshot(t_b + day).delivered_volume_ul == pytest.approx(6.0)
    assert engine.snapshot(t_b + day).delivered_dose_total_ug == pytest.approx(3.0)


@pytest.mark.parametrize("bucket_s", [60.0, 600.0])
def test_24h_window_never_counts_a_dose_as_older_than_its_bucket(bucket_s: float) -> None:
    engine = running_engine(config=EngineConfig(bucket_s=bucket_s))
    t_a = T0 + 100.0
    t_b = t_a + bucket_s / 2  # same bucket as t_a
    engine.on_device_volume(t_a, 2.0)  # 1 µg at t_a
    engine.on_device_volume(t_b, 4.0)  # 1 µg at t_b
    engine.on_device_volume(t_a + bucket_s - 1e-3, 4.0)  # not yet bucket_s: still open
    engine.on_device_volume(t_a + bucket_s, 4.0)  # bucket_s after it opened: closes [t_a, t_b]
    day = SECONDS_PER_DAY
    # The dose delivered at t_a is counted until 24 h after the bucket's end (t_b).
    assert engine.snapshot(t_a + day).delivered_dose_24h_ug == pytest.approx(2.0)
    assert engine.snapshot(t_b + day - 1e-6).delivered_dose_24h_ug == pytest.approx(2.0)
    assert engine.snapshot(t_b + day).delivered_dose_24h_ug == 0.0


def test_open_bucket_counts_until_a_report_closes_it() -> None:
    engine = running_engine()
    engine.on_device_volume(T0 + 100, 2.0)  # 1 µg; then the device says nothing for two days
    assert engine.snapshot(T0 + 100 + 2 * SECONDS_PER_DAY).delivered_dose_24h_ug == 1.0
    engine.on_device_volume(T0 + 100 + 2 * SECONDS_PER_DAY, 2.0)  # closes [T0+100, T0+100]
    assert engine.snapshot(T0 + 100 + 2 * SECONDS_PER_DAY).delivered_dose_24h_ug == 0.0


def test_report_before_bucket_s_keeps_the_bucket_open() -> None:
    engine = running_engine()
    engine.on_device_volume(T0 + 100, 2.0)
    engine.on_device_volume(T0 + 159, 2.0)  # 59 s: the bucket stays open
    engine.on_device_volume(T0 + 5000, 4.0)  # joins it and closes it: [T0+100, T0+5000]
    assert engine.snapshot(T0 + 100 + SECONDS_PER_DAY).delivered_dose_24h_ug == pytest.approx(2.0)
    assert engine.snapshot(T0 + 5000 + SECONDS_PER_DAY).delivered_dose_24h_ug == 0.0


def test_24h_window_over_many_days_does_not_drift() -> None:
    engine = running_engine()
    device = 0.0
    t = T0
    for _ in range(3 * 24 * 60):  # three days, one report a minute, 1/3 µL each
        t += 60.0
        device += 1.0 / 3.0
        engine.on_device_volume(t, device)
    # The last 24 h hold exactly 1440 reports of 1/3 µL at 0.5 µg/µL; the window counts whole
    # buckets (60 s: two reports here, and a midnight splits one), so it may hold one more
    # report, never less, and it sums whole reports without drift.
    reports = engine.snapshot(t).delivered_dose_24h_ug / (0.5 / 3)
    assert reports == pytest.approx(round(reports), abs=1e-9)
    assert round(reports) in (1440, 1441)
    assert engine.snapshot(t).delivered_volume_ul == pytest.approx(3 * 1440 / 3, rel=1e-9)
    # A day without reports: at most the still open bucket (one report) is counted.
    assert engine.snapshot(t + SECONDS_PER_DAY).delivered_dose_24h_ug <= 0.5 / 3 + 1e-12


# --- daily maximum (invariant 3) -----------------------------------------------------------------


def test_basal_is_capped_and_held_at_the_daily_maximum_until_the_window_frees_room() -> None:
    engine = running_engine(program=make_program(name="capped", max_daily=250.0))
    engine.on_device_volume(T0 + 100, 490.0)  # 245 µg: 5 µg (10 µL) of room left
    engine.on_device_volume(T0 + 160, 490.0)  # closes the bucket
    capped = engine.command(T0 + 160)
    assert capped.action is PumpAction.INFUSE
    # The device stops itself one step (the resolution) short of the room: a device stopping
    # on whole steps may pass a limit by one.
    room_ul = 10.0 - CONFIG.device_resolution_ul
    assert capped.volume_limit_ul == pytest.approx(room_ul, rel=1e-9)
    assert capped.stop_at_device_ul == pytest.approx(490.0 + room_ul, rel=1e-12)
    assert "daily maximum" in capped.reason
    engine.drain_alarm_events()

    engine.on_device_volume(T0 + 200, 499.9)  # 249.95 µg: one step from the maximum
    engine.on_device_volume(T0 + 260, 499.9)
    held = engine.command(T0 + 260)
    assert held.action is PumpAction.STOP
    assert "daily maximum" in held.reason
    events = engine.drain_alarm_events()
    assert codes(events) == [(DOSE_LIMIT, True)]
    assert events[0].severity == WARNING
    assert state_of(engine) is TherapyState.RUNNING  # held, not stopped: resumes by itself

    # 24 h after the first bucket's end its 245 µg leave the window.
    later = T0 + 100 + SECONDS_PER_DAY
    resumed = engine.command(later)
    assert resumed.action is PumpAction.INFUSE
    assert resumed.flow_rate_ul_per_h == pytest.approx(20.0, rel=1e-12)
    assert codes(engine.drain_alarm_events()) == [(DOSE_LIMIT, False)]


def test_device_delivering_past_the_daily_maximum_latches_alarm() -> None:
    engine = running_engine(program=make_program(name="capped", max_daily=250.0))
    engine.on_device_volume(T0 + 100, 502.0)  # 251 µg: past the maximum
    assert state_of(engine) is TherapyState.ALARM
    events = engine.drain_alarm_events()
    assert (DOSE_LIMIT, True) in codes(events)
    assert next(e for e in events if e.code == DOSE_LIMIT).severity == CRITICAL
    assert engine.command(T0 + 101).action is PumpAction.STOP
    with pytest.raises(TherapyError, match="clear alarms first"):
        engine.resume(T0 + 102)


# --- prescribed volume ---------------------------------------------------------------------------


def test_prescribed_volume_integrates_basal_rate_while_running() -> None:
    engine = new_engine()
    assert engine.snapshot(T0 + 3600).prescribed_volume_ul == 0.0  # no program: nothing
    engine.set_program(T0 + 3600, PROGRAM)  # 20 µL/h
    engine.suspend(T0 + 2 * 3600)
    engine.on_alarm(T0 + 3 * 3600, "OCCLUSION", CRITICAL, True, "x")
    # suspended or in ALARM, nothing is prescribed
    assert engine.snapshot(T0 + 4 * 3600).prescribed_volume_ul == pytest.approx(20.0)
    engine.clear_alarms(T0 + 4 * 3600)
    engine.resume(T0 + 4 * 3600)
    engine.set_program(T0 + 4 * 3600, make_program(daily_dose=300.0))  # 25 µL/h
    assert engine.snapshot(T0 + 5 * 3600).prescribed_volume_ul == pytest.approx(45.0)


def test_ordered_volume_goes_on_through_alarms_and_counts_granted_boluses() -> None:
    """What the patient was to get: the program while not suspended by an operator, also
    while an alarm stops the pump, and every granted bolus. `pumprig report` measures
    delivery against it (the demo said 100 % of prescribed with the pump stopped 11 of 24 h:
    prescribed_volume_ul counts only while running)."""
    engine = new_engine()
    with_bolus = parse_program(
        PROGRAM.to_yaml().replace(
            "reservoir:",
            "patient_bolus: {dose_ug: 25.0, duration_min: 10, lockout_min: 60, max_per_24h: 4}\n"
            "reservoir:",
        )
    )
    engine.set_program(T0, with_bolus)  # 20 µL/h; a 25 µg bolus is 50 µL
    assert engine.request_bolus(T0 + 3600).granted
    engine.on_alarm(T0 + 2 * 3600, "OCCLUSION", CRITICAL, True, "x")
    snap = engine.snapshot(T0 + 4 * 3600)
    assert snap.therapy_state is TherapyState.ALARM
    assert snap.ordered_volume_ul == pytest.approx(4 * 20.0 + 50.0)
    assert snap.prescribed_volume_ul == pytest.approx(2 * 20.0)
    engine.clear_alarms(T0 + 4 * 3600)  # cleared: suspended until resumed
    assert engine.snapshot(T0 + 6 * 3600).ordered_volume_ul == pytest.approx(130.0)


def test_time_going_back_integrates_nothing_negative() -> None:
    engine = running_engine()
    engine.snapshot(T0 + 3600)
    assert engine.snapshot(T0).prescribed_volume_ul == pytest.approx(20.0)


# --- reservoir ---------------------------------------------------------------------------------


def test_reservoir_low_then_empty_then_refill_and_resume() -> None:
    program = make_program(volume=100.0, capacity=1000.0, low=30.0)
    engine = new_engine()
    engine.set_program(T0, program)
    engine.on_device_volume(T0, 0.0)
    engine.on_device_volume(T0 + 1, 60.0)
    assert engine.drain_alarm_events() == []
    engine.on_device_volume(T0 + 2, 75.0)  # 25 µL left <= 30
    events = engine.drain_alarm_events()
    assert codes(events) == [(LOW_RESERVOIR, True)]
    assert events[0].severity == WARNING
    assert state_of(engine) is TherapyState.RUNNING

    engine.on_device_volume(T0 + 3, 101.0)  # device overshoots: reservoir clamps at 0
    events = engine.drain_alarm_events()
    assert codes(events) == [(RESERVOIR_EMPTY, True)]
    assert events[0].severity == CRITICAL
    assert state_of(engine) is TherapyState.EMPTY
    assert engine.command(T0 + 3).action is PumpAction.STOP
    snap = engine.snapshot(T0 + 3)
    assert snap.reservoir_volume_ul == 0.0
    assert snap.delivered_volume_ul == pytest.approx(101.0)
    assert set(snap.active_alarms) == {LOW_RESERVOIR, RESERVOIR_EMPTY}
    with pytest.raises(TherapyError, match="reservoir empty"):
        engine.resume(T0 + 4)
    engine.clear_alarms(T0 + 4)  # a condition alarm stays while its condition holds
    assert state_of(engine) is TherapyState.EMPTY
    # A program is not a refill.
    engine.set_program(T0 + 5, make_program(volume=900.0, capacity=1000.0, low=30.0))
    assert state_of(engine) is TherapyState.EMPTY
    assert engine.drain_alarm_events() == []

    result = engine.refill(T0 + 6, volume_ul=900.0, drug="baclofen", concentration_ug_per_ml=500.0)
    assert result.discarded_ul == 0.0
    assert result.reservoir_volume_ul == 900.0
    assert codes(engine.drain_alarm_events()) == [(RESERVOIR_EMPTY, False), (LOW_RESERVOIR, False)]
    assert state_of(engine) is TherapyState.SUSPENDED  # a refill never restarts delivery by itself
    stop = engine.command(T0 + 6)
    assert stop.action is PumpAction.STOP
    assert "refill and resume" in stop.reason
    engine.resume(T0 + 7)
    assert state_of(engine) is TherapyState.RUNNING
    assert engine.command(T0 + 7).action is PumpAction.INFUSE
    assert engine.snapshot(T0 + 7).reservoir_volume_ul == 900.0


def test_program_loaded_below_low_alarm_warns_at_once() -> None:
    engine = new_engine()
    engine.set_program(T0, make_program(volume=1000.0))
    assert codes(engine.drain_alarm_events()) == [(LOW_RESERVOIR, True)]
    assert state_of(engine) is TherapyState.RUNNING
    assert engine.drain_alarm_events() == []


def test_refill_before_any_program_is_refused() -> None:
    engine = new_engine()
    with pytest.raises(TherapyError, match="no program"):
        engine.refill(T0, volume_ul=100.0, drug="baclofen", concentration_ug_per_ml=500.0)
    assert state_of(engine) is TherapyState.NO_PROGRAM


@pytest.mark.parametrize(
    ("volume", "drug", "concentration", "match"),
    [
        (20001.0, "baclofen", 500.0, "capacity"),
        (0.0, "baclofen", 500.0, "volume_ul"),
        (100.0, "baclofen", 5000.0, "range"),
        (100.0, "aspirin", 500.0, "unknown drug"),
        (100.0, "morphine", 500.0, "suspended"),  # another drug only while suspended
    ],
)
def test_refused_refill_changes_nothing(
    volume: float, drug: str, concentration: float, match: str
) -> None:
    engine = running_engine()
    intent = engine.command(T0)
    with pytest.raises(TherapyError, match=match):
        engine.refill(T0 + 1, volume_ul=volume, drug=drug, concentration_ug_per_ml=concentration)
    snap = engine.snapshot(T0 + 1)
    assert (snap.reservoir_volume_ul, snap.drug, snap.concentration_ug_per_ml) == (
        18000.0,
        "baclofen",
        500.0,
    )
    assert state_of(engine) is TherapyState.RUNNING
    assert engine.command(T0 + 1) is intent


def test_a_withdrawn_volume_the_reservoir_cannot_hold_is_refused() -> None:
    """`refill --withdrawn 50000` on a 20000 µL reservoir was accepted with a warning: more
    than the reservoir holds was never in it (a typo, a unit), so it is refused, naming both
    figures, and nothing changes."""
    engine = running_engine()
    intent = engine.command(T0)
    with pytest.raises(TherapyError) as refused:
        engine.refill(
            T0 + 1,
            volume_ul=15000.0,
            drug="baclofen",
            concentration_ug_per_ml=500.0,
            withdrawn_ul=50000.0,
        )
    assert str(refused.value) == (
        "withdrawn_ul: 50000 µL is more than the reservoir holds (20000 µL)"
    )
    assert engine.snapshot(T0 + 1).reservoir_volume_ul == 18000.0
    assert engine.command(T0 + 1) is intent


def test_refill_with_another_drug_needs_a_program_for_it() -> None:
    engine = running_engine()
    engine.suspend(T0 + 1)
    engine.refill(
        T0 + 2, volume_ul=10000.0, drug="morphine", concentration_ug_per_ml=1000.0, flush=True
    )
    assert state_of(engine) is TherapyState.NO_PROGRAM
    with pytest.raises(TherapyError):
        engine.resume(T0 + 3)
    engine.set_program(T0 + 4, make_program(name="m", drug="morphine", concentration=1000.0))
    assert state_of(engine) is TherapyState.SUSPENDED  # not a first program: resume needed
    assert engine.snapshot(T0 + 4).reservoir_volume_ul == 10000.0
    engine.resume(T0 + 5)
    assert engine.command(T0 + 5).flow_rate_ul_per_h == pytest.approx(10.0, rel=1e-12)


# --- property: accounting and state over random event sequences -------------------------------

_CONC = 500.0
_PROGRAMS = [
    make_program(name="a", daily_dose=240.0, volume=50.0, capacity=100.0, low=10.0),
    make_program(name="b", daily_dose=200.0, volume=80.0, capacity=100.0, low=10.0),
    make_program(name="c", daily_dose=300.0, volume=100.0, capacity=100.0, low=10.0),
    make_program(name="d", daily_dose=180.0, volume=30.0, capacity=100.0, low=10.0),
]
_TITRATION = 0.30  # baclofen: +30 % per change

_volume = st.tuples(st.just("volume"), st.floats(min_value=0.0, max_value=20.0))
_event = st.one_of(
    _volume,
    _volume,  # twice as likely as the rest: reservoirs run empty, windows fill
    _volume,
    st.tuples(st.just("reset"), st.floats(min_value=0.0, max_value=5.0)),
    st.tuples(st.just("bad_volume"), st.sampled_from([math.nan, math.inf, -math.inf])),
    st.tuples(st.just("suspend"), st.none()),
    st.tuples(st.just("resume"), st.none()),
    st.tuples(st.just("clear"), st.none()),
    st.tuples(st.just("program"), st.integers(min_value=0, max_value=len(_PROGRAMS) - 1)),
    st.tuples(st.just("refill"), st.floats(min_value=1.0, max_value=100.0)),
    st.tuples(
        st.just("alarm"),
        st.tuples(
            st.sampled_from(["OCCLUSION", "ESTOP", "LEAK"]),
            st.sampled_from([INFO, WARNING, CRITICAL]),
            st.booleans(),
        ),
    ),
)


@dataclass
class _Model:
    """What the engine should hold, kept the simple way."""

    program: TherapyProgram | None = None
    reservoir_ul: float = 0.0
    run: bool = False
    latched: bool = False
    critical: set[str] = field(default_factory=set)  # active CRITICAL alarm codes
    increments: list[tuple[float, float]] = field(default_factory=list)  # (t, µg) delivered
    closed: list[tuple[float, float]] = field(default_factory=list)  # (bucket end, µg)
    bucket: tuple[float, float, float] | None = None  # open bucket: (start, end, µg)

    def state(self) -> TherapyState:
        if self.latched:
            return TherapyState.ALARM
        if self.program is None:
            return TherapyState.NO_PROGRAM
        if self.reservoir_ul <= 0.0:
            return TherapyState.EMPTY
        return TherapyState.RUNNING if self.run else TherapyState.SUSPENDED

    def add(self, t: float, dose: float) -> None:
        start, _end, total = self.bucket if self.bucket else (t, t, 0.0)
        self.bucket = (start, t, total + dose)

    @staticmethod
    def day_ending_at(t: float) -> int:  # a report covers the time up to it
        return math.ceil(t / SECONDS_PER_DAY) - 1

    def deliver(self, t_prev: float, t: float, dose: float) -> None:
        """A report at ``t`` of ``dose`` delivered since ``t_prev``: shared by time between
        the local days it spans, each day's part in a bucket of that day."""
        parts, start = [], t_prev
        while (midnight := (math.floor(start / SECONDS_PER_DAY) + 1) * SECONDS_PER_DAY) < t:
            parts.append((midnight, dose * (midnight - start) / (t - t_prev)))
            start = midnight
        parts.append((t, dose - math.fsum(p for _, p in parts)))
        for end, part in parts:
            if self.bucket and self.day_ending_at(self.bucket[0]) != self.day_ending_at(end):
                self.close()
            self.increments.append((end, part))
            self.add(end, part)

    def close_if_due(self, t: float, bucket_s: float) -> None:
        if self.bucket is None:
            return
        start = self.bucket[0]
        if t - start >= bucket_s or self.day_ending_at(start) != self.day_ending_at(t):
            self.close()

    def close(self) -> None:
        if self.bucket is not None:
            self.closed.append((self.bucket[1], self.bucket[2]))
            self.bucket = None

    def window(self, t: float) -> float:
        open_dose = self.bucket[2] if self.bucket else 0.0
        return math.fsum([*(d for end, d in self.closed if end + SECONDS_PER_DAY > t), open_dose])


# Found by hypothesis in a fresh-clone run: a subnormal "delivery" that leaves the device's
# counter unchanged must not open a bucket in the model either (it did, so the model's bucket
# ended a minute earlier than the engine's and the 24 h windows differed).
@example(
    first=None,
    steps=[
        (0.0, ("program", 0)),
        (0.0, ("volume", 1.0)),
        (60.0, ("volume", 4.2624584827888573e-222)),
        (1.0, ("volume", 1.0)),
        (59.0, ("volume", 0.0)),
        (0.0, ("volume", 1.0)),
        (1.0, ("volume", 0.0)),
        (14340.0, ("volume", 0.0)),
        (14400.0, ("volume", 0.0)),
        (14400.0, ("suspend", None)),
        (14400.0, ("volume", 0.0)),
        (14400.0, ("bad_volume", math.nan)),
        (14400.0, ("suspend", None)),
    ],
)
@settings(max_examples=300, deadline=None)
@given(
    first=st.one_of(st.none(), st.integers(min_value=0, max_value=len(_PROGRAMS) - 1)),
    steps=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=4 * SECONDS_PER_HOUR), _event), max_size=60
    ),
)
def test_property_state_and_dose_from_device_deltas(
    first: int | None, steps: list[tuple[float, tuple[str, object]]]
) -> None:
    t = T0
    engine = new_engine(t)
    m = _Model()
    device: float | None = None
    reported_at = t  # the time of the device's last valid report
    if first is not None:  # many runs start with a program and a baseline
        engine.set_program(t, _PROGRAMS[first])
        m.program, m.reservoir_ul, m.run = (
            _PROGRAMS[first],
            _PROGRAMS[first].reservoir_volume_ul,
            True,
        )
        device = 0.0
        engine.on_device_volume(t, device)

    for dt, (kind, arg) in steps:
        t += dt
        if kind == "volume":
            assert isinstance(arg, float)
            if device is not None:
                # What the engine can see is the change of the device's float counter: a
                # subnormal step leaves it unchanged and delivers nothing.
                step = (device + arg) - device
                if step > 0:
                    dose = step / 1000.0 * _CONC if m.program is not None else 0.0
                    m.deliver(reported_at, t, dose)
                    m.reservoir_ul = max(0.0, m.reservoir_ul - step)
                    if m.reservoir_ul <= 0.0 and m.program is not None:
                        m.run = False
                device += step
                engine.on_device_volume(t, device)
                m.close_if_due(t, CONFIG.bucket_s)
            else:
                device = arg
                engine.on_device_volume(t, device)
            reported_at = t
        elif kind == "reset":
            assert isinstance(arg, float)
            if device is not None and arg < device:
                device = arg  # a decrease: re-baseline, nothing counted
                engine.on_device_volume(t, device)
                m.close()  # the new baseline is an event (journaled or not)
                reported_at = t
        elif kind == "bad_volume":
            assert isinstance(arg, float)
            engine.on_device_volume(t, arg)
        elif kind == "suspend":
            engine.suspend(t, "test")
            m.close()  # every event closes the open bucket, journal or not
            m.run = False
        elif kind == "resume":
            allowed = (
                not m.critical and not m.latched and m.program is not None and m.reservoir_ul > 0
            )
            if allowed:
                engine.resume(t)
                m.close()
                m.run = True
            else:
                with pytest.raises(TherapyError):
                    engine.resume(t)
        elif kind == "clear":
            engine.clear_alarms(t)
            m.critical.clear()
            if m.latched:
                m.close()
                m.run = False  # invariant 2: never running again by itself
            m.latched = False
        elif kind == "program":
            assert isinstance(arg, int)
            new = _PROGRAMS[arg]
            cur = m.program
            if cur is None or new.daily_dose_ug - cur.daily_dose_ug <= _TITRATION * (
                cur.daily_dose_ug
            ) * (1 + 1e-12):
                engine.set_program(t, new)
                m.close()  # the open bucket belongs to the old program's local time
                if cur is None:
                    m.reservoir_ul = new.reservoir_volume_ul
                    m.run = not m.latched
                m.program = new
            else:
                with pytest.raises(TherapyError, match="titration"):
                    engine.set_program(t, new)
        elif kind == "refill":
            assert isinstance(arg, float)
            if m.program is None:
                with pytest.raises(TherapyError):
                    engine.refill(t, volume_ul=arg, drug="baclofen", concentration_ug_per_ml=_CONC)
            else:
                engine.refill(t, volume_ul=arg, drug="baclofen", concentration_ug_per_ml=_CONC)
                m.close()
                m.reservoir_ul = arg
        elif kind == "alarm":
            assert isinstance(arg, tuple)
            code, severity, active = arg
            engine.on_alarm(t, code, severity, active, "test")
            if not active or severity == WARNING:
                m.critical.discard(code)  # ended, or now only a warning
            elif severity == CRITICAL:
                m.critical.add(code)
                if not m.latched:
                    m.close()  # latching is an event
                m.latched = True

        state = state_of(engine)
        assert state is m.state()
        assert engine.program is m.program
        intent = engine.command(t)
        if state is TherapyState.RUNNING:
            assert intent.action is PumpAction.INFUSE
            assert m.program is not None
            assert intent.flow_rate_ul_per_h == pytest.approx(
                m.program.basal_rate_ul_per_h, rel=1e-12
            )
        else:
            assert intent.action is PumpAction.STOP
            assert intent.flow_rate_ul_per_h == 0.0

        snap = engine.snapshot(t)
        assert snap.therapy_state is state
        delivered = math.fsum(d for _t, d in m.increments)
        assert snap.delivered_dose_total_ug == pytest.approx(delivered, abs=1e-9)
        assert snap.delivered_dose_24h_ug == pytest.approx(m.window(t), abs=1e-9)
        # never under-counted: at least what was delivered in the last 24 h exactly
        exact = math.fsum(d for ti, d in m.increments if t < ti + SECONDS_PER_DAY)
        assert snap.delivered_dose_24h_ug >= exact - 1e-9
        assert snap.reservoir_volume_ul == pytest.approx(m.reservoir_ul, abs=1e-9)


# --- against the plunger model: whole steps ----------------------------------------------------


@pytest.mark.parametrize("inner_diameter_mm", [14.43, 21.59, 26.59])  # BD 10, 30, 60 mL
def test_bolus_on_a_pump_that_moves_whole_steps_completes_and_basal_resumes(
    inner_diameter_mm: float,
) -> None:
    # The pump stops short of a volume limit by up to a step. Found in `pumprig bench therapy`:
    # the remainder of a bolus smaller than one step could never be delivered, so the engine
    # kept commanding it and the basal never resumed.
    program = parse_program(
        PROGRAM.to_yaml().replace(
            "reservoir:",
            "patient_bolus: {dose_ug: 25.0, duration_min: 10, lockout_min: 60, max_per_24h: 4}\n"
            "reservoir:",
        )
    )
    pump = full_syringe(inner_diameter_mm, 60000.0, T0)
    resolution = max(CONFIG.device_resolution_ul, pump.ul_per_step)
    engine = running_engine(program=program, config=EngineConfig(device_resolution_ul=resolution))
    applied: CommandIntent | None = None
    t = T0
    while t < T0 + 2 * SECONDS_PER_HOUR:
        if t == T0 + 600.0:
            assert engine.request_bolus(t).granted
        engine.on_device_volume(t, pump.snapshot(t).delivered_ul)
        intent = engine.command(t)
        if intent is not applied:  # as the motor driver applies a new command
            pump.stop(t)
            if intent.action is PumpAction.INFUSE:
                pump.set_rate(t, intent.flow_rate_ul_per_h)
                pump.set_volume_limit(t, intent.volume_limit_ul)
                pump.start(t)
            applied = intent
        t += 5.0
    engine.on_device_volume(t, pump.snapshot(t).delivered_ul)
    snap = engine.snapshot(t)
    assert snap.active_bolus == ""
    assert snap.dose_24h_by_source_ug["patient_bolus"] == pytest.approx(25.0, abs=resolution)
    assert applied is not None
    assert applied.volume_limit_ul == 0.0  # plain basal again
    assert applied.flow_rate_ul_per_h == pytest.approx(PROGRAM.basal_rate_ul_per_h)
    # Every step the pump moved is in the ledger.
    assert engine.ledger.total_volume_ul == pytest.approx(pump.snapshot(t).delivered_ul)
