"""Therapy program format: valid files parse, every invalid kind is rejected naming the field."""

from __future__ import annotations

import math
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pump_rig.core.program import (
    DEFAULT_MAX_RATE_UL_PER_H,
    KNOWN_DRUGS,
    ProgramError,
    ProgramMode,
    RateBasis,
    TherapyProgram,
    daily_dose_to_rate_ul_per_h,
    load_program_file,
    parse_program,
    rate_to_daily_dose_ug,
)

REPO = Path(__file__).resolve().parents[2]

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


def edit(old: str, new: str, text: str = VALID) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def rejected(text: str, max_rate_ul_per_h: float = DEFAULT_MAX_RATE_UL_PER_H) -> ProgramError:
    with pytest.raises(ProgramError) as info:
        parse_program(text, max_rate_ul_per_h=max_rate_ul_per_h)
    return info.value


# --- valid programs -------------------------------------------------------------------------


def test_valid_program_parses_with_derived_rate() -> None:
    p = parse_program(VALID)
    assert p.name == "baclofen-constant"
    assert p.drug == "baclofen"
    assert p.mode is ProgramMode.CONTINUOUS
    assert p.concentration_ug_per_ml == 500.0
    assert p.daily_dose_ug == 240.0
    # 240 µg/day / 500 µg/mL = 0.48 mL/day = 480 µL / 24 h = 20 µL/h
    assert p.basal_rate_ul_per_h == pytest.approx(20.0, rel=1e-12)
    assert p.reservoir_capacity_ul == 20000.0
    assert p.reservoir_volume_ul == 18000.0
    assert p.low_reservoir_ul == 2000.0
    assert p.rate_basis is RateBasis.DAILY_DOSE


def test_rate_given_derives_daily_dose() -> None:
    p = parse_program(edit("daily_dose_ug: 240.0", "rate_ul_per_h: 10"))
    assert p.basal_rate_ul_per_h == 10.0
    assert p.daily_dose_ug == pytest.approx(120.0, rel=1e-12)
    assert p.rate_basis is RateBasis.RATE


def test_conversions_are_inverse() -> None:
    rate = daily_dose_to_rate_ul_per_h(240.0, 500.0)
    assert rate == pytest.approx(20.0)
    assert rate_to_daily_dose_ug(rate, 500.0) == pytest.approx(240.0)


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


def test_all_known_drugs_accepted() -> None:
    assert {
        "baclofen",
        "morphine",
        "hydromorphone",
        "fentanyl",
        "bupivacaine",
        "clonidine",
        "ziconotide",
    } == KNOWN_DRUGS
    for drug in KNOWN_DRUGS:
        assert parse_program(edit("drug: baclofen", f"drug: {drug}")).drug == drug


def test_volume_equal_to_capacity_is_allowed() -> None:
    p = parse_program(edit("volume_ul: 18000.0", "volume_ul: 20000.0"))
    assert p.reservoir_volume_ul == p.reservoir_capacity_ul


def test_rate_exactly_at_device_limit_is_allowed() -> None:
    p = parse_program(edit("daily_dose_ug: 240.0", "rate_ul_per_h: 1000.0"))
    assert p.basal_rate_ul_per_h == DEFAULT_MAX_RATE_UL_PER_H


# --- round trip ------------------------------------------------------------------------------


def test_round_trip_of_example() -> None:
    p = parse_program(VALID)
    assert parse_program(p.to_yaml()) == p
    q = parse_program(edit("daily_dose_ug: 240.0", "rate_ul_per_h: 7.3"))
    assert parse_program(q.to_yaml()) == q
    assert "rate_ul_per_h: 7.3" in q.to_yaml()


