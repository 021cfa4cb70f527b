"""Therapy engine exactness with a simulated device: what is delivered is what was prescribed.

The device follows each command exactly (tests/core/therapy_fixtures.py) and the rig steps at
every time the engine says its command changes, so delivery can be compared with analytic
integrals to 1e-9 relative: a month of a flex schedule, a patient bolus, refills with a new
concentration behind a line of known dead volume (with and without a bridge). Then the
failure paths: a device that under-delivers, the daily maximum, repeated bolus requests.
"""

from __future__ import annotations

import math

import pytest

from pump_rig.core.dose_schedule import weekday_of
from pump_rig.core.program import TherapyProgram
from pump_rig.core.pump_types import SECONDS_PER_DAY, SECONDS_PER_HOUR, PumpAction
from pump_rig.core.therapy_engine import (
    DOSE_LIMIT,
    UNDER_DELIVERY,
    AlarmSeverity,
    EngineConfig,
    TherapyState,
)
from tests.core.therapy_fixtures import (
    T0,
    Rig,
    SimDevice,
    continuous_doc,
    flex_doc,
    journal_dir,
    make_program,
)

HOUR = SECONDS_PER_HOUR
DAY = SECONDS_PER_DAY
REL = 1e-9
# The simulated device is continuous: it moves no whole steps, so nothing has to be kept
# back for a step past a volume limit and the window can reach the maximum exactly.
CONTINUOUS = EngineConfig(device_resolution_ul=0.0)

WEEKDAY_STEPS = [("00:00", 8.0), ("07:30", 12.0), ("12:00", 9.5), ("18:45", 14.0), ("22:00", 6.0)]
WEEKEND_STEPS = [("00:00", 6.0), ("09:00", 10.0), ("23:30", 7.25)]
WEDNESDAY_STEPS = [("00:00", 8.0), ("03:15", 16.0), ("04:00", 8.0), ("20:00", 11.5)]


def flex_program(
    *,
    concentration: float = 500.0,
    utc_offset_h: float = -5.0,
    bolus: tuple[float, float, float, int] | None = None,
    max_daily: float | None = None,
) -> TherapyProgram:
    return make_program(
        flex_doc(
            concentration=concentration,
            utc_offset_h=utc_offset_h,
            groups=[
                (["mon", "tue", "thu", "fri"], WEEKDAY_STEPS),
                (["wed"], WEDNESDAY_STEPS),
                (["sat", "sun"], WEEKEND_STEPS),
            ],
            bolus=bolus,
            max_daily=max_daily,
        )
    )


def local_midnights(t0: float, t1: float, utc_offset_s: float) -> list[float]:
    """Local midnights strictly inside (t0, t1)."""
    first = (math.floor((t0 + utc_offset_s) / DAY) + 1) * DAY - utc_offset_s
    out = []
    t = first
    while t < t1:
        out.append(t)
        t += DAY
    return out


def dose_24h_by_source(rig: Rig) -> dict[str, float]:
    return dict(rig.engine.snapshot(rig.t).dose_24h_by_source_ug)


# --- a. a month of a flex schedule ---------------------------------------------------------------


