"""DoseSchedule: the weekly basal schedule, its rates, next changes and exact dose integrals."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pump_rig
from pump_rig.core.dose_schedule import (
    MAX_STEPS_PER_DAY,
    WEEKDAYS,
    DoseSchedule,
    FlexStep,
    weekday_of,
)

H = 3600.0
DAY = 86400.0
WEEK = 7 * DAY
MONDAY = 4 * DAY  # 1970-01-05 00:00 UTC, the first Monday of the epoch
MONDAY_2023 = 19674 * DAY  # 2023-11-13 00:00 UTC: a realistic ROS time

# Weekdays: 8 µg/h to 07:30, 12 µg/h to 22:00, 4 µg/h to midnight: 60 + 174 + 8 = 242 µg.
WORKDAY = (FlexStep(0.0, 8.0), FlexStep(7.5 * H, 12.0), FlexStep(22 * H, 4.0))
# Saturday: 10 µg/h all day (240 µg).
SATURDAY = (FlexStep(0.0, 10.0),)
# Sunday: 10 µg/h, a step at 06:00 that does not change the rate, 20 µg/h from noon (360 µg).
SUNDAY = (FlexStep(0.0, 10.0), FlexStep(6 * H, 10.0), FlexStep(12 * H, 20.0))
WEEK_STEPS = (WORKDAY,) * 5 + (SATURDAY, SUNDAY)
WEEK_DOSE = 5 * 242.0 + 240.0 + 360.0


def schedule(utc_offset_s: float = 0.0) -> DoseSchedule:
    return DoseSchedule(week=WEEK_STEPS, utc_offset_s=utc_offset_s)


# --- an independent oracle: local time from datetime, numeric integration ---------------------


def oracle_rate(s: DoseSchedule, t_s: float) -> float:
    local = datetime.fromtimestamp(t_s, tz=timezone(timedelta(seconds=s.utc_offset_s)))
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    into = (local - midnight).total_seconds()
    steps = s.week[local.weekday()]
    return [step for step in steps if step.at_s <= into][-1].dose_rate_ug_per_h


def brute_force_dose(s: DoseSchedule, t0: float, t1: float, grid_s: float = 60.0) -> float:
    """Sum of rate × time over a grid fine enough that the rate is constant in each cell.

    Every step time and offset used with it is a whole number of ``grid_s``, so the rate at a
    cell's midpoint holds over the whole cell.
    """
    cuts = [
        t0,
        *(k * grid_s for k in range(math.floor(t0 / grid_s) + 1, math.ceil(t1 / grid_s))),
        t1,
    ]
    return math.fsum(oracle_rate(s, (a + b) / 2) * (b - a) / H for a, b in itertools.pairwise(cuts))


# --- weekdays ---------------------------------------------------------------------------------


def test_weekday_of_known_dates() -> None:
    assert WEEKDAYS[weekday_of(0.0)] == "thu"  # 1970-01-01
    assert weekday_of(MONDAY) == 0
    assert weekday_of(MONDAY - 1e-6) == 6  # Sunday 23:59:59.999999
    assert weekday_of(-1.0) == 2  # 1969-12-31, a Wednesday
    assert weekday_of(MONDAY_2023) == 0
    assert weekday_of(MONDAY_2023 + 6 * DAY + 86399) == 6
    # local time: UTC+1 is Friday 00:00 when UTC is Thursday 23:00
    assert weekday_of(DAY - H, utc_offset_s=H) == 4
    assert weekday_of(DAY - H - 1, utc_offset_s=H) == 3
    # UTC-1 is still Wednesday at 1970-01-01 00:00 UTC
    assert weekday_of(0.0, utc_offset_s=-H) == 2


@given(
    t=st.integers(min_value=-(10**9), max_value=4 * 10**9),
    offset_min=st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_weekday_of_agrees_with_datetime(t: int, offset_min: int) -> None:
    tz = timezone(timedelta(minutes=offset_min))
    assert weekday_of(float(t), offset_min * 60.0) == datetime.fromtimestamp(t, tz=tz).weekday()


# --- rates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "rate"),
    [
        (MONDAY, 8.0),
        (MONDAY + 7.5 * H - 1e-6, 8.0),
        (MONDAY + 7.5 * H, 12.0),  # a step starts at its time
        (MONDAY + 21 * H, 12.0),
        (MONDAY + 22 * H, 4.0),
        (MONDAY + DAY - 1e-6, 4.0),  # the last step holds until midnight
        (MONDAY + 4 * DAY + 12 * H, 12.0),  # Friday
        (MONDAY + 5 * DAY, 10.0),  # Saturday
        (MONDAY + 6 * DAY + 6 * H, 10.0),  # Sunday
        (MONDAY + 6 * DAY + 12 * H, 20.0),
        (MONDAY + WEEK, 8.0),  # next Monday
        (MONDAY_2023 + 6 * DAY + 23 * H, 20.0),
        (0.0, 8.0),  # Thursday
        (-1.0, 4.0),  # Wednesday 23:59:59
    ],
)
def test_dose_rate_at_times(t: float, rate: float) -> None:
    s = schedule()
    assert s.dose_rate_ug_per_h(t) == rate
    if t == int(t):
        assert oracle_rate(s, t) == rate


def test_dose_rate_in_local_time() -> None:
    s = schedule(utc_offset_s=2 * H)  # local 07:30 Monday is 05:30 UTC
    assert s.dose_rate_ug_per_h(MONDAY + 5.5 * H - 1) == 8.0
    assert s.dose_rate_ug_per_h(MONDAY + 5.5 * H) == 12.0
    # local Monday 00:00 is Sunday 22:00 UTC: Sunday's 20 µg/h ends there
    assert s.dose_rate_ug_per_h(MONDAY - 2 * H - 1) == 20.0
    assert s.dose_rate_ug_per_h(MONDAY - 2 * H) == 8.0
    west = schedule(utc_offset_s=-5.5 * H)  # local midnight Monday is 05:30 UTC
    assert west.dose_rate_ug_per_h(MONDAY + 5 * H) == 20.0
    assert west.dose_rate_ug_per_h(MONDAY + 5.5 * H) == 8.0


@settings(max_examples=200)
@given(
    t=st.integers(min_value=0, max_value=3 * 10**9),
    offset_quarters=st.integers(min_value=-56, max_value=56),
)
def test_dose_rate_agrees_with_the_oracle(t: int, offset_quarters: int) -> None:
    s = schedule(utc_offset_s=offset_quarters * 900.0)
    assert s.dose_rate_ug_per_h(float(t)) == oracle_rate(s, float(t))


def test_daily_figures() -> None:
    s = schedule()
    assert [s.daily_dose_ug(d) for d in range(7)] == [242.0] * 5 + [240.0, 360.0]
    assert s.max_daily_dose_ug == 360.0
    assert s.mean_daily_dose_ug == pytest.approx(WEEK_DOSE / 7, rel=1e-15)
    assert s.max_dose_rate_ug_per_h == 20.0
    assert not s.is_constant
    c = DoseSchedule.constant(10.0, utc_offset_s=H)
    assert c.is_constant
    assert c.week == (((FlexStep(0.0, 10.0)),),) * 7
    assert c.utc_offset_s == H
    assert (c.max_daily_dose_ug, c.mean_daily_dose_ug) == (240.0, 240.0)
    assert DoseSchedule(week=((FlexStep(0.0, 10.0), FlexStep(H, 10.0)),) * 7).is_constant


# --- next change ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (MONDAY, MONDAY + 7.5 * H),
        (MONDAY + 1.0, MONDAY + 7.5 * H),
        (MONDAY + 7.5 * H, MONDAY + 22 * H),  # at a step: the following one
        (MONDAY + 23 * H, MONDAY + DAY),  # 4 → 8 µg/h at midnight
        (MONDAY + 4 * DAY + 23 * H, MONDAY + 5 * DAY),  # Friday 4 → Saturday 10
        # Saturday 10 µg/h: not at midnight (Sunday starts at 10), not at Sunday 06:00 (10
        # again), but at Sunday noon
        (MONDAY + 5 * DAY + H, MONDAY + 6 * DAY + 12 * H),
        (MONDAY + 6 * DAY + 13 * H, MONDAY + WEEK),  # Sunday 20 → Monday 8: across the week
        (MONDAY_2023 + 6 * DAY + 13 * H, MONDAY_2023 + WEEK),
    ],
)
def test_next_change(t: float, expected: float) -> None:
    s = schedule()
    assert s.next_change_s(t) == expected
    assert s.dose_rate_ug_per_h(expected) != s.dose_rate_ug_per_h(t)


def test_next_change_in_local_time() -> None:
    s = schedule(utc_offset_s=2 * H)
    assert s.next_change_s(MONDAY) == MONDAY + 5.5 * H  # local 02:00 → local 07:30
    assert s.next_change_s(MONDAY - 3 * H) == MONDAY - 2 * H  # Sunday 23:00 local → midnight


def test_next_change_a_week_ahead() -> None:
    # Constant 5 µg/h except Wednesdays 09:00-10:00 at 7 µg/h.
    plain = (FlexStep(0.0, 5.0),)
    wednesday = (FlexStep(0.0, 5.0), FlexStep(9 * H, 7.0), FlexStep(10 * H, 5.0))
    s = DoseSchedule(week=(plain, plain, wednesday, plain, plain, plain, plain))
    wed = MONDAY + 2 * DAY
    assert s.next_change_s(wed + 10 * H) == wed + WEEK + 9 * H
    assert s.next_change_s(wed + 9 * H) == wed + 10 * H


def test_constant_schedule_never_changes() -> None:
    assert DoseSchedule.constant(10.0).next_change_s(MONDAY_2023) is None
    equal_steps = DoseSchedule(week=((FlexStep(0.0, 3.0), FlexStep(8 * H, 3.0)),) * 7)
    assert equal_steps.next_change_s(MONDAY) is None


@settings(max_examples=100, deadline=None)
@given(t=st.integers(min_value=0, max_value=3 * 10**9), offset_quarters=st.integers(-56, 56))
def test_next_change_is_the_first_change_by_the_oracle(t: int, offset_quarters: int) -> None:
    s = schedule(utc_offset_s=offset_quarters * 900.0)
    change = s.next_change_s(float(t))
    assert change is not None
    assert change > t
    assert change == int(change)  # whole seconds here: every step and offset is
    rate = oracle_rate(s, float(t))
    assert oracle_rate(s, change) != rate
    # no change before it: the rate is the same at every half hour (the steps' grid) between
    for k in range(math.floor(t / 1800) + 1, math.ceil(change / 1800)):
        assert oracle_rate(s, k * 1800.0) == rate


# --- dose integrals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t0", "t1", "dose"),
    [
        (MONDAY, MONDAY + DAY, 242.0),
        (MONDAY, MONDAY + WEEK, WEEK_DOSE),
        (MONDAY + 7 * H, MONDAY + 8 * H, 0.5 * 8 + 0.5 * 12),
        (MONDAY - H, MONDAY + H, 20.0 + 8.0),  # across Sunday → Monday midnight
        (MONDAY + 5 * DAY, MONDAY + 7 * DAY, 600.0),  # the weekend
        (MONDAY, MONDAY + 5 * WEEK, 5 * WEEK_DOSE),  # 35 days
        # Monday 03:00 + 31 d 20 h = Thursday 23:00 four weeks later: 4 weeks, then Monday
        # from 03:00 (36 + 174 + 8), Tuesday, Wednesday, Thursday to 23:00 (60 + 174 + 4)
        (MONDAY + 3 * H, MONDAY + 3 * H + 31 * DAY + 20 * H, 4 * WEEK_DOSE + 218 + 484 + 238),
        (MONDAY + 10 * H, MONDAY + 10 * H, 0.0),
        (MONDAY + 10 * H, MONDAY + 9 * H, 0.0),  # backwards: nothing
    ],
)
def test_dose_hand_computed(t0: float, t1: float, dose: float) -> None:
    s = schedule()
    assert s.dose_ug(t0, t1) == pytest.approx(dose, rel=1e-12, abs=0.0)
    # the same local times at a realistic ROS time, and in another time zone
    assert s.dose_ug(t0 - MONDAY + MONDAY_2023, t1 - MONDAY + MONDAY_2023) == pytest.approx(
        dose, rel=1e-12, abs=0.0
    )
    east = schedule(utc_offset_s=5.5 * H)
    shifted = MONDAY_2023 - MONDAY - 5.5 * H
    assert east.dose_ug(t0 + shifted, t1 + shifted) == pytest.approx(dose, rel=1e-12, abs=0.0)


@settings(max_examples=25, deadline=None)
@given(
    t0=st.integers(min_value=0, max_value=2 * 10**9).map(float),
    span=st.floats(min_value=0.0, max_value=36 * DAY),
    offset_quarters=st.integers(-56, 56),
)
def test_dose_equals_brute_force_integral(t0: float, span: float, offset_quarters: int) -> None:
    s = schedule(utc_offset_s=offset_quarters * 900.0)
    assert s.dose_ug(t0, t0 + span) == pytest.approx(
        brute_force_dose(s, t0, t0 + span), rel=1e-9, abs=1e-9
    )


@settings(max_examples=200, deadline=None)
@given(
    a=st.floats(min_value=0.0, max_value=2e9),
    gaps=st.tuples(st.floats(0.0, 40 * DAY), st.floats(0.0, 40 * DAY)),
    offset_quarters=st.integers(-56, 56),
)
def test_dose_is_additive(a: float, gaps: tuple[float, float], offset_quarters: int) -> None:
    s = schedule(utc_offset_s=offset_quarters * 900.0)
    b = a + gaps[0]
    c = b + gaps[1]
    whole = s.dose_ug(a, c)
    assert s.dose_ug(a, b) + s.dose_ug(b, c) == pytest.approx(whole, rel=1e-9, abs=1e-9)
    assert 0.0 <= s.dose_ug(a, b) <= whole + 1e-9


def test_dose_over_many_weeks_is_exact() -> None:
    s = schedule(utc_offset_s=-3.75 * H)
    start = MONDAY_2023 + 3.75 * H  # local Monday 00:00
    for weeks in (1, 5, 52, 520):
        assert s.dose_ug(start, start + weeks * WEEK) == pytest.approx(
            weeks * WEEK_DOSE, rel=1e-12, abs=0.0
        )
    # and a 30-day span that ends mid-step, against its pieces
    end = start + 30 * DAY + 7 * H  # Wednesday 07:00 local, four weeks and two days later
    expected = 4 * WEEK_DOSE + 2 * 242.0 + 7 * 8.0
    assert s.dose_ug(start, end) == pytest.approx(expected, rel=1e-12, abs=0.0)


# --- validation ---------------------------------------------------------------------------------


def _week_with(day: tuple[FlexStep, ...], index: int = 2) -> tuple[tuple[FlexStep, ...], ...]:
    """A week of constant days, with ``day`` on ``WEEKDAYS[index]`` (Wednesday)."""
    plain = (FlexStep(0.0, 5.0),)
    return tuple(day if i == index else plain for i in range(7))


@pytest.mark.parametrize(
    ("week", "offset", "message"),
    [
        ((SATURDAY,) * 6, 0.0, "week: needs 7 days (got 6)"),
        ((SATURDAY,) * 8, 0.0, "week: needs 7 days (got 8)"),
        ((SATURDAY,) * 7, 14.5 * H, "utc_offset_s: must be within ±14 h"),
        ((SATURDAY,) * 7, -14.5 * H, "utc_offset_s: must be within ±14 h"),
        ((SATURDAY,) * 7, math.nan, "utc_offset_s"),
        (_week_with(()), 0.0, f"wed: needs 1 to {MAX_STEPS_PER_DAY} steps (0)"),
        (
            _week_with(tuple(FlexStep(k * 3000.0, 1.0) for k in range(25))),
            0.0,
            f"wed: needs 1 to {MAX_STEPS_PER_DAY} steps (25)",
        ),
        (_week_with((FlexStep(60.0, 1.0),)), 0.0, "wed: the first step must start at 00:00"),
        (
            _week_with((FlexStep(0.0, 1.0), FlexStep(2 * H, 2.0), FlexStep(H, 3.0))),
            0.0,
            "wed: steps must be in strictly increasing time order",
        ),
        (
            _week_with((FlexStep(0.0, 1.0), FlexStep(H, 2.0), FlexStep(H, 3.0))),
            0.0,
            "wed: steps must be in strictly increasing time order",
        ),
        (
            _week_with((FlexStep(0.0, 1.0), FlexStep(DAY, 2.0))),
            0.0,
            "wed: step time 86400.0 s is not within a day",
        ),
        (
            _week_with((FlexStep(0.0, 1.0), FlexStep(H, -2.0))),
            0.0,
            "wed: dose rate must be finite and >= 0",
        ),
        (_week_with((FlexStep(0.0, math.nan),)), 0.0, "wed: dose rate must be finite"),
        (_week_with((FlexStep(0.0, math.inf),), index=6), 0.0, "sun: dose rate must be finite"),
    ],
)
def test_invalid_schedule_rejected(
    week: tuple[tuple[FlexStep, ...], ...], offset: float, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        DoseSchedule(week=week, utc_offset_s=offset)
    assert str(info.value).startswith(message)


def test_limits_of_a_valid_schedule() -> None:
    full_day = tuple(FlexStep(k * H, float(k)) for k in range(MAX_STEPS_PER_DAY))  # 0 allowed
    s = DoseSchedule(week=_week_with(full_day), utc_offset_s=-14 * H)
    assert s.daily_dose_ug(2) == sum(range(24))
    assert DoseSchedule(week=(SATURDAY,) * 7, utc_offset_s=14 * H).utc_offset_s == 14 * H
    last = DoseSchedule(week=_week_with((FlexStep(0.0, 1.0), FlexStep(DAY - 1, 3601.0))))
    assert last.daily_dose_ug(2) == pytest.approx(86399 / 3600 + 3601 / 3600, rel=1e-12)


# --- known defect: offsets that are not whole seconds ------------------------------------------


class HangError(Exception):
    """The code run by :func:`run_isolated` was still running at its deadline."""


_HANG_EXIT = 124


def run_isolated(code: str, deadline_s: float = 3.0) -> str:
    """Run Python ``code`` in a child process and return what it prints.

    A hang cannot be interrupted reliably inside the test process, so the code runs in a child
    that exits (raising :class:`HangError` here) when it is still running ``deadline_s`` after
    the rig's modules are imported.
    """
    prelude = (
        "import os, signal\n"
        "import pump_rig.core.therapy_engine\n"
        f"signal.signal(signal.SIGALRM, lambda *_: os._exit({_HANG_EXIT}))\n"
        f"signal.setitimer(signal.ITIMER_REAL, {deadline_s!r})\n"
    )
    src = str(Path(pump_rig.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120.0,
        env={**os.environ, "PYTHONPATH": path},
        check=False,
    )
    if result.returncode == _HANG_EXIT:
        raise HangError(f"still running after {deadline_s} s")
    assert result.returncode == 0, result.stderr
    return result.stdout


# Regression: with a utc_offset_s that is not a whole number of seconds (utc_offset_h: 0.551,
# which parse_program used to accept), t + utc_offset_s could round to just below a local
# midnight; _locate then returned the previous day's last step, ending at t itself, and dose_ug
# looped forever.


def test_run_isolated_returns_the_output_or_raises_hang_error() -> None:
    code = "from pump_rig.core.dose_schedule import WEEKDAYS; print(WEEKDAYS[3])"
    assert run_isolated(code) == "thu\n"
    with pytest.raises(HangError):
        run_isolated("while True: pass", deadline_s=0.2)


def test_dose_with_an_offset_of_fractional_seconds_terminates() -> None:
    out = run_isolated(
        """
        from pump_rig.core.dose_schedule import DoseSchedule, FlexStep
        steps = (FlexStep(0.0, 8.0), FlexStep(27000.0, 12.0))
        s = DoseSchedule(week=(steps,) * 7, utc_offset_s=0.551 * 3600)  # 1983.6000000000001 s
        t0 = 433029.840293557
        print(repr(s.dose_ug(t0, t0 + 8 * 86400)))
        """
    )
    assert float(out) == pytest.approx(8 * (60.0 + 12 * 16.5), rel=1e-9)


def test_engine_with_an_offset_of_fractional_seconds_keeps_answering() -> None:
    # parse_program refuses such offsets (whole minutes only), so build the schedule directly.
    out = run_isolated(
        """
        import dataclasses
        from pump_rig.core.dose_schedule import DoseSchedule
        from pump_rig.core.program import default_drug_library, parse_program
        from pump_rig.core.therapy_engine import TherapyEngine
        program = parse_program('''
        name: odd-offset
        drug: baclofen
        concentration_ug_per_ml: 500.0
        mode: flex
        schedule:
          - days: all
            steps:
              - {at: "00:00", dose_rate_ug_per_h: 8.0}
              - {at: "07:30", dose_rate_ug_per_h: 12.0}
        reservoir: {capacity_ul: 20000.0, volume_ul: 18000.0, low_alarm_ul: 2000.0}
        ''')
        odd = DoseSchedule(week=program.schedule.week, utc_offset_s=0.551 * 3600)
        program = dataclasses.replace(program, schedule=odd)
        t0 = 433029.840293557
        engine = TherapyEngine(t_s=t0, library=default_drug_library())
        engine.set_program(t0, program)
        for k in range(1, 97):  # eight days, a command every two hours
            engine.command(t0 + k * 7200)
        print(repr(engine.snapshot(t0 + 8 * 86400).prescribed_volume_ul))
        """
    )
    assert float(out) == pytest.approx(8 * 258.0 / 500.0 * 1000.0, rel=1e-9)


def test_the_oracle_dates() -> None:
    # The constants the tests rely on, checked by datetime.
    assert datetime.fromtimestamp(MONDAY, tz=UTC).strftime("%Y-%m-%d %a %H:%M") == (
        "1970-01-05 Mon 00:00"
    )
    assert datetime.fromtimestamp(MONDAY_2023, tz=UTC).strftime("%Y-%m-%d %a") == "2023-11-13 Mon"
