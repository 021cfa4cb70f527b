"""Drug library: the shipped file is sane, every invalid kind is rejected naming the field."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pump_rig.core.drug_library import (
    Drug,
    DrugLibrary,
    DrugLibraryError,
    TitrationLimit,
    default_drug_library_path,
    load_drug_library,
    parse_drug_library,
)
from pump_rig.core.strict_yaml import DuplicateKeyError, load_strict_yaml

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config" / "drugs.yaml"
ALL_DRUGS = (
    "baclofen",
    "morphine",
    "hydromorphone",
    "fentanyl",
    "bupivacaine",
    "clonidine",
    "ziconotide",
)

VALID = """\
version: 1
note: test library
drugs:
  morphine:
    dose_unit: ug
    concentration_ug_per_ml: {min: 500, max: 20000}
    max_daily_dose_ug: 15000
    max_daily_increase: {percent: 20}
    source: PACC 2017
  ziconotide:
    dose_unit: ug
    concentration_ug_per_ml:
      min: 25
      max: 100
    max_daily_dose_ug: 19.2
    max_daily_increase:
      ug: 2.4
    source: Prialt label
"""


def edit(old: str, new: str, text: str = VALID) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def rejected(text: str) -> DrugLibraryError:
    with pytest.raises(DrugLibraryError) as info:
        parse_drug_library(text)
    return info.value


def valid_doc() -> dict[str, Any]:
    doc = yaml.safe_load(VALID)
    assert isinstance(doc, dict)
    return doc


def dumped(doc: object) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


# --- the shipped library ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> DrugLibrary:
    return load_drug_library(SHIPPED)


def test_shipped_library_has_all_seven_drugs(shipped: DrugLibrary) -> None:
    assert set(shipped.names()) == set(ALL_DRUGS)
    assert shipped.names() == tuple(sorted(ALL_DRUGS))
    assert shipped.source == str(SHIPPED)


@pytest.mark.parametrize("name", ALL_DRUGS)
def test_shipped_drug_values_are_sane(shipped: DrugLibrary, name: str) -> None:
    drug = shipped.get(name)
    assert drug.name == name
    assert drug.dose_unit == "ug"
    assert 0 < drug.min_concentration_ug_per_ml <= drug.max_concentration_ug_per_ml
    assert drug.max_daily_dose_ug > 0
    assert drug.source.strip()
    assert (drug.titration.percent is None) != (drug.titration.ug is None)
    # A daily maximum delivered from the strongest solution must fit a 20 mL reservoir for at
    # least a day: otherwise the figures are in the wrong unit.
    assert drug.max_daily_dose_ug / drug.max_concentration_ug_per_ml * 1000.0 < 20000.0


def test_shipped_ziconotide_follows_the_prialt_label(shipped: DrugLibrary) -> None:
    z = shipped.get("ziconotide")
    assert z.max_daily_dose_ug <= 19.2
    assert z.titration.percent is None
    assert z.titration.ug is not None and z.titration.ug <= 2.4
    assert z.check_concentration(25.0) is None
    assert z.check_concentration(100.0) is None


def test_shipped_baclofen_covers_the_labelled_strengths(shipped: DrugLibrary) -> None:
    b = shipped.get("baclofen")
    for strength in (50.0, 500.0, 2000.0):
        assert b.check_concentration(strength) is None, strength
    assert b.check_concentration(2001.0) is not None
    assert b.titration.percent is not None and 10 <= b.titration.percent <= 30


@pytest.mark.parametrize("name", ["morphine", "hydromorphone", "fentanyl", "baclofen"])
def test_shipped_opioids_and_baclofen_titrate_by_percent(shipped: DrugLibrary, name: str) -> None:
    assert shipped.get(name).titration.percent is not None


def test_shipped_pacc_maxima(shipped: DrugLibrary) -> None:
    # PACC 2017 maximum concentrations (µg/mL) and, where given, daily doses (µg/day).
    assert shipped.get("morphine").max_concentration_ug_per_ml <= 20000
    assert shipped.get("morphine").max_daily_dose_ug <= 15000
    assert shipped.get("hydromorphone").max_concentration_ug_per_ml <= 15000
    assert shipped.get("hydromorphone").max_daily_dose_ug <= 10000
    assert shipped.get("bupivacaine").max_concentration_ug_per_ml <= 30000
    assert shipped.get("bupivacaine").max_daily_dose_ug <= 20000
    assert shipped.get("clonidine").max_concentration_ug_per_ml <= 1000
    assert shipped.get("clonidine").max_daily_dose_ug <= 600
    assert shipped.get("ziconotide").max_concentration_ug_per_ml <= 100
    # No upper limit is published for fentanyl; the bench value says so.
    assert "bench" in shipped.get("fentanyl").source


def test_shipped_file_names_its_sources_and_says_not_clinical() -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    header = text.split("\nversion:")[0]
    assert header.lstrip().startswith("#")
    assert "bench defaults, not clinical guidance" in header.lower()
    for source in ("Polyanalgesic Consensus Conference", "Deer", "Prialt", "Lioresal", "Gablofen"):
        assert source in header, source


def test_shipped_programs_are_within_the_library(shipped: DrugLibrary) -> None:
    # Read as plain YAML: this checks the data files against each other, not the program parser.
    programs = sorted((REPO / "config" / "programs").glob("*.yaml"))
    assert programs
    for path in programs:
        program = load_strict_yaml(path.read_text(encoding="utf-8"))
        assert isinstance(program, dict)
        drug = shipped.get(program["drug"])
        assert drug.check_concentration(program["concentration_ug_per_ml"]) is None, path
        if "daily_dose_ug" in program:
            assert program["daily_dose_ug"] <= drug.max_daily_dose_ug, path


def test_default_path_is_the_shipped_file() -> None:
    path = default_drug_library_path()
    assert path.name == "drugs.yaml"
    assert path.is_file()
    assert path.read_bytes() == SHIPPED.read_bytes()


# --- a valid document -------------------------------------------------------------------------


def test_valid_library_parses() -> None:
    lib = parse_drug_library(VALID)
    assert lib.names() == ("morphine", "ziconotide")
    assert lib.source == "<text>"
    m = lib.get("morphine")
    assert m == Drug(
        name="morphine",
        dose_unit="ug",
        min_concentration_ug_per_ml=500.0,
        max_concentration_ug_per_ml=20000.0,
        max_daily_dose_ug=15000.0,
        titration=TitrationLimit(percent=20.0, ug=None),
        source="PACC 2017",
    )
    assert isinstance(m.max_daily_dose_ug, float)
    z = lib.get("ziconotide")
    assert z.titration == TitrationLimit(percent=None, ug=2.4)
    assert z.max_daily_dose_ug == 19.2


def test_version_and_note_are_optional() -> None:
    text = edit("version: 1\nnote: test library\n", "")
    assert parse_drug_library(text).names() == ("morphine", "ziconotide")


def test_exponent_numbers_and_merge_keys_are_read() -> None:
    text = edit("max_daily_dose_ug: 15000", "max_daily_dose_ug: 1.5e4")
    assert parse_drug_library(text).get("morphine").max_daily_dose_ug == 15000.0
    merged = """\