def test_a_month_of_flex_schedule_delivers_the_analytic_dose() -> None:
    program = flex_program()
    schedule = program.schedule
    rig = Rig()
    rig.engine.set_program(T0, program)
    rig.issue()
    end = T0 + 30 * DAY
    checkpoints = [*local_midnights(T0, end, schedule.utc_offset_s), end]
    conc = 500.0
    for checkpoint in checkpoints:
        rig.advance(checkpoint, 600.0, exact=True)
        expected = schedule.dose_ug(T0, rig.t)
        ledger = rig.engine.ledger
        assert ledger.total_dose_ug == pytest.approx(expected, rel=REL)
        assert ledger.total_volume_ul == pytest.approx(expected / conc * 1000, rel=REL)
        snap = rig.engine.snapshot(rig.t)
        assert snap.prescribed_volume_ul == pytest.approx(expected / conc * 1000, rel=REL)
        assert snap.delivered_dose_24h_ug <= snap.daily_limit_ug
    # Every command was the schedule's rate at the time it was issued, without a limit.
    for t, intent in rig.intents[1:]:
        assert intent.action is PumpAction.INFUSE
        assert intent.volume_limit_ul == 0.0
        rate = schedule.dose_rate_ug_per_h(t) / conc * 1000
        assert intent.flow_rate_ul_per_h == pytest.approx(rate, rel=1e-12)
    # A command was issued at each change of the schedule, and only then (the engine
    # returns the same command object while nothing needs re-sending).
    changes = []
    change = schedule.next_change_s(T0)
    while change is not None and change < end:
        changes.append(change)
        change = schedule.next_change_s(change)
    assert [t for t, _ in rig.intents[2:]] == changes  # (after the STOP and the first INFUSE)
    assert len(changes) > 30 * 3
    # Prescribed per local day: each whole day is that weekday's dose.
    by_day = rig.engine.prescribed_by_day
    offset = schedule.utc_offset_s
    first_day = math.floor((T0 + offset) / DAY)
    for day in range(first_day + 1, first_day + 30):
        weekday = weekday_of(day * DAY - offset, offset)
        assert by_day[day] == pytest.approx(schedule.daily_dose_ug(weekday), rel=REL)
    assert math.fsum(by_day.values()) == pytest.approx(schedule.dose_ug(T0, end), rel=REL)


def test_delivered_day_totals_match_the_schedule_with_reports_at_midnight() -> None:
    program = flex_program()
    schedule = program.schedule
    rig = Rig()
    rig.engine.set_program(T0, program)
    rig.issue()
    end = T0 + 8 * DAY
    midnights = local_midnights(T0, end, schedule.utc_offset_s)
    for checkpoint in [*midnights, end]:
        rig.advance(checkpoint, 600.0, exact=True)
    rig.engine.close()  # journals (and closes) the open bucket
    offset = schedule.utc_offset_s
    totals = {d.day: d.total_dose_ug for d in rig.engine.ledger.day_totals()}
    for start in midnights[:-1]:
        day = math.floor((start + offset) / DAY)
        weekday = weekday_of(start, offset)
        assert totals[day] == pytest.approx(schedule.daily_dose_ug(weekday), rel=REL), day


# --- b. a patient bolus, exactly -----------------------------------------------------------------


@pytest.mark.parametrize("across_a_step", [False, True])
def test_patient_bolus_is_delivered_exactly(across_a_step: bool) -> None:
    program = flex_program(bolus=(20.0, 10.0, 60.0, 4))
    schedule = program.schedule
    rig = Rig()
    rig.engine.set_program(T0, program)
    rig.issue()
    # T0 is Tuesday 17:13:20 local (UTC-5): the 18:45 step is 5500 s away.
    request_at = T0 + 5500.0 - 300.0 if across_a_step else T0 + 3600.0
    rig.advance(request_at, 60.0, exact=True)
    answer = rig.engine.request_bolus(rig.t, "press-1")
    assert answer.granted, answer.message
    assert answer.dose_ug == 20.0
    assert answer.volume_ul == pytest.approx(40.0, rel=1e-12)  # 20 µg at 500 µg/mL
    intent = rig.issue()
    basal = schedule.dose_rate_ug_per_h(rig.t) / 500.0 * 1000
    assert intent.flow_rate_ul_per_h == pytest.approx(basal + 240.0, rel=1e-12)  # 40 µL / 10 min
    assert rig.engine.snapshot(rig.t).next_change_s == pytest.approx(
        min(request_at + 600.0, T0 + 5500.0), abs=1e-6
    )
    rig.advance(request_at + 2 * HOUR, 60.0, exact=True)
    snap = rig.engine.snapshot(rig.t)
    assert snap.active_bolus == ""
    assert snap.dose_24h_by_source_ug["patient_bolus"] == pytest.approx(20.0, rel=REL)
    basal_dose = schedule.dose_ug(T0, rig.t)
    assert snap.dose_24h_by_source_ug["basal"] == pytest.approx(basal_dose, rel=REL)
    assert rig.engine.ledger.total_dose_ug == pytest.approx(basal_dose + 20.0, rel=REL)
    assert snap.boluses_24h == 1
    # Back at the basal rate, without a limit.
    intent = rig.issue()
    assert intent.volume_limit_ul == 0.0
    assert intent.flow_rate_ul_per_h == pytest.approx(
        schedule.dose_rate_ug_per_h(rig.t) / 500.0 * 1000, rel=1e-12
    )