_name_chars = st.characters(
    blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"), blacklist_characters="\t"
)
_positive = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(
    name=st.text(_name_chars, min_size=1, max_size=40).filter(
        lambda s: s.strip() != "" and not any(c.isspace() and c != " " for c in s)
    ),
    drug=st.sampled_from(sorted(KNOWN_DRUGS)),
    concentration=_positive,
    amount=_positive,
    by_rate=st.booleans(),
    capacity=st.floats(min_value=10.0, max_value=1e5),
    volume_fraction=st.floats(min_value=1e-6, max_value=1.0),
    low_fraction=st.floats(min_value=1e-6, max_value=0.99),
)
def test_round_trip_property(
    name: str,
    drug: str,
    concentration: float,
    amount: float,
    by_rate: bool,
    capacity: float,
    volume_fraction: float,
    low_fraction: float,
) -> None:
    rate = amount if by_rate else daily_dose_to_rate_ul_per_h(amount, concentration)
    if rate > DEFAULT_MAX_RATE_UL_PER_H or rate <= 0:
        return
    program = TherapyProgram(
        name=name.strip(),
        drug=drug,
        concentration_ug_per_ml=concentration,
        basal_rate_ul_per_h=rate,
        daily_dose_ug=rate_to_daily_dose_ug(rate, concentration) if by_rate else amount,
        reservoir_capacity_ul=capacity,
        reservoir_volume_ul=capacity * volume_fraction,
        low_reservoir_ul=capacity * low_fraction,
        rate_basis=RateBasis.RATE if by_rate else RateBasis.DAILY_DOSE,
    )
    assert parse_program(program.to_yaml()) == program


@pytest.mark.parametrize("name", ["yes", "1e3", "null", "'quoted'", "a: b", "#x", "- x", "0x1F"])
def test_round_trip_of_names_yaml_would_misread(name: str) -> None:
    program = parse_program(VALID)
    tricky = TherapyProgram(**{**program.__dict__, "name": name})
    assert parse_program(tricky.to_yaml()).name == name


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
        # unknown drug (known ones listed), unknown mode
        (edit("drug: baclofen", "drug: baclofn"), "drug", ["baclofen", "ziconotide"]),
        (edit("drug: baclofen", "drug: aspirin"), "drug", ["unknown drug", "morphine"]),
        (edit("mode: continuous", "mode: flex"), "mode", ["unknown mode", "continuous"]),
        # cross-field rules
        (edit("volume_ul: 18000.0", "volume_ul: 20000.5"), "reservoir.volume_ul", ["capacity"]),
        (edit("low_alarm_ul: 2000.0", "low_alarm_ul: 20000"), "reservoir.low_alarm_ul", []),
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
    with pytest.raises(ValueError, match="max_rate_ul_per_h"):
        parse_program(VALID, max_rate_ul_per_h=math.nan)


def test_source_prefixes_message() -> None:
    with pytest.raises(ProgramError) as info:
        parse_program(edit("mode: continuous", "mode: bolus"), source="set_program")
    assert str(info.value).startswith("set_program: mode: unknown mode")
    assert info.value.field == "mode"
    assert info.value.source == "set_program"


# --- files -------------------------------------------------------------------------------------


def test_load_program_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(VALID, encoding="utf-8")
    assert load_program_file(path) == parse_program(VALID)


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
    path.write_text(edit("volume_ul: 18000.0", "volume_ul: -5"), encoding="utf-8")
    with pytest.raises(ProgramError) as info:
        load_program_file(path)
    assert str(info.value) == f"{path}: reservoir.volume_ul: must be > 0 (got -5)"
    assert info.value.field == "reservoir.volume_ul"


def test_load_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(VALID.replace("comment", "caf\xe9").encode("latin-1"))
    with pytest.raises(ProgramError, match="UTF-8"):
        load_program_file(path)


def test_direct_construction_is_checked() -> None:
    good = parse_program(VALID)
    fields = good.__dict__
    with pytest.raises(ProgramError, match="basal_rate_ul_per_h"):
        TherapyProgram(**{**fields, "basal_rate_ul_per_h": 21.0})
    with pytest.raises(ProgramError, match="reservoir_volume_ul"):
        TherapyProgram(**{**fields, "reservoir_volume_ul": 30000.0})
    with pytest.raises(ProgramError, match="concentration"):
        TherapyProgram(**{**fields, "concentration_ug_per_ml": math.inf})
    with pytest.raises(ProgramError, match="drug"):
        TherapyProgram(**{**fields, "drug": "aspirin"})


def test_summary_mentions_rate_and_drug() -> None:
    summary = parse_program(VALID).summary()
    assert "baclofen" in summary
    assert "20 µL/h" in summary
    assert set(summary) <= set(string.printable) | set("µ")
