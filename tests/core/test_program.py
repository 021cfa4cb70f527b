"""Therapy program format: valid files parse, every invalid kind is rejected naming the field."""

from __future__ import annotations

import json
import math
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pump_rig.core.dose_schedule import WEEKDAYS, FlexStep
from pump_rig.core.drug_library import DrugLibrary, parse_drug_library
from pump_rig.core.program import (
    DEFAULT_MAX_RATE_UL_PER_H,
    BolusPolicy,
    ProgramError,
    ProgramMode,
    RateBasis,
    TherapyProgram,
    daily_dose_to_rate_ul_per_h,
    default_drug_library,
    dose_rate_to_rate_ul_per_h,
    load_program_file,
    parse_program,
    rate_to_daily_dose_ug,
    titration_problem,
)

REPO = Path(__file__).resolve().parents[2]
LIB = default_drug_library()

VALID = """\
# comment
name: baclofen-constant
drug: baclofen
concentration_ug_per_ml: 500.0
mode: continuous
daily_dose_ug: 240.0          # exactly one of daily_dose_ug or rate_ul_per_h
reservoir:
  capacity_ul: 20000.0
  volume_ul: 18000.0
  low_alarm_ul: 2000.0
"""

# Weekdays: 8 µg/h to 07:30, 12 µg/h to 22:00, then 8 µL/h (= 4 µg/h at 500 µg/mL):
# 60 + 174 + 8 = 242 µg/day. Weekend: 10 µg/h = 240 µg/day.
FLEX = """\
name: baclofen-flex
drug: baclofen
concentration_ug_per_ml: 500.0
mode: flex
utc_offset_h: 1
schedule:
  - days: [mon, tue, wed, thu, fri]
    steps:
      - {at: "00:00", dose_rate_ug_per_h: 8.0}
      - {at: "07:30", dose_rate_ug_per_h: 12.0}
      - {at: "22:00", rate_ul_per_h: 8.0}
  - days: [sat, sun]
    steps:
      - {at: "00:00", dose_rate_ug_per_h: 10.0}
max_daily_dose_ug: 400.0
patient_bolus:
  dose_ug: 20.0
  duration_min: 10.0
  lockout_min: 180.0
  max_per_24h: 4
reservoir:
  capacity_ul: 20000.0
  volume_ul: 18000.0
  low_alarm_ul: 2000.0
  low_alarm_days: 7.0
"""


# FLEX up to its schedule, and a reservoir to end a program with.
HEAD = FLEX.split("schedule:")[0]
TAIL = "reservoir: {capacity_ul: 20000, volume_ul: 18000, low_alarm_ul: 2000}\n"
WEEKEND = '  - days: [sat, sun]\n    steps:\n      - {at: "00:00", dose_rate_ug_per_h: 10.0}\n'


def without_bolus(text: str) -> str:
    return text.split("patient_bolus:")[0] + "reservoir:" + text.split("reservoir:")[1]


def edit(old: str, new: str, text: str = VALID) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def flex_edit(old: str, new: str) -> str:
    return edit(old, new, FLEX)


def rejected(text: str, max_rate_ul_per_h: float = DEFAULT_MAX_RATE_UL_PER_H) -> ProgramError:
    with pytest.raises(ProgramError) as info:
        parse_program(text, max_rate_ul_per_h=max_rate_ul_per_h)
    return info.value


def continuous(
    *, drug: str = "baclofen", concentration: float = 500.0, daily_dose: float = 240.0
) -> TherapyProgram:
    return parse_program(
        edit("drug: baclofen", f"drug: {drug}")
        .replace("500.0", repr(concentration))
        .replace("240.0", repr(daily_dose))
    )


def flex(days_and_daily: dict[str, float], concentration: float = 500.0) -> TherapyProgram:
    """A flex program with one constant-rate step per day group (daily dose given)."""
    groups = "".join(
        f"  - days: {days}\n    steps:\n"
        f'      - {{at: "00:00", dose_rate_ug_per_h: {daily / 24.0!r}}}\n'
        for days, daily in days_and_daily.items()
    )
    return parse_program(
        f"""\
name: f
drug: baclofen
concentration_ug_per_ml: {concentration!r}
mode: flex
schedule:
{groups}reservoir: {{capacity_ul: 20000.0, volume_ul: 18000.0, low_alarm_ul: 2000.0}}
"""
    )


# --- valid continuous programs ----------------------------------------------------------------


def test_valid_program_parses_with_derived_rate() -> None:
    p = parse_program(VALID)
    assert p.name == "baclofen-constant"
    assert p.drug == "baclofen"
    assert p.mode is ProgramMode.CONTINUOUS
    assert p.concentration_ug_per_ml == 500.0
    assert p.daily_dose_ug == 240.0
    # 240 µg/day / 500 µg/mL = 0.48 mL/day = 480 µL / 24 h = 20 µL/h
    assert p.basal_rate_ul_per_h == pytest.approx(20.0, rel=1e-12)
    assert p.schedule.is_constant
    assert p.schedule.dose_rate_ug_per_h(12345.0) == 10.0
    assert p.schedule.utc_offset_s == 0.0
    assert p.reservoir_capacity_ul == 20000.0
    assert p.reservoir_volume_ul == 18000.0
    assert p.low_reservoir_ul == 2000.0
    assert p.low_reservoir_days is None
    assert p.rate_basis is RateBasis.DAILY_DOSE
    assert p.max_daily_dose_ug is None
    assert p.patient_bolus is None
    assert p.planned_max_daily_dose_ug() == 240.0
    assert p.daily_limit_ug(LIB.get("baclofen")) == 1000.0


def test_rate_given_derives_daily_dose() -> None:
    p = parse_program(edit("daily_dose_ug: 240.0", "rate_ul_per_h: 10"))
    assert p.basal_rate_ul_per_h == pytest.approx(10.0, rel=1e-12)
    assert p.daily_dose_ug == pytest.approx(120.0, rel=1e-12)
    assert p.rate_basis is RateBasis.RATE


def test_conversions_are_inverse() -> None:
    rate = daily_dose_to_rate_ul_per_h(240.0, 500.0)
    assert rate == pytest.approx(20.0)
    assert rate_to_daily_dose_ug(rate, 500.0) == pytest.approx(240.0)
    assert dose_rate_to_rate_ul_per_h(10.0, 500.0) == pytest.approx(20.0)