# --- c. refill with a new concentration behind the line ------------------------------------------

DEAD_VOLUME = 200.0
DOSE_RATE = 10.0  # µg/h (240 µg/day)


def expected_dose_since_refill(
    hours: float, old: float, new: float, *, bridge: bool
) -> tuple[float, float]:
    """(dose µg at the tip in ``hours`` after the refill, hours until the line is flushed).

    Without a bridge the rate follows the new concentration, while the line still delivers
    the old one: dose rate DOSE_RATE × old/new until the dead volume has passed. With a bridge
    the rate follows the tip's (old) concentration: DOSE_RATE throughout.
    """
    rate_conc = old if bridge else new
    rate_ul_per_h = DOSE_RATE / rate_conc * 1000
    flush_h = DEAD_VOLUME / rate_ul_per_h
    during = rate_ul_per_h * old / 1000  # µg/h while the old drug leaves the tip
    if hours <= flush_h:
        return during * hours, flush_h
    return during * flush_h + DOSE_RATE * (hours - flush_h), flush_h


@pytest.mark.parametrize(
    ("old", "new", "bridge"),
    [
        (500.0, 1000.0, False),
        (500.0, 1000.0, True),
        (1000.0, 500.0, False),
        (1000.0, 500.0, True),
        (500.0, 2000.0, False),
        (500.0, 2000.0, True),
        (2000.0, 250.0, False),
        (2000.0, 250.0, True),
    ],
)
def test_refill_with_a_new_concentration_doses_by_the_tip(
    old: float, new: float, bridge: bool
) -> None:
    # The rig's device moves continuously and reports exactly: its resolution is nil (after
    # a weaker refill the engine books one step of what follows at the old concentration,
    # for the part of a step a stepping device's counter does not show yet).
    config = EngineConfig(
        line_dead_volume_ul=DEAD_VOLUME, line_primed=True, device_resolution_ul=1e-12
    )
    rig = Rig(config=config)
    rig.engine.set_program(T0, make_program(continuous_doc(concentration=old, daily_dose=240.0)))
    rig.issue()
    rig.advance(T0 + 2 * HOUR, 60.0, exact=True)
    refill_at = rig.t
    before = rig.engine.ledger.total_dose_ug
    assert before == pytest.approx(2 * DOSE_RATE, rel=REL)
    result = rig.engine.refill(
        refill_at, volume_ul=15000.0, drug="baclofen", concentration_ug_per_ml=new, bridge=bridge
    )
    assert result.reservoir_volume_ul == 15000.0
    intent = rig.issue()
    rate_conc = old if bridge else new
    assert intent.flow_rate_ul_per_h == pytest.approx(DOSE_RATE / rate_conc * 1000, rel=1e-12)
    _, flush_h = expected_dose_since_refill(0.0, old, new, bridge=bridge)
    if bridge:
        # The engine knows when the old drug will have left, and steps there.
        next_change = rig.engine.snapshot(rig.t).next_change_s
        assert next_change == pytest.approx(refill_at + flush_h * HOUR, abs=1e-6)
    previous_t, previous_dose = refill_at, before
    for hour in range(1, 31):
        checkpoint = refill_at + hour * HOUR
        while rig.t < checkpoint:
            rig.advance(min(checkpoint, rig.t + 600.0), 600.0, exact=True)
            total = rig.engine.ledger.total_dose_ug
            step_rate = (total - previous_dose) / ((rig.t - previous_t) / HOUR)
            flush_at = refill_at + flush_h * HOUR
            if bridge:
                # The patient's dose rate stays the programmed one while the line flushes.
                assert step_rate == pytest.approx(DOSE_RATE, rel=REL)
            elif rig.t <= flush_at:
                # Without: the old drug leaves at the new drug's rate, off by old/new ...
                assert step_rate == pytest.approx(DOSE_RATE * old / new, rel=REL)
            elif previous_t >= flush_at:
                # ... until the line is flushed.
                assert step_rate == pytest.approx(DOSE_RATE, rel=REL)
            previous_t, previous_dose = rig.t, total
        expected, _ = expected_dose_since_refill(hour, old, new, bridge=bridge)
        got = rig.engine.ledger.total_dose_ug - before
        assert got == pytest.approx(expected, rel=REL), hour
        snap = rig.engine.snapshot(rig.t)
        flushed = hour >= flush_h
        if hour != flush_h:  # (at the very moment: down to rounding)
            assert snap.tip_concentration_ug_per_ml == (new if flushed else old)
        intent = rig.issue()
        if hour > flush_h:  # after the flush (or the bridge) the rate is the new concentration's
            assert intent.flow_rate_ul_per_h == pytest.approx(DOSE_RATE / new * 1000, rel=1e-12)
            assert snap.active_bolus == ""
        elif bridge and hour < flush_h:
            assert snap.active_bolus == "bridge"
    sources = dose_24h_by_source(rig)
    if bridge:
        assert sources["bridge"] > 0
    else:
        assert sources["bridge"] == 0.0


