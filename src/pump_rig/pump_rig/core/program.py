"""Therapy programs: the YAML format, its total validation, and the validated value type.

A program file (``config/programs/*.yaml``, or the text sent through ``set_program``)::

    name: baclofen-constant
    drug: baclofen
    concentration_ug_per_ml: 500.0
    mode: continuous
    daily_dose_ug: 240.0          # exactly one of daily_dose_ug or rate_ul_per_h
    reservoir:
      capacity_ul: 20000.0
      volume_ul: 18000.0
      low_alarm_ul: 2000.0

Every field is required (except that exactly one of ``daily_dose_ug`` / ``rate_ul_per_h`` is
given). Parsing is all-or-nothing: the first problem found raises :class:`ProgramError`, which
names the offending field by its dotted path, so a caller can keep the running program
(DESIGN invariant 5).

Only constant-rate therapy exists today. ``mode`` is explicit so that later modes (flex
schedules, boluses) can add their own fields without making old files ambiguous.
"""

from __future__ import annotations

import difflib
import enum
import math
import re
import unicodedata
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from pump_rig.core.pump_types import SECONDS_PER_DAY, SECONDS_PER_HOUR

__all__ = [
    "DEFAULT_MAX_RATE_UL_PER_H",
    "KNOWN_DRUGS",
    "MAX_PROGRAM_TEXT_CHARS",
    "ProgramError",
    "ProgramMode",
    "RateBasis",
    "TherapyProgram",
    "daily_dose_to_rate_ul_per_h",
    "load_program_file",
    "parse_program",
    "rate_to_daily_dose_ug",
]

# A later issue replaces this with a drug library file (with per-drug daily maxima).
KNOWN_DRUGS: Final[frozenset[str]] = frozenset(
    {"baclofen", "morphine", "hydromorphone", "fentanyl", "bupivacaine", "clonidine", "ziconotide"}
)

# Device limit used when the caller does not give one (the syringe pump's own ceiling).
DEFAULT_MAX_RATE_UL_PER_H: Final = 1000.0

# Programs are a dozen lines; refusing huge text keeps a bad service call cheap.
MAX_PROGRAM_TEXT_CHARS: Final = 64 * 1024

MAX_NAME_CHARS: Final = 80

_DEFAULT_SOURCE: Final = "<text>"
_HOURS_PER_DAY: Final = SECONDS_PER_DAY / SECONDS_PER_HOUR
_UL_PER_ML: Final = 1000.0


class ProgramMode(enum.StrEnum):
    """How the program delivers. Later issues add e.g. ``flex``."""

    CONTINUOUS = "continuous"


class RateBasis(enum.StrEnum):
    """Which quantity the prescriber wrote; the other one is derived from it.

    Kept so that ``to_yaml`` writes back what was written and round trips exactly.
    """

    DAILY_DOSE = "daily_dose_ug"
    RATE = "rate_ul_per_h"


class ProgramError(ValueError):
    """A program was rejected. ``field`` is the dotted path of the culprit ("" = whole text).

    ``str(e)`` reads ``"reservoir.volume_ul: must be > 0 (got -5)"``, prefixed with the
    source (``"config/programs/x.yaml: ..."``) when one other than the default was given.
    """

    def __init__(self, field: str, message: str, *, source: str = _DEFAULT_SOURCE) -> None:
        self.field = field
        self.message = message
        self.source = source
        super().__init__(self._text())

    def _text(self) -> str:
        parts = []
        if self.source != _DEFAULT_SOURCE:
            parts.append(self.source)
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)

    def __str__(self) -> str:
        return self._text()


def daily_dose_to_rate_ul_per_h(daily_dose_ug: float, concentration_ug_per_ml: float) -> float:
    """Constant rate that delivers ``daily_dose_ug`` per day at the given concentration."""
    return daily_dose_ug / concentration_ug_per_ml * _UL_PER_ML / _HOURS_PER_DAY


def rate_to_daily_dose_ug(rate_ul_per_h: float, concentration_ug_per_ml: float) -> float:
    """Daily dose delivered by a constant ``rate_ul_per_h`` at the given concentration."""
    return rate_ul_per_h * _HOURS_PER_DAY / _UL_PER_ML * concentration_ug_per_ml