@pytest.mark.parametrize("number", ["2.4e2", "2.4E+2", "240", "24e1", "240.", "0.24e3", "+240"])
def test_number_spellings(number: str) -> None:
    # YAML 1.1 would read "24e1" as text; prescribers mean a number.
    assert parse_program(edit("240.0", number)).daily_dose_ug == 240.0


def test_drug_and_mode_are_case_insensitive_and_normalised() -> None:
    p = parse_program(edit("drug: baclofen", "drug: Baclofen").replace("continuous", "CONTINUOUS"))
    assert p.drug == "baclofen"
    assert p.mode is ProgramMode.CONTINUOUS


def test_field_order_does_not_matter() -> None:
    text = """\
reservoir: {low_alarm_ul: 2000, volume_ul: 18000, capacity_ul: 20000}
daily_dose_ug: 240
mode: continuous
concentration_ug_per_ml: 500
drug: baclofen
name: baclofen-constant
"""
    assert parse_program(text) == parse_program(VALID)


@pytest.mark.parametrize(
    "path",
    sorted((REPO / "config" / "programs").glob("*.yaml"))
    + sorted((REPO / "src" / "pump_rig" / "config" / "programs").glob("*.yaml")),
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_shipped_program_files_are_valid(path: Path) -> None:
    program = load_program_file(path)
    assert parse_program(program.to_yaml()) == program


def test_every_library_drug_is_accepted_within_its_limits() -> None:
    assert set(LIB.names()) == {
        "baclofen",
        "morphine",
        "hydromorphone",
        "fentanyl",
        "bupivacaine",
        "clonidine",
        "ziconotide",
    }
    for name in LIB.names():
        drug = LIB.get(name)
        highest, lowest = drug.max_concentration_ug_per_ml, drug.min_concentration_ug_per_ml
        # Exactly at the maximum daily dose is allowed. At the lowest concentration half of it
        # (morphine's whole 15 mg/day at 0.5 mg/mL would be 1250 µL/h, above the device limit).
        for concentration, daily in (
            (highest, drug.max_daily_dose_ug),
            (lowest, drug.max_daily_dose_ug / 2),
        ):
            p = continuous(drug=name.upper(), concentration=concentration, daily_dose=daily)
            assert (p.drug, p.concentration_ug_per_ml) == (name, concentration)
            assert p.daily_dose_ug == pytest.approx(daily, rel=1e-12)
            assert p.daily_limit_ug(drug) == drug.max_daily_dose_ug


def test_volume_equal_to_capacity_is_allowed() -> None:
    p = parse_program(edit("volume_ul: 18000.0", "volume_ul: 20000.0"))
    assert p.reservoir_volume_ul == p.reservoir_capacity_ul


def test_rate_exactly_at_device_limit_is_allowed() -> None:
    # Baclofen cannot run at 1000 µL/h all day within its daily maximum; for an hour it can.
    text = flex_edit("dose_rate_ug_per_h: 12.0", "rate_ul_per_h: 1000").replace(
        '"22:00"', '"08:30"'
    )
    text = edit("max_daily_dose_ug: 400.0", "max_daily_dose_ug: 1000", text)
    p = parse_program(without_bolus(text))
    assert p.schedule.week[0][1].dose_rate_ug_per_h == 500.0  # 1000 µL/h at 500 µg/mL
    assert p.daily_dose_ug == pytest.approx(60.0 + 500.0 + 4.0 * 15.5, rel=1e-12)
    # Any patient bolus on top of that basal would be above the device limit.
    error = rejected(edit("duration_min: 10.0", "duration_min: 180", text))  # 13.3 µL/h
    assert error.field == "patient_bolus.duration_min"


def test_utc_offset_and_low_alarm_days() -> None:
    p = parse_program(
        edit("mode: continuous", "mode: continuous\nutc_offset_h: -5.5").replace(
            "low_alarm_ul: 2000.0", "low_alarm_ul: 2000.0\n  low_alarm_days: 14"
        )
    )
    assert p.schedule.utc_offset_s == -5.5 * 3600
    assert p.low_reservoir_days == 14.0


# --- flex programs ------------------------------------------------------------------------------


def test_valid_flex_program_parses() -> None:
    p = parse_program(FLEX)
    assert p.mode is ProgramMode.FLEX
    assert p.rate_basis is RateBasis.DOSE_RATE
    assert p.schedule.utc_offset_s == 3600.0
    weekday = (FlexStep(0.0, 8.0), FlexStep(27000.0, 12.0), FlexStep(79200.0, 4.0))
    weekend = (FlexStep(0.0, 10.0),)
    assert p.schedule.week == (weekday,) * 5 + (weekend,) * 2
    assert p.daily_dose_ug == pytest.approx(242.0, rel=1e-12)  # the heaviest day
    assert p.schedule.mean_daily_dose_ug == pytest.approx((5 * 242 + 2 * 240) / 7, rel=1e-12)
    assert p.basal_rate_ul_per_h == pytest.approx((5 * 242 + 2 * 240) / 7 / 12, rel=1e-12)
    assert p.max_daily_dose_ug == 400.0
    assert p.daily_limit_ug(LIB.get("baclofen")) == 400.0
    assert p.patient_bolus == BolusPolicy(
        dose_ug=20.0, duration_s=600.0, lockout_s=10800.0, max_per_24h=4
    )
    assert p.planned_max_daily_dose_ug() == pytest.approx(242.0 + 80.0, rel=1e-12)
    assert p.low_reservoir_days == 7.0
    summary = p.summary()
    assert "flex, up to 242 µg/day" in summary
    assert "bolus 20 µg / 180 min lockout / max 4 per 24 h" in summary


def test_flex_days_default_to_all_and_accept_names_in_any_case() -> None:
    one_group = """\
name: f
drug: baclofen
concentration_ug_per_ml: 500
mode: flex
schedule:
  - steps: [{at: "00:00", dose_rate_ug_per_h: 10}, {at: "12:30:15", dose_rate_ug_per_h: 5}]
reservoir: {capacity_ul: 20000, volume_ul: 18000, low_alarm_ul: 2000}
"""
    p = parse_program(one_group)
    assert p.schedule.week == ((FlexStep(0.0, 10.0), FlexStep(45015.0, 5.0)),) * 7
    listed = edit(
        "  - steps:", "  - days: [Monday, TUE, wed, Thursday, fri, SAT, sun]\n    steps:", one_group
    )
    assert parse_program(listed) == p
    all_days = edit("  - steps:", "  - days: all\n    steps:", one_group)
    assert parse_program(all_days) == p


def test_flex_day_groups_may_list_days_in_any_order() -> None:
    p = flex({"[sun, mon]": 240.0, "[fri, tue, wed, thu, sat]": 120.0})
    dailies = [p.schedule.daily_dose_ug(d) for d in range(7)]
    assert dailies == pytest.approx([240.0, 120.0, 120.0, 120.0, 120.0, 120.0, 240.0], rel=1e-12)


def test_flex_step_given_as_volume_rate_is_a_dose_rate_at_the_concentration() -> None:
    p = parse_program(FLEX.replace("500.0", "2000.0"))
    # 8 µL/h at 2000 µg/mL = 16 µg/h
    assert p.schedule.week[0][2].dose_rate_ug_per_h == pytest.approx(16.0, rel=1e-12)


# --- round trip ------------------------------------------------------------------------------


def test_round_trip_of_examples() -> None:
    for text in (VALID, FLEX):
        p = parse_program(text)
        assert parse_program(p.to_yaml()) == p
    q = parse_program(edit("daily_dose_ug: 240.0", "rate_ul_per_h: 7.3"))
    assert parse_program(q.to_yaml()) == q
    assert "rate_ul_per_h: 7.3" in q.to_yaml()
    assert q.to_yaml().startswith("# pump_rig therapy program\n")


def test_flex_to_yaml_groups_equal_days() -> None:
    doc = yaml.safe_load(parse_program(FLEX).to_yaml())
    assert [g["days"] for g in doc["schedule"]] == [
        ["mon", "tue", "wed", "thu", "fri"],
        ["sat", "sun"],
    ]
    assert doc["schedule"][0]["steps"][1] == {"at": "07:30", "dose_rate_ug_per_h": 12.0}
    assert yaml.safe_load(flex({"all": 120.0}).to_yaml())["schedule"][0]["days"] == "all"


_name_chars = st.one_of(
    st.characters(
        max_codepoint=0xFFFF,
        blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"),
    ),
    st.just(" "),
)
_names = st.text(_name_chars, min_size=1, max_size=40).filter(lambda s: s.strip() != "")


def _reservoir_doc(capacity: float, volume_fraction: float, low_fraction: float) -> dict[str, Any]:
    return {
        "capacity_ul": capacity,
        "volume_ul": capacity * volume_fraction,
        "low_alarm_ul": capacity * low_fraction,
    }


def _text(name: str, doc: dict[str, Any]) -> str:
    # The name as a JSON string (valid YAML, quoted): YAML would misread some names plain.
    return f"name: {json.dumps(name)}\n" + yaml.safe_dump(doc, sort_keys=False)


@settings(max_examples=200, deadline=None)
@given(
    name=_names,
    drug=st.sampled_from(LIB.names()),
    concentration_fraction=st.floats(min_value=0.0, max_value=1.0),
    dose_fraction=st.floats(min_value=1e-6, max_value=0.999),
    by_rate=st.booleans(),
    capacity=st.floats(min_value=10.0, max_value=1e5),
    volume_fraction=st.floats(min_value=1e-6, max_value=1.0),
    low_fraction=st.floats(min_value=1e-6, max_value=0.99),
)
def test_round_trip_property_continuous(
    name: str,
    drug: str,
    concentration_fraction: float,
    dose_fraction: float,
    by_rate: bool,
    capacity: float,
    volume_fraction: float,
    low_fraction: float,
) -> None:
    d = LIB.get(drug)
    lo, hi = d.min_concentration_ug_per_ml, d.max_concentration_ug_per_ml
    concentration = lo + (hi - lo) * concentration_fraction
    daily = d.max_daily_dose_ug * dose_fraction
    rate = daily_dose_to_rate_ul_per_h(daily, concentration)
    assume(rate <= DEFAULT_MAX_RATE_UL_PER_H)
    doc: dict[str, Any] = {
        "drug": drug,
        "concentration_ug_per_ml": concentration,
        "mode": "continuous",
        ("rate_ul_per_h" if by_rate else "daily_dose_ug"): rate if by_rate else daily,
        "reservoir": _reservoir_doc(capacity, volume_fraction, low_fraction),
    }
    program = parse_program(_text(name, doc))
    assert program.name == name.strip()
    assert program.rate_basis is (RateBasis.RATE if by_rate else RateBasis.DAILY_DOSE)
    assert program.daily_dose_ug == pytest.approx(daily, rel=1e-9)
    assert parse_program(program.to_yaml()) == program


def _clock(at_s: int) -> str:
    h, rest = divmod(at_s, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}" if s == 0 else f"{h:02d}:{m:02d}:{s:02d}"


@st.composite
def flex_programs(draw: st.DrawFn) -> tuple[str, list[list[tuple[int, float]]], float]:
    """Program text, the week it describes ((at_s, dose µg/h) per day), and its concentration."""
    concentration = draw(st.floats(min_value=500.0, max_value=2000.0))
    group_of_day = draw(st.lists(st.integers(0, 6), min_size=7, max_size=7))
    week: list[list[tuple[int, float]]] = [[] for _ in range(7)]
    groups = []
    for g in sorted(set(group_of_day)):
        days = [d for d in range(7) if group_of_day[d] == g]
        unit = draw(st.sampled_from([1, 60, 900]))  # seconds, minutes, quarter hours
        ticks = draw(st.lists(st.integers(1, 86400 // unit - 1), max_size=23, unique=True))
        times = [tick * unit for tick in ticks]
        steps = []
        for at in [0, *sorted(times)]:
            dose_rate = draw(st.floats(min_value=0.01, max_value=30.0))  # at most 720 µg/day
            step: dict[str, Any] = {"at": _clock(at)}
            if draw(st.booleans()):
                step["rate_ul_per_h"] = dose_rate / concentration * 1000.0
            else:
                step["dose_rate_ug_per_h"] = dose_rate
            steps.append(step)
            for d in days:
                week[d].append((at, dose_rate))
        names = [WEEKDAYS[d] for d in draw(st.permutations(days))]
        groups.append({"days": "all" if len(days) == 7 else names, "steps": steps})
    doc: dict[str, Any] = {
        "drug": "baclofen",
        "concentration_ug_per_ml": concentration,
        "mode": "flex",
    }
    offset = draw(st.one_of(st.none(), st.integers(-56, 56).map(lambda q: q / 4)))
    if offset is not None:
        doc["utc_offset_h"] = offset
    doc["schedule"] = draw(st.permutations(groups))
    if draw(st.booleans()):
        doc["max_daily_dose_ug"] = draw(st.floats(min_value=961.0, max_value=1000.0))
    if draw(st.booleans()):
        duration = draw(st.floats(min_value=10.0, max_value=60.0))
        doc["patient_bolus"] = {
            "dose_ug": draw(st.floats(min_value=0.1, max_value=60.0)),
            "duration_min": duration,
            "lockout_min": draw(st.floats(min_value=duration, max_value=600.0)),
            "max_per_24h": draw(st.integers(1, 4)),
        }
    doc["reservoir"] = _reservoir_doc(
        draw(st.floats(min_value=10.0, max_value=1e5)),
        draw(st.floats(min_value=1e-6, max_value=1.0)),
        draw(st.floats(min_value=1e-6, max_value=0.99)),
    )
    return _text(draw(_names), doc), week, concentration


@settings(max_examples=200, deadline=None)
@given(case=flex_programs())
def test_round_trip_property_flex(case: tuple[str, list[list[tuple[int, float]]], float]) -> None:
    text, week, _concentration = case
    program = parse_program(text)
    assert program.mode is ProgramMode.FLEX
    for day, steps in zip(program.schedule.week, week, strict=True):
        assert [s.at_s for s in day] == [float(at) for at, _rate in steps]
        assert [s.dose_rate_ug_per_h for s in day] == pytest.approx(
            [rate for _at, rate in steps], rel=1e-12
        )
    again = parse_program(program.to_yaml())
    assert again == program
    assert again.to_yaml() == program.to_yaml()


@pytest.mark.parametrize(
    "name",
    [
        "yes",
        "1e3",
        "2.4E+2",
        "null",
        "~",
        "'quoted'",
        "a: b",
        "#x",
        "- x",
        "0x1F",
        "12:30",
        "1_000",
    ],
)
def test_round_trip_of_names_yaml_would_misread(name: str) -> None:
    program = parse_program(edit("name: baclofen-constant", f"name: {json.dumps(name)}"))
    assert program.name == name
    assert parse_program(program.to_yaml()) == program


# --- invalid programs: every kind, field named -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        # unknown fields, with the closest known one suggested
        (edit("daily_dose_ug:", "daily_dose:"), "daily_dose", ["unknown", "daily_dose_ug"]),
        (VALID + "colour: blue\n", "colour", ["unknown field"]),
        (edit("volume_ul:", "volum_ul:"), "reservoir.volum_ul", ["unknown", "volume_ul"]),
        (edit("  low_alarm_ul", "  extra: 1\n  low_alarm_ul"), "reservoir.extra", ["unknown"]),
        # missing required fields
        (edit("name: baclofen-constant\n", ""), "name", ["missing"]),
        (edit("drug: baclofen\n", ""), "drug", ["missing"]),
        (edit("concentration_ug_per_ml: 500.0\n", ""), "concentration_ug_per_ml", ["missing"]),
        (edit("mode: continuous\n", ""), "mode", ["missing"]),
        (VALID.split("reservoir:")[0], "reservoir", ["missing"]),
        (edit("  capacity_ul: 20000.0\n", ""), "reservoir.capacity_ul", ["missing"]),
        (edit("  volume_ul: 18000.0\n", ""), "reservoir.volume_ul", ["missing"]),
        (edit("  low_alarm_ul: 2000.0\n", ""), "reservoir.low_alarm_ul", ["missing"]),
        # exactly one of daily dose / rate
        (edit(VALID.splitlines(keepends=True)[5], ""), "daily_dose_ug", ["rate_ul_per_h"]),
        (VALID + "rate_ul_per_h: 20\n", "rate_ul_per_h", ["only one"]),
        # wrong types: bool and text are not numbers; text fields must be text
        (edit("240.0", "true"), "daily_dose_ug", ["number", "bool"]),
        (edit("240.0", "'240'"), "daily_dose_ug", ["number", "text"]),
        (edit("500.0", "[500]"), "concentration_ug_per_ml", ["number", "list"]),
        (edit("500.0", ""), "concentration_ug_per_ml", ["number", "nothing"]),
        (edit("capacity_ul: 20000.0", "capacity_ul: yes"), "reservoir.capacity_ul", ["number"]),
        (edit("name: baclofen-constant", "name: 42"), "name", ["text"]),
        (edit("name: baclofen-constant", "name: ''"), "name", ["empty"]),
        (edit("name: baclofen-constant", 'name: "a\\tb"'), "name", ["one line"]),
        (edit("name: baclofen-constant", "name: " + "x" * 81), "name", ["too long"]),
        (edit("drug: baclofen", "drug: 3"), "drug", ["text"]),
        (VALID.split("reservoir:")[0] + "reservoir: 5\n", "reservoir", ["mapping"]),
        (edit("mode: continuous", "mode: continuous\nutc_offset_h: 14.5"), "utc_offset_h", ["14"]),
        (edit("mode: continuous", "mode: continuous\nutc_offset_h: x"), "utc_offset_h", ["number"]),
        (
            edit("mode: continuous", "mode: continuous\nutc_offset_h: 0.551"),
            "utc_offset_h",
            ["whole number of minutes", "0.551"],
        ),
        # non-positive and non-finite numbers
        (edit("volume_ul: 18000.0", "volume_ul: -5"), "reservoir.volume_ul", ["> 0", "-5"]),
        (edit("volume_ul: 18000.0", "volume_ul: 0"), "reservoir.volume_ul", ["> 0"]),
        (edit("500.0", "0.0"), "concentration_ug_per_ml", ["> 0"]),
        (edit("500.0", "-500"), "concentration_ug_per_ml", ["> 0"]),
        (edit("240.0", ".nan"), "daily_dose_ug", ["finite"]),
        (edit("240.0", ".inf"), "daily_dose_ug", ["finite"]),
        (edit("240.0", "-.inf"), "daily_dose_ug", ["finite"]),
        (edit("240.0", "1" + "0" * 400), "daily_dose_ug", ["finite"]),
        (edit("capacity_ul: 20000.0", "capacity_ul: -1"), "reservoir.capacity_ul", ["> 0"]),
        (edit("low_alarm_ul: 2000.0", "low_alarm_ul: 0"), "reservoir.low_alarm_ul", ["> 0"]),
        (
            edit("low_alarm_ul: 2000.0", "low_alarm_ul: 2000.0\n  low_alarm_days: 0"),
            "reservoir.low_alarm_days",
            ["> 0"],
        ),
        # unknown drug (close match suggested, known ones listed), unknown mode
        (
            edit("drug: baclofen", "drug: baclofn"),
            "drug",
            ["did you mean 'baclofen'?", "ziconotide"],
        ),
        (edit("drug: baclofen", "drug: aspirin"), "drug", ["unknown drug", "morphine"]),
        (edit("mode: continuous", "mode: bolus"), "mode", ["unknown mode", "continuous", "flex"]),
        # cross-field rules
        (edit("volume_ul: 18000.0", "volume_ul: 20000.5"), "reservoir.volume_ul", ["capacity"]),
        (edit("low_alarm_ul: 2000.0", "low_alarm_ul: 20000"), "reservoir.low_alarm_ul", []),
        (VALID + "schedule: []\n", "schedule", ["only for mode: flex"]),
        # device limit: 240000 µg/day at 500 µg/mL is 20000 µL/h
        (edit("240.0", "240000"), "daily_dose_ug", ["device limit", "1000"]),
        (edit("daily_dose_ug: 240.0", "rate_ul_per_h: 1000.5"), "rate_ul_per_h", ["limit"]),
        # duplicate keys are not silently "last one wins"
        (VALID + "name: other\n", "name", ["duplicate"]),
    ],
)
def test_invalid_program_rejected_naming_field(text: str, field: str, words: list[str]) -> None:
    error = rejected(text)
    assert error.field == field
    message = str(error)
    assert message.startswith(f"{field}: ")
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        # which weekdays: every day exactly once
        (flex_edit("[sat, sun]", "[sat]"), "schedule", ["no steps for sun"]),
        (
            flex_edit("  - days: [sat, sun]", "  - days: [sat, sun, fri]"),
            "schedule[1].days",
            ["fri", "already scheduled"],
        ),
        (flex_edit("[sat, sun]", "[sat, sun, sat]"), "schedule[1].days", ["sat given twice"]),
        (
            flex_edit("[sat, sun]", "[sat, sunday, xyz]"),
            "schedule[1].days",
            ["unknown weekday 'xyz'"],
        ),
        (flex_edit("[sat, sun]", "[sat, 7]"), "schedule[1].days", ["unknown weekday 7"]),
        (flex_edit("[sat, sun]", "[]"), "schedule[1].days", ["'all' or a list of weekdays"]),
        (flex_edit("[sat, sun]", "weekend"), "schedule[1].days", ["'all' or a list of weekdays"]),
        (flex_edit("[sat, sun]", "all"), "schedule[1].days", ["mon", "already scheduled"]),
        # the schedule's shape
        (flex_edit("schedule:", "schedulez:"), "schedulez", ["did you mean 'schedule'?"]),
        (HEAD + TAIL, "schedule", ["missing"]),
        (HEAD + "schedule: []\n" + TAIL, "schedule", ["list of day groups"]),
        (HEAD + "schedule: {mon: 1}\n" + TAIL, "schedule", ["list of day groups"]),
        (
            flex_edit("  - days: [sat, sun]\n    steps:", "  - days: [sat, sun]\n    stepz:"),
            "schedule[1].stepz",
            ["did you mean 'steps'?"],
        ),
        (
            flex_edit("  - days: [sat, sun]\n", "  - days: [sat, sun]\n    colour: red\n"),
            "schedule[1].colour",
            ["unknown field"],
        ),
        (
            flex_edit(WEEKEND, "  - days: [sat, sun]\n"),
            "schedule[1].steps",
            ["missing"],
        ),
        (
            flex_edit(WEEKEND, "  - days: [sat, sun]\n    steps: []\n"),
            "schedule[1].steps",
            ["list of steps"],
        ),
        (
            flex_edit("  - days: [sat, sun]\n", "  - 5\n  - days: [sat, sun]\n"),
            "schedule[1]",
            ["mapping"],
        ),
        (
            flex_edit("mode: flex", "mode: flex\ndaily_dose_ug: 240"),
            "daily_dose_ug",
            ["not for mode: flex"],
        ),
        (
            flex_edit("mode: flex", "mode: flex\nrate_ul_per_h: 20"),
            "rate_ul_per_h",
            ["not for mode: flex"],
        ),
        # steps: in time order, no overlaps, first at 00:00
        (
            flex_edit('"22:00"', '"07:00"'),
            "schedule[0].steps[2].at",
            ["07:00 is not after", "07:30", "time order"],
        ),
        (
            flex_edit('"22:00"', '"07:30"'),
            "schedule[0].steps[2].at",
            ["07:30 is not after", "07:30"],
        ),
        (
            flex_edit('"00:00", dose_rate_ug_per_h: 8.0', '"00:15", dose_rate_ug_per_h: 8.0'),
            "schedule[0].steps[0].at",
            ["must start at 00:00"],
        ),
        (
            flex_edit('{at: "00:00", dose_rate_ug_per_h: 10.0}', "{dose_rate_ug_per_h: 10.0}"),
            "schedule[1].steps[0].at",
            ["missing"],
        ),
        # times: quoted HH:MM[:SS] of one day
        (
            flex_edit('"22:00"', "22:00"),
            "schedule[0].steps[2].at",
            ['quoted time "HH:MM"', "got 1320"],
        ),
        (flex_edit('"22:00"', "22"), "schedule[0].steps[2].at", ["quoted time"]),
        (flex_edit('"22:00"', '"7:30"'), "schedule[0].steps[2].at", ["HH:MM[:SS]", "'7:30'"]),
        (flex_edit('"22:00"', '"24:00"'), "schedule[0].steps[2].at", ["HH:MM[:SS]"]),
        (flex_edit('"22:00"', '"22:60"'), "schedule[0].steps[2].at", ["HH:MM[:SS]"]),
        (flex_edit('"22:00"', '"22:00:60"'), "schedule[0].steps[2].at", ["HH:MM[:SS]"]),
        (flex_edit('"22:00"', '"10pm"'), "schedule[0].steps[2].at", ["HH:MM[:SS]"]),
        # rates: exactly one per step, positive, under the device limit
        (
            flex_edit("rate_ul_per_h: 8.0}", "rate_ul_per_h: 8.0, dose_rate_ug_per_h: 4}"),
            "schedule[0].steps[2]",
            ["exactly one"],
        ),
        (
            flex_edit('{at: "22:00", rate_ul_per_h: 8.0}', '{at: "22:00"}'),
            "schedule[0].steps[2]",
            ["exactly one"],
        ),
        (
            flex_edit("dose_rate_ug_per_h: 12.0", "dose_rate_ug_per_h: 0"),
            "schedule[0].steps[1].dose_rate_ug_per_h",
            ["> 0"],
        ),
        (
            flex_edit("dose_rate_ug_per_h: 12.0", "dose_rate_ug_per_h: -1"),
            "schedule[0].steps[1].dose_rate_ug_per_h",
            ["> 0"],
        ),
        (
            flex_edit("rate_ul_per_h: 8.0", "rate_ul_per_h: .nan"),
            "schedule[0].steps[2].rate_ul_per_h",
            ["finite"],
        ),
        (
            flex_edit("dose_rate_ug_per_h: 12.0", "dose_rate_ug_per_h: 501"),
            "schedule[0].steps[1].dose_rate_ug_per_h",
            ["1002 µL/h", "device limit of 1000 µL/h"],
        ),
        (
            flex_edit("rate_ul_per_h: 8.0", "rate_ul_per_h: 1000.5"),
            "schedule[0].steps[2].rate_ul_per_h",
            ["device limit"],
        ),
        (
            flex_edit("dose_rate_ug_per_h: 12.0", "dose_rate_ug_per_h: 12.0, colour: red"),
            "schedule[0].steps[1].colour",
            ["unknown field"],
        ),
    ],
)
def test_invalid_flex_program_rejected_naming_field(
    text: str, field: str, words: list[str]
) -> None:
    error = rejected(text)
    assert error.field == field
    message = str(error)
    assert message.startswith(f"{field}: ")
    for word in words:
        assert word in message