# --- d. a device that under-delivers -------------------------------------------------------------


def test_under_delivery_is_reported_and_never_made_up() -> None:
    program = flex_program()
    schedule = program.schedule
    rig = Rig(device=SimDevice(factor=0.8))
    rig.engine.set_program(T0, program)
    rig.issue()
    rig.engine.drain_alarm_events()
    raised_at = None
    while rig.t < T0 + 12 * HOUR:
        rig.advance(rig.t + 60.0, 60.0, exact=True)
        for event in rig.engine.drain_alarm_events():
            if event.code == UNDER_DELIVERY and event.active and raised_at is None:
                raised_at = rig.t
                assert event.severity == AlarmSeverity.WARNING
                assert "not raised" in event.message
    assert raised_at is not None
    # 20 % short: beyond 2 µL + 5 % within the first hour at 16-28 µL/h.
    assert raised_at < T0 + HOUR
    assert UNDER_DELIVERY in rig.engine.snapshot(rig.t).active_alarms
    assert len(rig.intents) > 5  # the schedule changed rate a few times
    for t, intent in rig.intents[1:]:  # (the first: STOP, before the program)
        schedule_rate = schedule.dose_rate_ug_per_h(t) / 500.0 * 1000
        assert intent.flow_rate_ul_per_h <= schedule_rate * (1 + 1e-12), t
        assert intent.flow_rate_ul_per_h == pytest.approx(schedule_rate, rel=1e-12)
    # The ledger counts what the device did, not what it was told.
    expected = 0.8 * schedule.dose_ug(T0, rig.t)
    assert rig.engine.ledger.total_dose_ug == pytest.approx(expected, rel=1e-6)
    # Therapy goes on; clear_alarms forgets the notice.
    assert rig.engine.state is TherapyState.RUNNING
    rig.engine.clear_alarms(rig.t)
    assert UNDER_DELIVERY not in rig.engine.snapshot(rig.t).active_alarms


# --- e. the daily maximum ------------------------------------------------------------------------

