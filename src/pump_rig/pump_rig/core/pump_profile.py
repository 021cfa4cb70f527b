"""Pump profiles: what one family of syringe pump can do, read from ``hardware/pumps/*.yaml``.

A profile file::

    name: open_stepper
    backend: stepper                 # the driver family (drivers/backends.py registers them)
    description: one line
    source: hardware/open_syringe_pump_protocol.md
    serial: {baud: 115200, data_bits: 8, parity: none, stop_bits: 1}
    address: 0                       # network address of the pump (0 when unused)
    diameter_mm: {min: 0.1, max: 50.0}
    plunger_speed_mm_per_h: {min: 0.00025, max: 1800.0}
    mechanics: {lead_screw_pitch_mm: 0.8, steps_per_rev: 200, microsteps: 16}  # stepper only
    volume_significant_digits: 0     # digits the pump shows/accepts; 0 = not limited

Every field but ``mechanics`` is required. A syringe pump's rate limits follow from its plunger
speed limits and the syringe bore: a plunger moving *v* mm/h in a bore of *d* mm pushes
π·d²/4·v µL/h (1 mm³ = 1 µL); :meth:`PumpProfile.rate_limits_ul_per_h` does that sum.

Errors name the file and the field (``hardware/pumps/x.yaml: serial.parity: must be one of
none, even, odd, mark, space (got 'n')``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pump_rig.core.strict_yaml import DEFAULT_SOURCE, FieldError, show_value
from pump_rig.core.syringe_catalog import (
    HardwareDocParser,
    default_hardware_dir,
    read_hardware_text,
)
from pump_rig.core.syringe_pump import MechanicsSpec

__all__ = [
    "MAX_PROFILE_TEXT_CHARS",
    "PARITIES",
    "PumpProfile",
    "PumpProfileError",
    "SerialSettings",
    "ValueRange",
    "available_pump_profiles",
    "find_pump_profile",
    "load_pump_profile",
    "parse_pump_profile",
    "pump_profiles_dir",
]

MAX_PROFILE_TEXT_CHARS: Final = 64 * 1024
MAX_TEXT_CHARS: Final = 400
PARITIES: Final[tuple[str, ...]] = ("none", "even", "odd", "mark", "space")
DATA_BITS: Final[tuple[int, ...]] = (5, 6, 7, 8)
STOP_BITS: Final[tuple[float, ...]] = (1, 1.5, 2)
MAX_ADDRESS: Final = 255
MAX_SIGNIFICANT_DIGITS: Final = 15
PROFILE_SUFFIXES: Final = (".yaml", ".yml")

_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_-]{0,39}\Z")
_BACKEND_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,39}\Z")
_FIELDS: Final = (
    "name",
    "backend",
    "description",
    "source",
    "serial",
    "address",
    "diameter_mm",
    "plunger_speed_mm_per_h",
    "mechanics",
    "volume_significant_digits",
)
_REQUIRED: Final = tuple(f for f in _FIELDS if f != "mechanics")
_SERIAL_FIELDS: Final = ("baud", "data_bits", "parity", "stop_bits")
_RANGE_FIELDS: Final = ("min", "max")
_MECHANICS_FIELDS: Final = ("lead_screw_pitch_mm", "steps_per_rev", "microsteps")
STEPPER_BACKEND: Final = "stepper"


class PumpProfileError(FieldError):
    """A pump profile (or a look-up of one) was rejected; ``field`` is the culprit's path."""