def _steps(n: int) -> str:
    """n steps: hourly from 00:00 (alternating 1 and 2 µg/h), then 23:30."""
    times = [f"{h:02d}:00" for h in range(24)] + ["23:30"]
    return "".join(
        f'      - {{at: "{at}", dose_rate_ug_per_h: {1.0 + i % 2}}}\n'
        for i, at in enumerate(times[:n])
    )


def test_at_most_24_steps_a_day() -> None:
    p = parse_program(f"{HEAD}schedule:\n  - days: all\n    steps:\n{_steps(24)}{TAIL}")
    assert len(p.schedule.week[0]) == 24
    error = rejected(f"{HEAD}schedule:\n  - days: all\n    steps:\n{_steps(25)}{TAIL}")
    assert error.field == "schedule[0].steps"
    assert "25 steps; at most 24 per day" in str(error)


@pytest.mark.parametrize(
    ("old", "new", "field", "words"),
    [
        ("dose_ug: 20.0", "dose_ug: 0", "patient_bolus.dose_ug", ["> 0"]),
        ("dose_ug: 20.0", "dose_ug: -20", "patient_bolus.dose_ug", ["> 0"]),
        ("  dose_ug: 20.0\n", "", "patient_bolus.dose_ug", ["missing"]),
        ("  duration_min: 10.0\n", "", "patient_bolus.duration_min", ["missing"]),
        ("  lockout_min: 180.0\n", "", "patient_bolus.lockout_min", ["missing"]),
        ("  max_per_24h: 4\n", "", "patient_bolus.max_per_24h", ["missing"]),
        ("duration_min: 10.0", "duration_min: .inf", "patient_bolus.duration_min", ["finite"]),
        (
            "lockout_min: 180.0",
            "lockout_min: 5",
            "patient_bolus.lockout_min",
            ["shorter than the bolus duration"],
        ),
        ("max_per_24h: 4", "max_per_24h: 0", "patient_bolus.max_per_24h", ["1 to 48"]),
        ("max_per_24h: 4", "max_per_24h: 49", "patient_bolus.max_per_24h", ["1 to 48"]),
        ("max_per_24h: 4", "max_per_24h: 2.5", "patient_bolus.max_per_24h", ["whole number"]),
        ("max_per_24h: 4", "max_per_24h: true", "patient_bolus.max_per_24h", ["whole number"]),
        ("max_per_24h: 4", "max_per_24h: '4'", "patient_bolus.max_per_24h", ["whole number"]),
        (
            "lockout_min: 180.0",
            "lockout_h: 3",
            "patient_bolus.lockout_h",
            ["wrong unit", "lockout_min"],
        ),
        (
            "duration_min: 10.0",
            "duration_s: 600",
            "patient_bolus.duration_s",
            ["wrong unit", "duration_min"],
        ),
        ("dose_ug: 20.0", "dose_mg: 0.02", "patient_bolus.dose_mg", ["wrong unit", "dose_ug"]),
        (
            "lockout_min: 180.0",
            "lockout_min: 180.0\n  colour: red",
            "patient_bolus.colour",
            ["unknown"],
        ),
    ],
)
def test_invalid_patient_bolus_rejected_naming_field(
    old: str, new: str, field: str, words: list[str]
) -> None:
    error = rejected(flex_edit(old, new))
    assert error.field == field
    assert str(error).startswith(f"{field}: ")
    for word in words:
        assert word in str(error)