BASAL_DAILY = 240.0  # 10 µg/h at 500 µg/mL = 20 µL/h
BOLUS_DOSE = 20.0
N_BOLUSES = 3
EXACT_MAX = BASAL_DAILY + N_BOLUSES * BOLUS_DOSE  # 300 µg


def max_program() -> TherapyProgram:
    return make_program(
        continuous_doc(
            concentration=500.0,
            daily_dose=BASAL_DAILY,
            max_daily=EXACT_MAX,
            bolus=(BOLUS_DOSE, 10.0, 60.0, N_BOLUSES),
        )
    )


def test_bolus_after_the_nth_is_denied_with_the_count_and_the_wait() -> None:
    rig = Rig()
    rig.engine.set_program(T0, max_program())
    rig.issue()
    grants = []
    for k in range(1, N_BOLUSES + 1):
        rig.advance(T0 + k * HOUR, 60.0, exact=True)
        answer = rig.engine.request_bolus(rig.t)
        assert answer.granted, answer.message
        grants.append(rig.t)
        rig.issue()
    rig.advance(T0 + (N_BOLUSES + 1) * HOUR, 60.0, exact=True)
    answer = rig.engine.request_bolus(rig.t)
    assert not answer.granted
    assert f"{N_BOLUSES} boluses already in the last 24 h" in answer.message
    assert answer.next_allowed_in_s == pytest.approx(grants[0] + DAY - rig.t)
    assert answer.next_allowed_in_s > 0
    assert rig.engine.snapshot(rig.t).boluses_24h == N_BOLUSES
    rig.advance(rig.t + 2 * HOUR, 60.0, exact=True)
    snap = rig.engine.snapshot(rig.t)
    assert snap.dose_24h_by_source_ug["patient_bolus"] == pytest.approx(
        N_BOLUSES * BOLUS_DOSE, rel=REL
    )


def test_bolus_that_would_pass_the_maximum_is_denied_with_the_wait() -> None:
    rig = Rig(config=CONTINUOUS)
    rig.engine.set_program(T0, max_program())
    rig.issue()
    rig.advance(T0 + HOUR, 60.0, exact=True)
    rig.engine.clinician_bolus(rig.t, "clinician", dose_ug=270.0, duration_s=HOUR)
    rig.issue()
    rig.advance(T0 + 3 * HOUR, 60.0, exact=True)
    window = rig.engine.snapshot(rig.t).delivered_dose_24h_ug
    assert window == pytest.approx(3 * 10.0 + 270.0, rel=REL)  # the maximum: 300 µg
    answer = rig.engine.request_bolus(rig.t)
    assert not answer.granted
    assert "daily maximum of 300" in answer.message
    assert answer.next_allowed_in_s > 0
    # Basal is held at the maximum (nothing delivered past it).
    intent = rig.issue()
    assert intent.action is PumpAction.STOP
    assert "daily maximum" in intent.reason
    assert DOSE_LIMIT in rig.engine.snapshot(rig.t).active_alarms
    rig.advance(rig.t + 6 * HOUR, 60.0, exact=True)
    assert rig.engine.snapshot(rig.t).delivered_dose_24h_ug <= EXACT_MAX * (1 + REL)
    assert rig.engine.state is TherapyState.RUNNING  # held, not latched


def test_steady_therapy_grants_the_n_boluses_the_maximum_allows() -> None:
    rig = Rig(config=CONTINUOUS)
    rig.engine.set_program(T0, max_program())
    rig.issue()
    start = T0 + DAY + HOUR  # basal only so far: the window is a steady 240 µg
    rig.advance(start, 60.0, exact=True)
    worst = 0.0
    for k in range(N_BOLUSES):
        rig.advance(start + k * 2 * HOUR, 60.0, exact=True)
        answer = rig.engine.request_bolus(rig.t)
        assert answer.granted, (k, answer.message)
        rig.issue()
        # On this knife edge the device's volume limit holds the window at the maximum.
        while rig.t < start + k * 2 * HOUR + HOUR:
            rig.advance(rig.t + 30.0, 30.0, exact=True)
            worst = max(worst, rig.engine.snapshot(rig.t).delivered_dose_24h_ug)
    snap = rig.engine.snapshot(rig.t)
    assert snap.active_bolus == ""  # each one completed
    assert snap.dose_24h_by_source_ug["patient_bolus"] == pytest.approx(N_BOLUSES * BOLUS_DOSE)
    assert worst <= EXACT_MAX * (1 + 1e-9)