# --- value types ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValueRange:
    """A closed interval ``min <= x <= max`` of positive finite numbers."""

    min: float
    max: float

    def __post_init__(self) -> None:
        for name in ("min", "max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if self.min > self.max:
            raise ValueError(f"min {self.min!r} is above max {self.max!r}")

    def __contains__(self, value: object) -> bool:
        return (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and self.min <= value <= self.max
        )


@dataclass(frozen=True)
class SerialSettings:
    """Line settings of the pump's serial port."""

    baud: int
    data_bits: int = 8
    parity: str = "none"
    stop_bits: float = 1

    def __post_init__(self) -> None:
        if isinstance(self.baud, bool) or not isinstance(self.baud, int) or self.baud <= 0:
            raise ValueError(f"baud must be a positive integer, got {self.baud!r}")
        if self.data_bits not in DATA_BITS or isinstance(self.data_bits, bool):
            raise ValueError(f"data_bits must be one of {DATA_BITS}, got {self.data_bits!r}")
        if self.parity not in PARITIES:
            raise ValueError(f"parity must be one of {PARITIES}, got {self.parity!r}")
        if self.stop_bits not in STOP_BITS or isinstance(self.stop_bits, bool):
            raise ValueError(f"stop_bits must be one of {STOP_BITS}, got {self.stop_bits!r}")

    def describe(self) -> str:
        """``"115200 8N1"``."""
        return f"{self.baud} {self.data_bits}{self.parity[0].upper()}{self.stop_bits:g}"


@dataclass(frozen=True)
class PumpProfile:
    """One pump family's capabilities. ``file`` is where it was read from."""

    name: str
    backend: str
    description: str
    source: str
    serial: SerialSettings
    address: int
    diameter_mm: ValueRange
    plunger_speed_mm_per_h: ValueRange
    mechanics: MechanicsSpec | None = None
    volume_significant_digits: int = 0
    file: str = DEFAULT_SOURCE

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and _NAME_RE.match(self.name)):
            raise ValueError(f"profile name must match {_NAME_RE.pattern}, got {self.name!r}")
        if not (isinstance(self.backend, str) and _BACKEND_RE.match(self.backend)):
            raise ValueError(f"backend must match {_BACKEND_RE.pattern}, got {self.backend!r}")
        if isinstance(self.address, bool) or not isinstance(self.address, int):
            raise ValueError(f"address must be an integer, got {self.address!r}")
        if not 0 <= self.address <= MAX_ADDRESS:
            raise ValueError(f"address must be within 0..{MAX_ADDRESS}, got {self.address!r}")
        digits = self.volume_significant_digits
        if isinstance(digits, bool) or not isinstance(digits, int):
            raise ValueError(f"volume_significant_digits must be an integer, got {digits!r}")
        if not 0 <= digits <= MAX_SIGNIFICANT_DIGITS:
            raise ValueError(
                f"volume_significant_digits must be within 0..{MAX_SIGNIFICANT_DIGITS}, "
                f"got {digits!r}"
            )
        if self.mechanics is not None and self.backend != STEPPER_BACKEND:
            raise ValueError(f"mechanics applies to backend {STEPPER_BACKEND!r} only")

    def rate_limits_ul_per_h(self, inner_diameter_mm: float) -> tuple[float, float]:
        """(lowest, highest) flow in µL/h with a syringe of this bore: π·d²/4 × plunger speed.

        A diameter outside the profile's ``diameter_mm`` range raises ValueError.
        """
        d = inner_diameter_mm
        if isinstance(d, bool) or not isinstance(d, int | float) or not math.isfinite(d):
            raise ValueError(f"inner diameter must be a finite number of mm, got {d!r}")
        if d not in self.diameter_mm:
            raise ValueError(
                f"inner diameter {show_value(d)} mm is outside {self.name}'s range "
                f"{self.diameter_mm.min:g}..{self.diameter_mm.max:g} mm"
            )
        area_mm2 = math.pi * d * d / 4.0  # µL per mm of plunger travel
        speed = self.plunger_speed_mm_per_h
        return area_mm2 * speed.min, area_mm2 * speed.max


# --- loading ----------------------------------------------------------------------------------


def parse_pump_profile(text: str, *, source: str = DEFAULT_SOURCE) -> PumpProfile:
    """Parse and validate profile text; raise :class:`PumpProfileError` on anything wrong."""
    return _Parser(source).parse(text)


def load_pump_profile(path: Path) -> PumpProfile:
    """Read and parse one profile file; every failure is a :class:`PumpProfileError`."""
    path = Path(path)
    return parse_pump_profile(read_hardware_text(path, PumpProfileError), source=str(path))


def pump_profiles_dir() -> Path:
    """``pumps/`` in :func:`default_hardware_dir`."""
    return default_hardware_dir() / "pumps"


def available_pump_profiles(directory: Path | None = None) -> tuple[Path, ...]:
    """The profile files shipped in ``directory`` (default :func:`pump_profiles_dir`), sorted."""
    folder = pump_profiles_dir() if directory is None else Path(directory)
    if not folder.is_dir():
        return ()
    return tuple(
        sorted(p for p in folder.iterdir() if p.suffix in PROFILE_SUFFIXES and p.is_file())
    )


def find_pump_profile(name_or_path: str | Path, *, directory: Path | None = None) -> PumpProfile:
    """A profile by file path, or by name: ``pumps/<name>.yaml`` in ``directory`` (default
    :func:`pump_profiles_dir`), else the shipped profile whose ``name`` field matches.

    An unknown name raises :class:`PumpProfileError` listing the available profiles.
    """
    if isinstance(name_or_path, Path) or _looks_like_path(name_or_path):
        return load_pump_profile(Path(name_or_path))
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise PumpProfileError("profile", f"must be a name or a path (got {name_or_path!r})")
    name = name_or_path.strip()
    folder = pump_profiles_dir() if directory is None else Path(directory)
    for suffix in PROFILE_SUFFIXES:
        candidate = folder / f"{name}{suffix}"
        if candidate.is_file():
            return load_pump_profile(candidate)
    files = available_pump_profiles(folder)
    listed: list[str] = []
    for file in files:
        profile = load_pump_profile(file)
        if profile.name == name:
            return profile
        label = file.stem if profile.name == file.stem else f"{file.stem} ({profile.name})"
        listed.append(label)
    available = ", ".join(listed) if listed else "none"
    raise PumpProfileError(
        "profile",
        f"no pump profile {name!r} in {folder} (available: {available})",
    )


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.endswith(PROFILE_SUFFIXES)