def test_patient_bolus_must_be_a_mapping() -> None:
    text = (
        FLEX.split("patient_bolus:")[0]
        + "patient_bolus: 3\nreservoir:"
        + FLEX.split("reservoir:")[1]
    )
    error = rejected(text)
    assert (error.field, error.message) == (
        "patient_bolus",
        "must be a mapping of fields (got integer)",
    )


def test_patient_bolus_with_the_lockout_equal_to_the_duration_is_allowed() -> None:
    p = parse_program(flex_edit("lockout_min: 180.0", "lockout_min: 10"))
    assert p.patient_bolus is not None
    assert p.patient_bolus.lockout_s == p.patient_bolus.duration_s == 600.0


# --- daily and device limits ---------------------------------------------------------------------


def test_max_daily_dose_above_the_drug_maximum_is_rejected() -> None:
    error = rejected(flex_edit("max_daily_dose_ug: 400.0", "max_daily_dose_ug: 1000.5"))
    assert error.field == "max_daily_dose_ug"
    assert "1000.5 µg is above baclofen's maximum daily dose of 1000 µg" in str(error)
    assert (
        parse_program(
            flex_edit("max_daily_dose_ug: 400.0", "max_daily_dose_ug: 1000")
        ).max_daily_dose_ug
        == 1000.0
    )


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (edit("240.0", "1000.5"), "daily_dose_ug"),  # above the drug's 1000 µg/day
        (
            edit("daily_dose_ug: 240.0", "daily_dose_ug: 240.0\nmax_daily_dose_ug: 239"),
            "daily_dose_ug",
        ),
        (edit("daily_dose_ug: 240.0", "rate_ul_per_h: 84"), "rate_ul_per_h"),  # 1008 µg/day
        (flex_edit("max_daily_dose_ug: 400.0", "max_daily_dose_ug: 241.9"), "schedule"),  # 242
    ],
)
def test_basal_above_the_daily_maximum_is_rejected(text: str, field: str) -> None:
    error = rejected(text)
    assert error.field == field
    assert "µg/day is above the daily maximum" in str(error)