def test_device_delivering_past_the_maximum_latches_dose_limit() -> None:
    # 1.5 × the basal, ignoring the device volume limit the engine sets near the maximum.
    rig = Rig(device=SimDevice(factor=1.5, honour_limit=False))
    rig.engine.set_program(T0, max_program())
    rig.issue()
    rig.engine.drain_alarm_events()
    latched_at = None
    step_s = 47.0  # (not a divisor of the time to the maximum: the last step passes it)
    while rig.t < T0 + 2 * DAY and latched_at is None:
        rig.advance(rig.t + step_s, step_s)
        for event in rig.engine.drain_alarm_events():
            if event.code == DOSE_LIMIT and event.severity == AlarmSeverity.CRITICAL:
                assert event.active
                latched_at = rig.t
    # 360 µg/day reaches 300 µg after 20 h: latched within a step of it.
    assert latched_at is not None
    assert latched_at == pytest.approx(T0 + 20 * HOUR, abs=step_s)
    assert rig.engine.state is TherapyState.ALARM
    intent = rig.issue()
    assert intent.action is PumpAction.STOP
    assert DOSE_LIMIT in intent.reason
    window = rig.engine.snapshot(rig.t).delivered_dose_24h_ug
    assert EXACT_MAX < window <= EXACT_MAX + 15.0 * step_s / HOUR  # one step at 15 µg/h
    # The capped command was there: the engine limited the volume before the end.
    assert any(i.volume_limit_ul > 0 for _, i in rig.intents)
    # Latched: nothing restarts delivery until the alarm is cleared and therapy resumed.
    rig.advance(rig.t + HOUR, 60.0)
    assert rig.engine.state is TherapyState.ALARM


# --- f. a repeated bolus request -----------------------------------------------------------------


def test_same_request_id_twice_grants_once() -> None:
    with journal_dir() as tmp:
        rig = Rig(journal=tmp / "dose.journal")
        rig.engine.set_program(T0, max_program())
        rig.issue()
        rig.advance(T0 + HOUR, 60.0)
        first = rig.engine.request_bolus(rig.t, "button-7")
        assert first.granted
        again = rig.engine.request_bolus(rig.t, "button-7")
        assert again == first
        assert rig.engine.snapshot(rig.t).boluses_24h == 1
        rig.issue()
        rig.advance(rig.t + 30.0, 10.0)
        later = rig.engine.request_bolus(rig.t, "button-7")  # a retry, mid-bolus
        assert later == first
        assert rig.engine.snapshot(rig.t).boluses_24h == 1
        # Another id inside the lockout is a new request, and denied.
        other = rig.engine.request_bolus(rig.t, "button-8")
        assert not other.granted
        assert "lockout" in other.message
        # ... and across a restart the retry is still the one grant.
        rig.restart()
        rig.issue()
        retried = rig.engine.request_bolus(rig.t, "button-7")
        assert retried.granted
        assert retried.dose_ug == first.dose_ug
        assert retried.volume_ul == first.volume_ul
        assert rig.engine.snapshot(rig.t).boluses_24h == 1
        rig.advance(rig.t + HOUR, 60.0, exact=True)
        snap = rig.engine.snapshot(rig.t)
        assert snap.dose_24h_by_source_ug["patient_bolus"] == pytest.approx(BOLUS_DOSE, rel=REL)
        rig.engine.close()