drugs:
  morphine: &opioid
    dose_unit: ug
    concentration_ug_per_ml: {min: 500, max: 20000}
    max_daily_dose_ug: 15000
    max_daily_increase: {percent: 20}
    source: PACC 2017
  hydromorphone:
    <<: *opioid
    max_daily_dose_ug: 10000
"""
    lib = parse_drug_library(merged)
    assert lib.get("hydromorphone").max_daily_dose_ug == 10000.0
    assert lib.get("hydromorphone").titration.percent == 20.0


def test_library_is_immutable() -> None:
    lib = parse_drug_library(VALID)
    assert isinstance(lib.drugs, MappingProxyType)
    with pytest.raises(TypeError):
        lib.drugs["x"] = lib.get("morphine")  # type: ignore[index]
    with pytest.raises(AttributeError):
        lib.source = "other"  # type: ignore[misc]
    mine = {"morphine": lib.get("morphine")}
    built = DrugLibrary(drugs=mine, source="x")
    mine.clear()
    assert built.names() == ("morphine",)


def test_get_ignores_case_and_blanks() -> None:
    lib = parse_drug_library(VALID)
    assert lib.get("  Morphine ") is lib.get("morphine")


def test_unknown_drug_suggests_the_close_match() -> None:
    lib = parse_drug_library(VALID)
    with pytest.raises(DrugLibraryError) as info:
        lib.get("morphin")
    e = info.value
    assert e.field == "drug"
    assert "unknown drug 'morphin'" in str(e)
    assert "did you mean 'morphine'?" in str(e)
    assert "known: morphine, ziconotide" in str(e)
    with pytest.raises(DrugLibraryError) as info:
        lib.get("aspirin")
    assert "did you mean" not in str(info.value)
    assert str(info.value) == "drug: unknown drug 'aspirin' (known: morphine, ziconotide)"


def test_check_concentration() -> None:
    m = parse_drug_library(VALID).get("morphine")
    assert m.check_concentration(500.0) is None
    assert m.check_concentration(20000.0) is None
    assert m.check_concentration(10000) is None
    low = m.check_concentration(499.0)
    assert low is not None and "499" in low and "500–20000 µg/mL" in low
    high = m.check_concentration(20000.5)
    assert high is not None and "500–20000 µg/mL" in high
    nan = m.check_concentration(math.nan)
    assert nan is not None and "finite" in nan
    assert m.check_concentration(math.inf) is not None


# --- titration limits -------------------------------------------------------------------------


def test_percent_titration_arithmetic() -> None:
    t = TitrationLimit(percent=30.0, ug=None)
    assert t.max_increase_ug(100.0) == pytest.approx(30.0)
    assert t.max_increase_ug(240.0) == pytest.approx(72.0)
    assert t.max_increase_ug(0.0) == 0.0
    assert t.describe() == "30 % per change"
    assert TitrationLimit(percent=12.5, ug=None).describe() == "12.5 % per change"
    assert TitrationLimit(percent=100, ug=None).max_increase_ug(5.0) == 5.0


def test_absolute_titration_arithmetic() -> None:
    t = TitrationLimit(percent=None, ug=2.4)
    assert t.max_increase_ug(0.0) == 2.4
    assert t.max_increase_ug(12.0) == 2.4
    assert t.describe() == "2.4 µg/day per change"


@pytest.mark.parametrize("current", [-1.0, math.nan, math.inf, True])
def test_titration_refuses_a_bad_current_dose(current: float) -> None:
    with pytest.raises(ValueError, match="current_daily_dose_ug"):
        TitrationLimit(percent=10.0, ug=None).max_increase_ug(current)


@pytest.mark.parametrize(
    ("percent", "ug", "field"),
    [
        (None, None, ""),
        (10.0, 1.0, ""),
        (0.0, None, "percent"),
        (100.5, None, "percent"),
        (math.nan, None, "percent"),
        (True, None, "percent"),
        (None, 0.0, "ug"),
        (None, -2.4, "ug"),
        (None, math.inf, "ug"),
    ],
)
def test_titration_limit_checks_itself(percent: float | None, ug: float | None, field: str) -> None:
    with pytest.raises(DrugLibraryError) as info:
        TitrationLimit(percent=percent, ug=ug)
    assert info.value.field == field


@given(
    percent=st.floats(min_value=0.01, max_value=100.0),
    current=st.floats(min_value=0.0, max_value=1e6),
)
def test_percent_increase_is_proportional(percent: float, current: float) -> None:
    rise = TitrationLimit(percent=percent, ug=None).max_increase_ug(current)
    assert 0.0 <= rise <= current
    assert rise == pytest.approx(current * percent / 100.0)


# --- rejections -------------------------------------------------------------------------------

# (edit of VALID, expected field, text expected in the message)
REJECTIONS: list[tuple[str, str, str, str]] = [
    ("max_daily_dose_ug: 15000", "max_daily_dose_ug: -1", "morphine.max_daily_dose_ug", "> 0"),
    ("max_daily_dose_ug: 15000", "max_daily_dose_ug: 0", "morphine.max_daily_dose_ug", "> 0"),
    ("max_daily_dose_ug: 15000", "max_daily_dose_ug: .nan", "morphine.max_daily_dose_ug", "nan"),
    ("max_daily_dose_ug: 15000", "max_daily_dose_ug: .inf", "morphine.max_daily_dose_ug", "inf"),
    ("max_daily_dose_ug: 15000", "max_daily_dose_ug: true", "morphine.max_daily_dose_ug", "bool"),
    ("max_daily_dose_ug: 15000", "max_daily_dose_ug: lots", "morphine.max_daily_dose_ug", "text"),
    ("max_daily_dose_ug: 15000", "max_daily_dose_ug:", "morphine.max_daily_dose_ug", "nothing"),
    (
        "max_daily_dose_ug: 15000",
        "max_daily_dose_ug: 1" + "0" * 400,
        "morphine.max_daily_dose_ug",
        "finite",
    ),
    ("{min: 500, max", "{min: -500, max", "morphine.concentration_ug_per_ml.min", "> 0"),
    ("{min: 500, max", "{min: no, max", "morphine.concentration_ug_per_ml.min", "bool"),
    ("max: 20000}", "max: .inf}", "morphine.concentration_ug_per_ml.max", "finite"),
    (
        "{min: 500, max: 20000}",
        "{min: 500, max: 400}",
        "morphine.concentration_ug_per_ml.min",
        "<=",
    ),
    ("{min: 500, max: 20000}", "{max: 20000}", "morphine.concentration_ug_per_ml.min", "missing"),
    ("{min: 500, max: 20000}", "{min: 500}", "morphine.concentration_ug_per_ml.max", "missing"),
    (
        "{min: 500, max: 20000}",
        "{min: 500, max: 20000, mid: 1}",
        "morphine.concentration_ug_per_ml.mid",
        "unknown field",
    ),
    ("{min: 500, max: 20000}", "[500, 20000]", "morphine.concentration_ug_per_ml", "mapping"),
    ("{percent: 20}", "{percent: 20, ug: 5}", "morphine.max_daily_increase", "both"),
    ("{percent: 20}", "{}", "morphine.max_daily_increase", "neither"),
    ("{percent: 20}", "{percent: 0}", "morphine.max_daily_increase.percent", "(0, 100]"),
    ("{percent: 20}", "{percent: 101}", "morphine.max_daily_increase.percent", "(0, 100]"),
    ("{percent: 20}", "{percent: -5}", "morphine.max_daily_increase.percent", "(0, 100]"),
    ("{percent: 20}", "{percent: yes}", "morphine.max_daily_increase.percent", "bool"),
    ("{percent: 20}", "{pecent: 20}", "morphine.max_daily_increase.pecent", "did you mean"),
    ("{percent: 20}", "20", "morphine.max_daily_increase", "mapping"),
    ("ug: 2.4", "ug: 0", "ziconotide.max_daily_increase.ug", "> 0"),
    ("ug: 2.4", "ug: 25", "ziconotide.max_daily_increase.ug", "max_daily_dose_ug"),
    ("dose_unit: ug\n    conc", "dose_unit: mg\n    conc", "morphine.dose_unit", "'mg'"),
    ("dose_unit: ug\n    conc", "dose_unit: µg\n    conc", "morphine.dose_unit", "unsupported"),
    ("dose_unit: ug\n    conc", "dose_unit: 1\n    conc", "morphine.dose_unit", "text"),
    ("    dose_unit: ug\n    conc", "    conc", "morphine.dose_unit", "missing"),
    ("    source: PACC 2017\n", "", "morphine.source", "missing"),
    ("source: PACC 2017", "source: ''", "morphine.source", "empty"),
    ("source: PACC 2017", "source: [PACC]", "morphine.source", "text"),
    ("source: PACC 2017", 'source: "a\\nb"', "morphine.source", "one line"),
    ("source: PACC 2017", "source: " + "x" * 401, "morphine.source", "too long"),
    ("source: PACC 2017", "sorce: PACC 2017", "morphine.sorce", "did you mean 'source'"),
    ("    max_daily_dose_ug: 15000\n", "", "morphine.max_daily_dose_ug", "missing"),
    ("    max_daily_increase: {percent: 20}\n", "", "morphine.max_daily_increase", "missing"),
    (
        "    concentration_ug_per_ml: {min: 500, max: 20000}\n",
        "",
        "morphine.concentration_ug_per_ml",
        "missing",
    ),
    ("  morphine:\n", "  Morphine:\n", "drugs.Morphine", "lower case"),
    ("  morphine:\n", "  2:\n", "drugs.2", "text"),
    ("  morphine:\n", '  "morphine\\n":\n', "drugs.'morphine\\n'", "lower case"),
    ("  morphine:\n", "  mor phine:\n", "drugs.'mor phine'", "lower case"),
    ("  morphine:\n", "  morphine: 3\n  x:\n", "morphine", "mapping"),
    ("version: 1", "version: 2", "version", "unsupported version 2"),
    ("version: 1", "version: '1'", "version", "integer"),
    ("version: 1", "version: true", "version", "integer"),
    ("note: test library", "note: [a]", "note", "text"),
    ("note: test library", "notes: x", "notes", "did you mean 'note'"),
    ("drugs:\n", "drug:\n", "drug", "did you mean 'drugs'"),
]


@pytest.mark.parametrize(("old", "new", "field", "needle"), REJECTIONS)
def test_rejection_names_the_field(old: str, new: str, field: str, needle: str) -> None:
    e = rejected(edit(old, new))
    assert e.field == field, str(e)
    assert needle in e.message, str(e)
    assert str(e).startswith(f"{field}: " if field else e.message)


def test_error_text_format() -> None:
    e = DrugLibraryError(
        "morphine.max_daily_dose_ug",
        "must be a finite number > 0 (got -1)",
        source="config/drugs.yaml",
    )
    assert str(e) == (
        "config/drugs.yaml: morphine.max_daily_dose_ug: must be a finite number > 0 (got -1)"
    )
    assert str(DrugLibraryError("", "file not found", source="x.yaml")) == "x.yaml: file not found"
    assert str(DrugLibraryError("drug", "unknown")) == "drug: unknown"
    assert isinstance(e, ValueError)
    negative = rejected(edit("max_daily_dose_ug: 15000", "max_daily_dose_ug: -1"))
    assert str(negative) == "morphine.max_daily_dose_ug: must be a finite number > 0 (got -1)"


def test_source_prefixes_every_error() -> None:
    with pytest.raises(DrugLibraryError) as info:
        parse_drug_library(edit("ug: 2.4", "ug: -1"), source="config/drugs.yaml")
    assert info.value.source == "config/drugs.yaml"
    assert str(info.value).startswith("config/drugs.yaml: ziconotide.max_daily_increase.ug: ")


def test_duplicate_keys_are_rejected() -> None:
    e = rejected(
        edit("max_daily_dose_ug: 15000\n", "max_daily_dose_ug: 15000\n    max_daily_dose_ug: 1\n")
    )
    assert e.field == "max_daily_dose_ug"
    assert "duplicate" in e.message and "line 8" in e.message
    dup_drug = VALID + "  morphine: {}\n"
    e = rejected(dup_drug)
    assert e.field == "morphine" and "duplicate" in e.message
    e = rejected(edit("{percent: 20}", "{percent: 20, percent: 30}"))
    assert e.field == "percent" and "duplicate" in e.message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("drugs: {morphine: [\n", "line"),
        ("drugs:\n  morphine:\n dose_unit: ug\n  x: 1\n", "line"),
        ("a: b: c", "line 1"),
        ("drugs: !!python/object:os.system x", "YAML"),
        ("drugs:\n  morphine:\n    max_daily_dose_ug: 2001-13-45\n", "line 3"),
        ("x\x00y", "YAML"),
        ("[" * 5000, "nested too deeply"),
    ],
)
def test_yaml_errors_are_reported_as_library_errors(text: str, needle: str) -> None:
    e = rejected(text)
    assert e.field == ""
    assert needle in e.message
    assert "\n" not in str(e)


@pytest.mark.parametrize(
    ("text", "field", "needle"),
    [
        ("", "", "empty"),
        ("# only a comment\n", "", "empty"),
        ("- a\n- b\n", "", "mapping"),
        ("just text", "", "mapping"),
        ("version: 1\n", "drugs", "missing"),
        ("drugs:\n", "drugs", "mapping"),
        ("drugs: {}\n", "drugs", "at least one"),
        ("drugs: [morphine]\n", "drugs", "mapping"),
        ("1: x\n", "1", "text"),
        ("colour: red\n", "colour", "unknown field"),
    ],
)
def test_top_level_structure(text: str, field: str, needle: str) -> None:
    e = rejected(text)
    assert e.field == field
    assert needle in e.message


def test_oversized_and_non_text_input() -> None:
    e = rejected(VALID + "#" * (256 * 1024))
    assert "too long" in e.message
    with pytest.raises(DrugLibraryError):
        parse_drug_library(b"drugs: {}")  # type: ignore[arg-type]


# --- files ------------------------------------------------------------------------------------


def test_load_file_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(DrugLibraryError) as info:
        load_drug_library(missing)
    assert info.value.source == str(missing)
    assert str(info.value) == f"{missing}: file not found"

    with pytest.raises(DrugLibraryError) as info:
        load_drug_library(tmp_path)
    assert "not a regular file" in str(info.value)

    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(VALID.replace("PACC 2017", "PACC \xb5g").encode("latin-1"))
    with pytest.raises(DrugLibraryError) as info:
        load_drug_library(latin1)
    assert str(latin1) in str(info.value) and "UTF-8" in str(info.value)

    bad = tmp_path / "bad.yaml"
    bad.write_text(edit("ug: 2.4", "ug: -1"), encoding="utf-8")
    with pytest.raises(DrugLibraryError) as info:
        load_drug_library(bad)
    assert str(info.value).startswith(f"{bad}: ziconotide.max_daily_increase.ug: ")

    good = tmp_path / "good.yaml"
    good.write_text(VALID, encoding="utf-8")
    assert load_drug_library(good).source == str(good)


# --- direct construction ----------------------------------------------------------------------


def _morphine(**changes: Any) -> Drug:
    fields: dict[str, Any] = {
        "name": "morphine",
        "dose_unit": "ug",
        "min_concentration_ug_per_ml": 500.0,
        "max_concentration_ug_per_ml": 20000.0,
        "max_daily_dose_ug": 15000.0,
        "titration": TitrationLimit(percent=20.0, ug=None),
        "source": "PACC 2017",
    }
    fields.update(changes)
    return Drug(**fields)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "Morphine"}, "name"),
        ({"dose_unit": "mg"}, "morphine.dose_unit"),
        ({"max_daily_dose_ug": 0.0}, "morphine.max_daily_dose_ug"),
        ({"min_concentration_ug_per_ml": math.nan}, "morphine.min_concentration_ug_per_ml"),
        ({"min_concentration_ug_per_ml": 30000.0}, "morphine.min_concentration_ug_per_ml"),
        ({"titration": TitrationLimit(percent=None, ug=20000.0)}, "morphine.titration"),
        ({"source": " "}, "morphine.source"),
    ],
)
def test_drug_checks_itself(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(DrugLibraryError) as info:
        _morphine(**changes)
    assert info.value.field == field


def test_library_checks_itself() -> None:
    with pytest.raises(DrugLibraryError):
        DrugLibrary(drugs={}, source="x")
    with pytest.raises(DrugLibraryError):
        DrugLibrary(drugs={"hydromorphone": _morphine()})


# --- strict YAML ------------------------------------------------------------------------------


def test_strict_yaml_loader() -> None:
    assert load_strict_yaml("a: 1e3\nb: 2.4E-1\nc: '1e3'") == {"a": 1000.0, "b": 0.24, "c": "1e3"}
    with pytest.raises(DuplicateKeyError) as info:
        load_strict_yaml("a: 1\nb:\n  c: 1\n  c: 2\n")
    assert info.value.key == "c"
    assert info.value.line == 4
    with pytest.raises(yaml.YAMLError):
        load_strict_yaml("a: !!int nope")
    with pytest.raises(yaml.YAMLError):
        load_strict_yaml("{" * 5000)


# --- fuzzing ----------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["ug", "mg", "percent", "ug", "min", "max", "morphine", "", "1e3"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), inner, max_size=3),
    ),
    max_leaves=8,
)


def _containers(doc: object) -> list[dict[Any, Any] | list[Any]]:
    """Every dict and list in the document, the document itself first."""
    found: list[dict[Any, Any] | list[Any]] = []
    stack: list[object] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found.append(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            found.append(node)
            stack.extend(node)
    return found


@st.composite
def _mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(valid_doc())
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        container = draw(st.sampled_from(_containers(doc)))
        keys: list[Any] = list(container) if isinstance(container, dict) else []
        if isinstance(container, list):
            keys = list(range(len(container)))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "add" or not keys:
            if isinstance(container, dict):
                key = draw(st.one_of(st.text(max_size=12), st.sampled_from(["ug", "percent"])))
                container[key] = draw(_values)
            else:
                container.append(draw(_values))
            continue
        key = draw(st.sampled_from(keys))
        if action == "replace":
            container[key] = draw(_values)
        else:
            del container[key]
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_mutated_documents())
def test_mutated_documents_only_raise_library_errors(doc: dict[str, Any]) -> None:
    text = dumped(doc)
    try:
        lib = parse_drug_library(text)
    except DrugLibraryError as e:
        assert e.message
        assert "\n" not in str(e)
        return
    # Whatever parses is a consistent library.
    for name in lib.names():
        drug = lib.get(name)
        assert drug.min_concentration_ug_per_ml <= drug.max_concentration_ug_per_ml
        assert math.isfinite(drug.max_daily_dose_ug) and drug.max_daily_dose_ug > 0


@settings(max_examples=300, deadline=None)
@given(
    position=st.integers(min_value=0, max_value=len(VALID)),
    cut=st.integers(min_value=0, max_value=12),
    insert=st.text(
        alphabet=st.sampled_from(list(":-{}[],&*!|>'\"#%@`? \n\t0123456789.eau\\")), max_size=8
    ),
)
def test_mangled_text_only_raises_library_errors(position: int, cut: int, insert: str) -> None:
    text = VALID[:position] + insert + VALID[position + cut :]
    try:
        parse_drug_library(text)
    except DrugLibraryError as e:
        assert "\n" not in str(e)