def test_basal_plus_boluses_above_the_daily_maximum_is_rejected() -> None:
    # 242 µg/day + 4 x 40 µg = 402 µg > 400 µg
    error = rejected(flex_edit("dose_ug: 20.0", "dose_ug: 40.0"))
    assert error.field == "patient_bolus.max_per_24h"
    assert "402 µg, above the daily maximum of 400 µg" in str(error)
    # the drug's maximum when the program gives none: 242 + 20 x 38 = 1002 > 1000
    text = flex_edit("max_daily_dose_ug: 400.0\n", "").replace("max_per_24h: 4", "max_per_24h: 38")
    error = rejected(text.replace("lockout_min: 180.0", "lockout_min: 10"))
    assert error.field == "patient_bolus.max_per_24h"
    assert "above the daily maximum of 1000 µg" in str(error)
    # exactly at the maximum is allowed: 242 + 4 x 39.5 = 400
    assert parse_program(
        flex_edit("dose_ug: 20.0", "dose_ug: 39.5")
    ).planned_max_daily_dose_ug() == pytest.approx(400.0)


def test_bolus_rate_on_top_of_the_basal_above_the_device_limit_is_rejected() -> None:
    # 20 µg over 1 min at 500 µg/mL is 2400 µL/h
    error = rejected(flex_edit("duration_min: 10.0", "duration_min: 1"))
    assert error.field == "patient_bolus.duration_min"
    assert "device limit of 1000 µL/h" in str(error)
    # 20 µg over 2.5 min is 960 µL/h; with the top basal rate (24 µL/h) 984: allowed
    assert (
        parse_program(flex_edit("duration_min: 10.0", "duration_min: 2.5")).patient_bolus
        is not None
    )
    # ... but not with a device limit of 980 µL/h
    error = rejected(flex_edit("duration_min: 10.0", "duration_min: 2.5"), max_rate_ul_per_h=980.0)
    assert error.field == "patient_bolus.duration_min"
    assert "984 µL/h" in str(error)