@dataclass(frozen=True)
class TherapyProgram:
    """A validated constant-rate program. Build it with :func:`parse_program`.

    Direct construction is checked too (``__post_init__``), so a program object is never
    inconsistent, but only the parser reports problems with YAML field paths.
    """

    name: str
    drug: str
    concentration_ug_per_ml: float
    basal_rate_ul_per_h: float
    daily_dose_ug: float
    reservoir_capacity_ul: float
    reservoir_volume_ul: float
    low_reservoir_ul: float
    mode: ProgramMode = ProgramMode.CONTINUOUS
    rate_basis: RateBasis = RateBasis.DAILY_DOSE

    def __post_init__(self) -> None:
        for attr in (
            "concentration_ug_per_ml",
            "basal_rate_ul_per_h",
            "daily_dose_ug",
            "reservoir_capacity_ul",
            "reservoir_volume_ul",
            "low_reservoir_ul",
        ):
            value = getattr(self, attr)
            ok = isinstance(value, float | int) and not isinstance(value, bool)
            if not (ok and math.isfinite(value) and value > 0):
                raise ProgramError(attr, f"must be a finite number > 0 (got {_show(value)})")
        if not self.name.strip():
            raise ProgramError("name", "must not be empty")
        if self.drug not in KNOWN_DRUGS:
            raise ProgramError("drug", f"unknown drug {self.drug!r}")
        if self.reservoir_volume_ul > self.reservoir_capacity_ul:
            raise ProgramError("reservoir_volume_ul", "must be <= reservoir_capacity_ul")
        if self.low_reservoir_ul >= self.reservoir_capacity_ul:
            raise ProgramError("low_reservoir_ul", "must be < reservoir_capacity_ul")
        expected = daily_dose_to_rate_ul_per_h(self.daily_dose_ug, self.concentration_ug_per_ml)
        if not math.isclose(self.basal_rate_ul_per_h, expected, rel_tol=1e-9):
            raise ProgramError(
                "basal_rate_ul_per_h",
                f"{self.basal_rate_ul_per_h!r} does not match daily_dose_ug at this "
                f"concentration (expected {expected!r})",
            )

    def to_yaml(self) -> str:
        """The program in the file format; ``parse_program(p.to_yaml()) == p``."""
        doc: dict[str, Any] = {
            "name": self.name,
            "drug": self.drug,
            "concentration_ug_per_ml": float(self.concentration_ug_per_ml),
            "mode": self.mode.value,
        }
        if self.rate_basis is RateBasis.DAILY_DOSE:
            doc["daily_dose_ug"] = float(self.daily_dose_ug)
        else:
            doc["rate_ul_per_h"] = float(self.basal_rate_ul_per_h)
        doc["reservoir"] = {
            "capacity_ul": float(self.reservoir_capacity_ul),
            "volume_ul": float(self.reservoir_volume_ul),
            "low_alarm_ul": float(self.low_reservoir_ul),
        }
        body = yaml.dump(
            doc,
            Dumper=_ProgramDumper,
            sort_keys=False,
            default_flow_style=False,
            allow_unicode=True,
        )
        return f"# pump_rig therapy program\n{body}"

    def summary(self) -> str:
        """One line for logs and service replies."""
        return (
            f"{self.name}: {self.drug} {self.concentration_ug_per_ml:g} µg/mL, "
            f"{self.daily_dose_ug:.6g} µg/day = {self.basal_rate_ul_per_h:.6g} µL/h, "
            f"reservoir {self.reservoir_volume_ul:g}/{self.reservoir_capacity_ul:g} µL"
        )


# --- YAML dialect -----------------------------------------------------------------------------

# PyYAML (YAML 1.1) reads "1e3" and "2.4e2" as text (it wants "2.4e+2"); prescribers mean
# numbers, and YAML 1.2 agrees.
_EXP_FLOAT_RE: Final = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_EXP_FLOAT_FIRST: Final = list("-+.0123456789")


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: object, line: int) -> None:
        super().__init__(f"duplicate field {key!r} (line {line})")
        self.key = key
        self.line = line


class _ProgramLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise _DuplicateKeyError(key, key_node.start_mark.line + 1)
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _ProgramDumper(yaml.SafeDumper):
    """SafeDumper that quotes strings the loader would read as exponent floats."""


_ProgramLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT_RE, _EXP_FLOAT_FIRST)
_ProgramDumper.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT_RE, _EXP_FLOAT_FIRST)


# --- schema -----------------------------------------------------------------------------------

_TOP_FIELDS: Final = (
    "name",
    "drug",
    "concentration_ug_per_ml",
    "mode",
    "daily_dose_ug",
    "rate_ul_per_h",
    "reservoir",
)
_RESERVOIR_FIELDS: Final = ("capacity_ul", "volume_ul", "low_alarm_ul")


