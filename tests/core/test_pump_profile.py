"""Pump profiles: the shipped ones load, the rate-limit arithmetic is right, bad documents are
rejected naming the file and the field, look-ups by name list what exists."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pump_rig.core.pump_profile import (
    PumpProfile,
    PumpProfileError,
    SerialSettings,
    ValueRange,
    available_pump_profiles,
    find_pump_profile,
    load_pump_profile,
    parse_pump_profile,
    pump_profiles_dir,
)
from pump_rig.core.syringe_pump import MechanicsSpec, SyringePump

REPO = Path(__file__).resolve().parents[2]
PUMPS = REPO / "hardware" / "pumps"
SHIPPED = sorted(PUMPS.glob("*.yaml"))

VALID = """\
name: test_pump
backend: stepper
description: a test pump
source: nowhere in particular
serial: {baud: 19200, data_bits: 8, parity: none, stop_bits: 1}
address: 3
diameter_mm: {min: 1.0, max: 30.0}
plunger_speed_mm_per_h: {min: 0.01, max: 600.0}
volume_significant_digits: 4
"""


def write(tmp_path: Path, text: str, name: str = "pump.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- shipped profiles -------------------------------------------------------------------------


def test_profiles_are_shipped() -> None:
    assert PUMPS / "stepper.yaml" in SHIPPED
    assert available_pump_profiles(PUMPS) == tuple(SHIPPED)
    assert pump_profiles_dir().name == "pumps"
    assert [p.name for p in available_pump_profiles()] == [p.name for p in SHIPPED]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_profile_loads(path: Path) -> None:
    profile = load_pump_profile(path)
    assert profile.file == str(path)
    assert profile.diameter_mm.min < profile.diameter_mm.max
    low, high = profile.rate_limits_ul_per_h(profile.diameter_mm.max)
    assert 0 < low < high
    # Found by file stem or by name (in the source tree: the installed copy is another file).
    assert find_pump_profile(path.stem, directory=PUMPS) == profile
    assert find_pump_profile(profile.name, directory=PUMPS) == profile


def test_stepper_profile_contents() -> None:
    profile = load_pump_profile(PUMPS / "stepper.yaml")
    assert profile.name == "open_stepper"
    assert profile.backend == "stepper"
    assert profile.source == "hardware/open_syringe_pump_protocol.md"
    assert profile.serial == SerialSettings(baud=115200, data_bits=8, parity="none", stop_bits=1)
    assert profile.serial.describe() == "115200 8N1"
    assert profile.address == 0
    assert profile.diameter_mm == ValueRange(0.1, 50.0)
    assert profile.mechanics == MechanicsSpec(0.8, 200, 16)
    assert profile.volume_significant_digits == 0


def test_stepper_speed_limits_follow_from_its_mechanics() -> None:
    # Independent derivation: 0.8 mm / (200 * 16) = 0.25 µm per microstep; the firmware steps
    # at most 2000 microsteps/s and at least 1 microstep/h (protocol section 13).
    profile = load_pump_profile(PUMPS / "stepper.yaml")
    assert profile.mechanics is not None
    um_per_step = 0.8 / (200 * 16) * 1000.0
    assert profile.mechanics.mm_per_step * 1000.0 == pytest.approx(um_per_step)
    assert profile.plunger_speed_mm_per_h.max == pytest.approx(2000 * um_per_step / 1000 * 3600)
    assert profile.plunger_speed_mm_per_h.min == pytest.approx(um_per_step / 1000)


def test_rate_limits_against_a_hand_computation() -> None:
    profile = load_pump_profile(PUMPS / "stepper.yaml")
    # BD 30 mL, 21.59 mm: radius 10.795 mm, area 3.14159265 * 116.532025 = 366.0962 mm²
    # = 366.0962 µL per mm of travel. Fastest 1800 mm/h -> 658 973.1 µL/h; slowest
    # 0.00025 mm/h -> 0.0915240 µL/h (one microstep of this syringe per hour).
    low, high = profile.rate_limits_ul_per_h(21.59)
    assert high == pytest.approx(658_973.1, abs=0.1)
    assert low == pytest.approx(0.0915240, abs=1e-7)
    # One microstep per hour is exactly the syringe pump model's µL per step.
    pump = SyringePump(
        inner_diameter_mm=21.59,
        syringe_volume_ul=30_000.0,
        loaded_volume_ul=0.0,
        max_rate_ul_per_h=1.0,
        mechanics=MechanicsSpec(0.8, 200, 16),
    )
    assert low == pytest.approx(pump.ul_per_step, rel=1e-12)


def test_rate_limits_at_the_range_ends_and_outside() -> None:
    profile = parse_pump_profile(VALID)
    low, high = profile.rate_limits_ul_per_h(30.0)
    assert high == pytest.approx(math.pi * 15.0**2 * 600.0)
    assert low == pytest.approx(math.pi * 15.0**2 * 0.01)
    assert profile.rate_limits_ul_per_h(1.0)[1] == pytest.approx(math.pi * 0.25 * 600.0)
    for bad in (0.99, 30.01, -5.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="inner diameter"):
            profile.rate_limits_ul_per_h(bad)
    with pytest.raises(ValueError, match=r"outside test_pump's range 1\.\.30 mm"):
        profile.rate_limits_ul_per_h(31.0)


# --- look-ups ---------------------------------------------------------------------------------


def test_find_by_name_stem_or_path(tmp_path: Path) -> None:
    path = write(tmp_path, VALID, "bench.yaml")
    assert find_pump_profile("bench", directory=tmp_path).name == "test_pump"
    assert find_pump_profile("test_pump", directory=tmp_path).file == str(path)
    assert find_pump_profile(path).name == "test_pump"
    assert find_pump_profile(str(path)).name == "test_pump"


def test_unknown_name_lists_available_profiles(tmp_path: Path) -> None:
    write(tmp_path, VALID, "bench.yaml")
    write(tmp_path, VALID.replace("name: test_pump", "name: other"), "other.yaml")
    with pytest.raises(PumpProfileError) as info:
        find_pump_profile("ne9999", directory=tmp_path)
    assert str(info.value) == (
        f"profile: no pump profile 'ne9999' in {tmp_path} (available: bench (test_pump), other)"
    )
    with pytest.raises(PumpProfileError, match=r"available: none"):
        find_pump_profile("x", directory=tmp_path / "empty")


def test_unknown_shipped_name_lists_stepper() -> None:
    with pytest.raises(
        ValueError, match=r"no pump profile 'warp_drive' .*stepper \(open_stepper\)"
    ):
        find_pump_profile("warp_drive")


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(PumpProfileError, match=r"gone\.yaml: file not found$"):
        find_pump_profile(tmp_path / "gone.yaml")


# --- bad documents ----------------------------------------------------------------------------


def test_malformed_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "name: [open\n")
    with pytest.raises(PumpProfileError) as info:
        load_pump_profile(path)
    assert str(info.value).startswith(f"{path}: YAML syntax error at line ")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("address: 3", "adress: 3", "adress: unknown field (did you mean 'address'?)"),
        ("parity: none", "parity: none, speed: 9", "serial.speed: unknown field"),
        (
            "parity: none",
            "parity: n",
            "serial.parity: must be one of none, even, odd, mark, space (got 'n')",
        ),
        ("data_bits: 8", "data_bits: 9", "serial.data_bits: must be one of 5, 6, 7, 8 (got 9)"),
        ("stop_bits: 1", "stop_bits: 3", "serial.stop_bits: must be one of 1, 1.5, 2 (got 3)"),
        ("baud: 19200", "baud: -1", "serial.baud: must be an integer in 1..10000000"),
        ("address: 3", "address: -1", "address: must be an integer in 0..255"),
        ("address: 3", "address: true", "address: must be an integer in 0..255"),
        (
            "{min: 1.0, max: 30.0}",
            "{min: -1.0, max: 30.0}",
            "diameter_mm.min: must be a positive number (got -1)",
        ),
        (
            "{min: 1.0, max: 30.0}",
            "{min: 40.0, max: 30.0}",
            "diameter_mm.min: must be <= max (30) (got 40)",
        ),
        ("{min: 1.0, max: 30.0}", "{min: 1.0}", "diameter_mm.max: required field missing"),
        (
            "{min: 0.01, max: 600.0}",
            "{min: 0.01, max: .inf}",
            "plunger_speed_mm_per_h.max: must be a positive number (got inf)",
        ),
        (
            "volume_significant_digits: 4",
            "volume_significant_digits: 2.5",
            "volume_significant_digits: must be an integer in 0..15",
        ),
        ("name: test_pump", "name: Test Pump", "name: must be a lower-case name"),
        ("source: nowhere in particular", "source: ''", "source: must not be empty"),
        (
            "backend: stepper",
            "backend: ne1000\nmechanics: {lead_screw_pitch_mm: 1, "
            "steps_per_rev: 200, microsteps: 1}",
            "mechanics: only for backend 'stepper'",
        ),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new))
    with pytest.raises(PumpProfileError) as info:
        load_pump_profile(path)
    assert str(info.value).startswith(f"{path}: {expected}")


@pytest.mark.parametrize(
    "field",
    [
        "name",
        "backend",
        "description",
        "source",
        "serial",
        "address",
        "diameter_mm",
        "plunger_speed_mm_per_h",
        "volume_significant_digits",
    ],
)
def test_missing_required_field(field: str) -> None:
    text = "".join(line + "\n" for line in VALID.splitlines() if not line.startswith(f"{field}:"))
    with pytest.raises(PumpProfileError, match=rf"^{field}: required field missing$"):
        parse_pump_profile(text)


def test_mechanics_fields_are_checked() -> None:
    base = VALID + "mechanics: {lead_screw_pitch_mm: 0.8, steps_per_rev: 200, microsteps: 16}\n"
    assert parse_pump_profile(base).mechanics == MechanicsSpec(0.8, 200, 16)
    with pytest.raises(PumpProfileError, match=r"^mechanics\.microsteps: must be an integer"):
        parse_pump_profile(base.replace("microsteps: 16", "microsteps: 0"))
    with pytest.raises(PumpProfileError, match=r"^mechanics\.lead_screw_pitch_mm: must be a pos"):
        parse_pump_profile(base.replace("lead_screw_pitch_mm: 0.8", "lead_screw_pitch_mm: 0"))
    with pytest.raises(PumpProfileError, match=r"^mechanics\.steps_per_rev: required field"):
        parse_pump_profile(base.replace("steps_per_rev: 200, ", ""))


def test_duplicate_key_is_rejected() -> None:
    with pytest.raises(PumpProfileError, match=r"^address: duplicate field \(line \d+\)$"):
        parse_pump_profile(VALID + "address: 4\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "pump profile is empty"),
        ("[1, 2]\n", "pump profile must be a mapping of fields (got list)"),
        (
            VALID.replace(
                "serial: {baud: 19200, data_bits: 8, parity: none, stop_bits: 1}", "serial: 19200"
            ),
            "serial: must be a mapping of fields (got integer)",
        ),
    ],
)
def test_structural_errors(text: str, expected: str) -> None:
    with pytest.raises(PumpProfileError) as info:
        parse_pump_profile(text)
    assert str(info.value) == expected


def test_direct_construction_is_checked() -> None:
    serial = SerialSettings(baud=9600)
    kwargs = dict(
        name="x",
        backend="ne1000",
        description="d",
        source="s",
        serial=serial,
        address=0,
        diameter_mm=ValueRange(1.0, 2.0),
        plunger_speed_mm_per_h=ValueRange(1.0, 2.0),
    )
    assert PumpProfile(**kwargs).mechanics is None  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mechanics applies to backend 'stepper' only"):
        PumpProfile(**kwargs, mechanics=MechanicsSpec())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"min 3\.0 is above max 2\.0"):
        ValueRange(3.0, 2.0)
    with pytest.raises(ValueError, match="parity"):
        SerialSettings(baud=9600, parity="N")