@pytest.mark.parametrize(
    ("text", "field", "fixed"),
    [
        (edit("daily_dose_ug: 240.0", "daily_dose_mg: 0.24"), "daily_dose_mg", "daily_dose_ug"),
        (
            edit("concentration_ug_per_ml: 500.0", "concentration_mg_per_ml: 0.5"),
            "concentration_mg_per_ml",
            "concentration_ug_per_ml",
        ),
        (edit("daily_dose_ug: 240.0", "rate_ml_per_h: 0.02"), "rate_ml_per_h", "rate_ul_per_h"),
        (edit("volume_ul: 18000.0", "volume_ml: 18"), "reservoir.volume_ml", "volume_ul"),
        (edit("capacity_ul: 20000.0", "capacity_ml: 20"), "reservoir.capacity_ml", "capacity_ul"),
        (
            edit("max_daily_dose_ug: 400.0", "max_daily_dose_mg: 0.4", FLEX),
            "max_daily_dose_mg",
            "max_daily_dose_ug",
        ),
        (
            flex_edit("rate_ul_per_h: 8.0", "rate_ml_per_h: 0.008"),
            "schedule[0].steps[2].rate_ml_per_h",
            "rate_ul_per_h",
        ),
        (
            flex_edit("dose_rate_ug_per_h: 12.0", "dose_rate_mg_per_h: 0.012"),
            "schedule[0].steps[1].dose_rate_mg_per_h",
            "dose_rate_ug_per_h",
        ),
    ],
)
def test_wrong_units_are_named(text: str, field: str, fixed: str) -> None:
    error = rejected(text)
    assert error.field == field
    assert "wrong unit" in str(error)
    assert repr(fixed) in str(error)