def parse_program(
    text: str,
    *,
    source: str = _DEFAULT_SOURCE,
    max_rate_ul_per_h: float = DEFAULT_MAX_RATE_UL_PER_H,
) -> TherapyProgram:
    """Parse and validate program text; raise :class:`ProgramError` on anything wrong.

    ``source`` names the text in error messages (a file path, ``"set_program"``).
    ``max_rate_ul_per_h`` is the device limit the program's rate must not exceed.
    """
    if not (math.isfinite(max_rate_ul_per_h) and max_rate_ul_per_h > 0):
        raise ValueError(f"max_rate_ul_per_h must be finite and > 0 (got {max_rate_ul_per_h!r})")
    return _Parser(source, max_rate_ul_per_h).parse(text)


def load_program_file(
    path: Path, *, max_rate_ul_per_h: float = DEFAULT_MAX_RATE_UL_PER_H
) -> TherapyProgram:
    """Read and parse a program file; every failure is a :class:`ProgramError` naming ``path``."""
    source = str(path)
    if not path.exists():
        raise ProgramError("", "file not found", source=source)
    if not path.is_file():
        raise ProgramError("", "not a regular file", source=source)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProgramError("", f"not UTF-8 text ({exc.reason})", source=source) from exc
    except OSError as exc:
        raise ProgramError("", f"cannot read: {exc.strerror or exc}", source=source) from exc
    return parse_program(text, source=source, max_rate_ul_per_h=max_rate_ul_per_h)