class _Parser(HardwareDocParser):
    noun = "pump profile"
    max_chars = MAX_PROFILE_TEXT_CHARS

    def _error(self, field: str, message: str) -> PumpProfileError:
        return PumpProfileError(field, message, source=self._source)

    def parse(self, text: str) -> PumpProfile:
        top = self._mapping(self._load_document(text), "", _FIELDS)
        # Structure first: a misspelt sub-field is reported as such, not as a missing one.
        subs = {
            name: self._mapping(top[name], name, known)
            for name, known in (
                ("serial", _SERIAL_FIELDS),
                ("diameter_mm", _RANGE_FIELDS),
                ("plunger_speed_mm_per_h", _RANGE_FIELDS),
                ("mechanics", _MECHANICS_FIELDS),
            )
            if name in top
        }
        self._require(top, "", _REQUIRED)
        name = self._token(
            top["name"], "name", _NAME_RE, "a lower-case name (letters, digits, '_', '-')"
        )
        backend = self._token(top["backend"], "backend", _BACKEND_RE, "a lower-case backend name")
        description = self._line_of_text(top["description"], "description", MAX_TEXT_CHARS)
        source = self._line_of_text(top["source"], "source", MAX_TEXT_CHARS)
        serial = self._serial(subs["serial"])
        address = self._integer(top["address"], "address", 0, MAX_ADDRESS)
        diameter = self._range(subs["diameter_mm"], "diameter_mm")
        speed = self._range(subs["plunger_speed_mm_per_h"], "plunger_speed_mm_per_h")
        mechanics = None
        if "mechanics" in subs:
            if backend != STEPPER_BACKEND:
                raise self._error(
                    "mechanics",
                    f"only for backend {STEPPER_BACKEND!r} (this profile is {backend!r})",
                )
            mechanics = self._mechanics(subs["mechanics"])
        digits = self._integer(
            top["volume_significant_digits"],
            "volume_significant_digits",
            0,
            MAX_SIGNIFICANT_DIGITS,
        )
        return PumpProfile(
            name=name,
            backend=backend,
            description=description,
            source=source,
            serial=serial,
            address=address,
            diameter_mm=diameter,
            plunger_speed_mm_per_h=speed,
            mechanics=mechanics,
            volume_significant_digits=digits,
            file=self._source,
        )

    def _serial(self, fields: Mapping[str, object]) -> SerialSettings:
        self._require(fields, "serial", _SERIAL_FIELDS)
        baud = self._integer(fields["baud"], "serial.baud", 1, 10_000_000)
        data_bits = fields["data_bits"]
        if isinstance(data_bits, bool) or data_bits not in DATA_BITS:
            raise self._error(
                "serial.data_bits",
                f"must be one of {', '.join(map(str, DATA_BITS))} (got {show_value(data_bits)})",
            )
        parity = fields["parity"]
        if parity not in PARITIES:
            raise self._error(
                "serial.parity",
                f"must be one of {', '.join(PARITIES)} (got {show_value(parity)})",
            )
        stop_bits = fields["stop_bits"]
        if isinstance(stop_bits, bool) or stop_bits not in STOP_BITS:
            raise self._error(
                "serial.stop_bits", f"must be one of 1, 1.5, 2 (got {show_value(stop_bits)})"
            )
        assert isinstance(data_bits, int) and isinstance(parity, str)
        assert isinstance(stop_bits, int | float)
        return SerialSettings(
            baud=baud, data_bits=data_bits, parity=parity, stop_bits=float(stop_bits)
        )

    def _range(self, fields: Mapping[str, object], path: str) -> ValueRange:
        self._require(fields, path, _RANGE_FIELDS)
        low = self._positive(fields["min"], f"{path}.min")
        high = self._positive(fields["max"], f"{path}.max")
        if low > high:
            raise self._error(
                f"{path}.min", f"must be <= max ({show_value(high)}) (got {show_value(low)})"
            )
        return ValueRange(min=low, max=high)

    def _mechanics(self, fields: Mapping[str, object]) -> MechanicsSpec:
        self._require(fields, "mechanics", _MECHANICS_FIELDS)
        pitch = self._positive(fields["lead_screw_pitch_mm"], "mechanics.lead_screw_pitch_mm")
        steps = self._integer(fields["steps_per_rev"], "mechanics.steps_per_rev", 1, 100_000)
        micro = self._integer(fields["microsteps"], "mechanics.microsteps", 1, 1024)
        return MechanicsSpec(lead_screw_pitch_mm=pitch, steps_per_rev=steps, microsteps=micro)