@pytest.mark.parametrize(
    ("drug", "concentration", "words"),
    [
        ("baclofen", 5000.0, ["5000 µg/mL is outside the library range 50–2000 µg/mL"]),
        ("baclofen", 0.5, ["0.5 µg/mL", "outside"]),  # mg/mL typed where µg/mL is wanted
        ("ziconotide", 500.0, ["ziconotide", "25–100 µg/mL"]),
        ("morphine", 499.0, ["morphine", "500–20000 µg/mL"]),
    ],
)
def test_concentration_outside_the_library_range_is_rejected(
    drug: str, concentration: float, words: list[str]
) -> None:
    error = rejected(
        edit("drug: baclofen", f"drug: {drug}")
        .replace("500.0", repr(concentration))
        .replace("240.0", "10")
    )
    assert error.field == "concentration_ug_per_ml"
    for word in words:
        assert word in str(error)


def test_error_message_format() -> None:
    error = rejected(edit("volume_ul: 18000.0", "volume_ul: -5"))
    assert str(error) == "reservoir.volume_ul: must be > 0 (got -5)"
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", ["empty"]),
        ("# only a comment\n", ["empty"]),
        ("- a\n- b\n", ["mapping", "list"]),
        ("just text\n", ["mapping", "text"]),
        ("name: [unclosed\n", ["YAML syntax", "line"]),
        ("name: a\n  bad: indent\n", ["YAML syntax"]),
        ("{1: 2}\n", ["field names must be text"]),
        ("x" * 70000, ["too long"]),
    ],
)
def test_malformed_text_rejected(text: str, words: list[str]) -> None:
    message = str(rejected(text))
    for word in words:
        assert word in message