class _Parser:
    """One parse: carries the source name so every error can name it."""

    def __init__(self, source: str, max_rate_ul_per_h: float) -> None:
        self._source = source
        self._max_rate_ul_per_h = max_rate_ul_per_h

    def _error(self, field: str, message: str) -> ProgramError:
        return ProgramError(field, message, source=self._source)

    def parse(self, text: str) -> TherapyProgram:
        if not isinstance(text, str):
            raise self._error("", f"program must be text (got {type(text).__name__})")
        if len(text) > MAX_PROGRAM_TEXT_CHARS:
            raise self._error(
                "", f"program text too long ({len(text)} chars, max {MAX_PROGRAM_TEXT_CHARS})"
            )
        doc = self._load_yaml(text)
        if doc is None:
            raise self._error("", "program is empty")
        top = self._mapping(doc, "", _TOP_FIELDS)

        # Structure first: a misspelt field is reported as such, not as a missing one.
        reservoir_raw = top.get("reservoir")
        reservoir = (
            self._mapping(reservoir_raw, "reservoir", _RESERVOIR_FIELDS)
            if reservoir_raw is not None
            else None
        )
        for field in ("name", "drug", "concentration_ug_per_ml", "mode"):
            if field not in top:
                raise self._error(field, "required field missing")
        if reservoir is None:
            raise self._error("reservoir", "required field missing")
        for field in _RESERVOIR_FIELDS:
            if field not in reservoir:
                raise self._error(f"reservoir.{field}", "required field missing")

        name = self._text_field(top["name"], "name")
        drug = self._drug(top["drug"])
        mode = self._mode(top["mode"])
        concentration = self._positive(top["concentration_ug_per_ml"], "concentration_ug_per_ml")

        has_dose, has_rate = "daily_dose_ug" in top, "rate_ul_per_h" in top
        if has_dose and has_rate:
            raise self._error("rate_ul_per_h", "give only one of daily_dose_ug or rate_ul_per_h")
        if not (has_dose or has_rate):
            raise self._error(
                "daily_dose_ug", "required field missing (give daily_dose_ug or rate_ul_per_h)"
            )
        if has_dose:
            basis = RateBasis.DAILY_DOSE
            daily_dose = self._positive(top["daily_dose_ug"], "daily_dose_ug")
            rate = daily_dose_to_rate_ul_per_h(daily_dose, concentration)
        else:
            basis = RateBasis.RATE
            rate = self._positive(top["rate_ul_per_h"], "rate_ul_per_h")
            daily_dose = rate_to_daily_dose_ug(rate, concentration)
        if not (math.isfinite(rate) and rate > 0 and math.isfinite(daily_dose) and daily_dose > 0):
            raise self._error(basis.value, "gives a rate or dose that is not a finite number > 0")
        if rate > self._max_rate_ul_per_h:
            raise self._error(
                basis.value,
                f"gives {rate:.6g} µL/h, above the device limit of "
                f"{self._max_rate_ul_per_h:g} µL/h",
            )

        capacity = self._positive(reservoir["capacity_ul"], "reservoir.capacity_ul")
        volume = self._positive(reservoir["volume_ul"], "reservoir.volume_ul")
        low = self._positive(reservoir["low_alarm_ul"], "reservoir.low_alarm_ul")
        if volume > capacity:
            raise self._error(
                "reservoir.volume_ul",
                f"must be <= reservoir.capacity_ul ({_show(capacity)}) (got {_show(volume)})",
            )
        if low >= capacity:
            raise self._error(
                "reservoir.low_alarm_ul",
                f"must be < reservoir.capacity_ul ({_show(capacity)}) (got {_show(low)})",
            )

        return TherapyProgram(
            name=name,
            drug=drug,
            concentration_ug_per_ml=concentration,
            basal_rate_ul_per_h=rate,
            daily_dose_ug=daily_dose,
            reservoir_capacity_ul=capacity,
            reservoir_volume_ul=volume,
            low_reservoir_ul=low,
            mode=mode,
            rate_basis=basis,
        )

    def _load_yaml(self, text: str) -> object:
        try:
            return yaml.load(text, Loader=_ProgramLoader)  # a SafeLoader subclass
        except _DuplicateKeyError as exc:
            raise self._error(str(exc.key), f"duplicate field (line {exc.line})") from exc
        except yaml.MarkedYAMLError as exc:
            where = ""
            if exc.problem_mark is not None:
                mark = exc.problem_mark
                where = f" at line {mark.line + 1}, column {mark.column + 1}"
            raise self._error("", f"YAML syntax error{where}: {exc.problem}") from exc
        except yaml.YAMLError as exc:
            raise self._error("", f"YAML error: {exc}") from exc

    def _mapping(self, value: object, path: str, known: tuple[str, ...]) -> dict[str, object]:
        if not isinstance(value, Mapping):
            what = "must be" if path else "program must be"
            raise self._error(path, f"{what} a mapping of fields (got {_kind(value)})")
        out: dict[str, object] = {}
        for key, item in value.items():
            field = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                raise self._error(field, f"field names must be text (got {_kind(key)})")
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
                raise self._error(field, f"unknown field ({hint})")
            out[key] = item
        return out

    def _text_field(self, value: object, field: str) -> str:
        if not isinstance(value, str):
            raise self._error(field, f"must be text (got {_kind(value)} {_show(value)})")
        text = value.strip()
        if not text:
            raise self._error(field, "must not be empty")
        if len(text) > MAX_NAME_CHARS:
            raise self._error(field, f"too long ({len(text)} chars, max {MAX_NAME_CHARS})")
        # Names go into messages, logs and bag metadata: one printable line only.
        if any(unicodedata.category(ch)[0] in "CZ" and ch != " " for ch in text):
            raise self._error(field, f"must be one line of printable text (got {text!r})")
        return text

    def _drug(self, value: object) -> str:
        drug = self._text_field(value, "drug").lower()
        if drug not in KNOWN_DRUGS:
            close = difflib.get_close_matches(drug, sorted(KNOWN_DRUGS), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise self._error(
                "drug", f"unknown drug {drug!r} ({hint}known: {', '.join(sorted(KNOWN_DRUGS))})"
            )
        return drug

    def _mode(self, value: object) -> ProgramMode:
        mode = self._text_field(value, "mode").lower()
        try:
            return ProgramMode(mode)
        except ValueError:
            known = ", ".join(m.value for m in ProgramMode)
            raise self._error("mode", f"unknown mode {mode!r} (known: {known})") from None

    def _positive(self, value: object, field: str) -> float:
        # bool is an int subclass in Python; "true" is never a volume.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._error(field, f"must be a number (got {_kind(value)} {_show(value)})")
        try:
            number = float(value)
        except OverflowError:
            raise self._error(field, f"must be a finite number (got {_show(value)})") from None
        if not math.isfinite(number):
            raise self._error(field, f"must be a finite number (got {_show(number)})")
        if number <= 0:
            raise self._error(field, f"must be > 0 (got {_show(value)})")
        return number


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    names = {bool: "bool", int: "integer", float: "number", str: "text", list: "list"}
    return names.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    """Render a value for a message: -5.0 as "-5", text quoted, long things cut short."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value)) if abs(value) < 1e16 else repr(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        digits = str(value)
        return digits if len(digits) <= 40 else f"{digits[:20]}...({len(digits)} digits)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