def test_lower_device_limit_argument() -> None:
    assert parse_program(VALID, max_rate_ul_per_h=20.0).basal_rate_ul_per_h <= 20.0
    error = rejected(VALID, max_rate_ul_per_h=19.9)
    assert error.field == "daily_dose_ug"
    assert "device limit of 19.9 µL/h" in str(error)
    for bad in (math.nan, math.inf, 0.0, -1.0):
        with pytest.raises(ValueError, match="max_rate_ul_per_h"):
            parse_program(VALID, max_rate_ul_per_h=bad)


def test_rate_exactly_at_a_lower_device_limit_is_allowed() -> None:
    text = edit("daily_dose_ug: 240.0", "rate_ul_per_h: 7.3").replace("500.0", "1234.5")
    assert parse_program(text, max_rate_ul_per_h=7.3).basal_rate_ul_per_h == pytest.approx(7.3)


def test_source_prefixes_message() -> None:
    with pytest.raises(ProgramError) as info:
        parse_program(edit("mode: continuous", "mode: bolus"), source="set_program")
    assert str(info.value).startswith("set_program: mode: unknown mode")
    assert info.value.field == "mode"
    assert info.value.source == "set_program"


def test_program_is_checked_against_the_given_library() -> None:
    library = parse_drug_library(
        """\
drugs:
  baclofen:
    dose_unit: ug
    concentration_ug_per_ml: {min: 50, max: 400}
    max_daily_dose_ug: 200
    max_daily_increase: {percent: 10}
    source: a stricter bench
"""
    )
    error = rejected_with(VALID, library)
    assert error.field == "concentration_ug_per_ml"
    error = rejected_with(VALID.replace("500.0", "400.0"), library)
    assert error.field == "daily_dose_ug"
    assert "daily maximum of 200 µg" in str(error)
    error = rejected_with(edit("drug: baclofen", "drug: morphine"), library)
    assert error.field == "drug"
    assert "known: baclofen)" in str(error)


def rejected_with(text: str, library: DrugLibrary) -> ProgramError:
    with pytest.raises(ProgramError) as info:
        parse_program(text, library=library)
    return info.value


# --- titration ------------------------------------------------------------------------------------


def test_titration_problem() -> None:
    baclofen = LIB.get("baclofen")
    current = continuous(daily_dose=240.0)
    assert titration_problem(None, current, baclofen) == ""  # a first program titrates nothing
    assert titration_problem(current, continuous(daily_dose=312.0), baclofen) == ""  # +30 %
    assert titration_problem(current, continuous(daily_dose=100.0), baclofen) == ""  # down
    assert titration_problem(current, current, baclofen) == ""
    problem = titration_problem(current, continuous(daily_dose=313.0), baclofen)
    assert "daily dose rises from 240 to 313 µg/day (+73)" in problem
    assert "baclofen's titration limit is 30 % per change (+72 µg/day from here)" in problem
    # another drug is a new therapy, not a titration step
    morphine = continuous(drug="morphine", concentration=1000.0, daily_dose=5000.0)
    assert titration_problem(current, morphine, LIB.get("morphine")) == ""


def test_titration_problem_with_an_absolute_limit() -> None:
    ziconotide = LIB.get("ziconotide")
    current = continuous(drug="ziconotide", concentration=25.0, daily_dose=10.0)
    allowed = continuous(drug="ziconotide", concentration=25.0, daily_dose=12.4)
    too_much = continuous(drug="ziconotide", concentration=25.0, daily_dose=12.5)
    assert titration_problem(current, allowed, ziconotide) == ""
    assert "2.4 µg/day per change" in titration_problem(current, too_much, ziconotide)


def test_titration_compares_the_heaviest_day_of_flex_programs() -> None:
    baclofen = LIB.get("baclofen")
    current = continuous(daily_dose=240.0)
    # mean 120 µg/day, but Monday's 312 is +30 %: allowed
    allowed = flex({"[mon]": 312.0, "[tue, wed, thu, fri, sat, sun]": 88.0})
    assert titration_problem(current, allowed, baclofen) == ""
    # Monday's 320 is +33 %, though the mean falls
    heavier = flex({"[mon]": 320.0, "[tue, wed, thu, fri, sat, sun]": 88.0})
    assert heavier.schedule.mean_daily_dose_ug < 240.0
    assert "rises from 240 to 320 µg/day" in titration_problem(current, heavier, baclofen)
    # and from a flex program, its heaviest day is the reference
    assert titration_problem(heavier, continuous(daily_dose=416.0), baclofen) == ""


# --- files -------------------------------------------------------------------------------------


def test_load_program_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(FLEX, encoding="utf-8")
    assert load_program_file(path) == parse_program(FLEX)


def test_load_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ProgramError, match="file not found") as info:
        load_program_file(path)
    assert str(path) in str(info.value)


def test_load_directory_names_path(tmp_path: Path) -> None:
    with pytest.raises(ProgramError, match="not a regular file") as info:
        load_program_file(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_load_yaml_syntax_error_names_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(VALID + "reservoir: [\n", encoding="utf-8")
    with pytest.raises(ProgramError) as info:
        load_program_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: YAML syntax error at line ")


def test_load_invalid_field_names_path_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(flex_edit('"22:00"', '"07:00"'), encoding="utf-8")
    with pytest.raises(ProgramError) as info:
        load_program_file(path)
    assert str(info.value).startswith(f"{path}: schedule[0].steps[2].at: 07:00 is not after")
    assert info.value.field == "schedule[0].steps[2].at"


def test_load_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(VALID.replace("comment", "caf\xe9").encode("latin-1"))
    with pytest.raises(ProgramError, match="UTF-8"):
        load_program_file(path)


def test_summary_mentions_rate_and_drug() -> None:
    summary = parse_program(VALID).summary()
    assert summary == "baclofen-constant: baclofen 500 µg/mL, 240 µg/day (mean 20 µL/h)"
    assert set(summary) <= set(string.printable) | set("µ")
