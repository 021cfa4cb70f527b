"""Therapy programs: the YAML format, its total validation, and the validated value type.

A program file (``config/programs/*.yaml``, or the text sent through ``set_program``)::

    name: baclofen-flex
    drug: baclofen                 # must be in the drug library (config/drugs.yaml)
    concentration_ug_per_ml: 500.0
    mode: flex                     # or: continuous
    # continuous: exactly one of daily_dose_ug / rate_ul_per_h
    # flex: a weekly schedule; each group of days has up to 24 steps starting at 00:00
    utc_offset_h: 0                # optional: local time of the schedule
    schedule:
      - days: all                  # or a list such as [mon, tue, wed, thu, fri]
        steps:
          - {at: "00:00", dose_rate_ug_per_h: 8.0}     # or rate_ul_per_h
          - {at: "07:30", dose_rate_ug_per_h: 12.0}
    max_daily_dose_ug: 400.0       # optional; the drug library's maximum applies anyway
    patient_bolus:                 # optional: patient-activated bolus policy
      dose_ug: 20.0
      duration_min: 10.0
      lockout_min: 180.0
      max_per_24h: 4
    reservoir:
      capacity_ul: 20000.0
      volume_ul: 18000.0           # the fill of a fresh ledger; afterwards refills set it
      low_alarm_ul: 2000.0
      low_alarm_days: 7.0          # optional: also warn this many days before low_alarm_ul

Parsing is all-or-nothing: the first problem raises :class:`ProgramError`, which names the
offending field by its dotted path, so a caller can keep the running program (DESIGN
invariant 5). Dose is what a program prescribes: rates are derived from the concentration, so
the same program keeps the patient's dose when a refill changes the concentration.
"""

from __future__ import annotations

import enum
import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from pump_rig.core.dose_schedule import MAX_STEPS_PER_DAY, WEEKDAYS, DoseSchedule, FlexStep
from pump_rig.core.drug_library import (
    Drug,
    DrugLibrary,
    DrugLibraryError,
    default_drug_library_path,
    load_drug_library,
)
from pump_rig.core.pump_types import SECONDS_PER_DAY, SECONDS_PER_HOUR
from pump_rig.core.strict_yaml import (
    DEFAULT_SOURCE,
    FieldError,
    StrictDocParser,
    StrictLoader,
    kind_of,
    show_value,
)

__all__ = [
    "DEFAULT_MAX_RATE_UL_PER_H",
    "MAX_PROGRAM_TEXT_CHARS",
    "BolusPolicy",
    "ProgramError",
    "ProgramMode",
    "RateBasis",
    "TherapyProgram",
    "daily_dose_to_rate_ul_per_h",
    "default_drug_library",
    "dose_rate_to_rate_ul_per_h",
    "load_program_file",
    "parse_program",
    "rate_to_daily_dose_ug",
    "titration_problem",
]

# Device limit used when the caller does not give one (the syringe pump's own ceiling).
DEFAULT_MAX_RATE_UL_PER_H: Final = 1000.0

# Programs are a few dozen lines; refusing huge text keeps a bad service call cheap.
MAX_PROGRAM_TEXT_CHARS: Final = 64 * 1024

MAX_NAME_CHARS: Final = 80
MAX_BOLUSES_PER_24H: Final = 48

_HOURS_PER_DAY: Final = SECONDS_PER_DAY / SECONDS_PER_HOUR
_UL_PER_ML: Final = 1000.0
# A value computed by unit conversions (dose ↔ volume) may land a few ulps above a limit it
# was written to equal; limits are checked against limit × this.
_LIMIT_SLACK: Final = 1.0 + 1e-12
_TIME_RE: Final = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])(?::([0-5][0-9]))?$")

# Field-name endings in units the rig does not use, and the ending it wants instead.
_WRONG_UNITS: Final = (
    ("_mg_per_ml", "_ug_per_ml"),
    ("_ml_per_h", "_ul_per_h"),
    ("_ml_per_day", "_ul_per_h"),
    ("_ug_per_day", "_ug_per_h"),
    ("_mg_per_h", "_ug_per_h"),
    ("_mg", "_ug"),
    ("_ml", "_ul"),
    ("_h", "_min"),
    ("_s", "_min"),
    ("_hours", "_min"),
)


class ProgramMode(enum.StrEnum):
    CONTINUOUS = "continuous"
    FLEX = "flex"


class RateBasis(enum.StrEnum):
    """Which quantity the prescriber wrote; kept so ``to_yaml`` writes back what was written."""

    DAILY_DOSE = "daily_dose_ug"
    RATE = "rate_ul_per_h"
    DOSE_RATE = "dose_rate_ug_per_h"


class ProgramError(FieldError):
    """A program was rejected. ``field`` is the dotted path of the culprit ("" = whole text).

    ``str(e)`` reads ``"reservoir.volume_ul: must be > 0 (got -5)"``, prefixed with the
    source (``"config/programs/x.yaml: ..."``) when one other than the default was given.
    """


def daily_dose_to_rate_ul_per_h(daily_dose_ug: float, concentration_ug_per_ml: float) -> float:
    """Constant rate that delivers ``daily_dose_ug`` per day at the given concentration."""
    return daily_dose_ug / concentration_ug_per_ml * _UL_PER_ML / _HOURS_PER_DAY


def rate_to_daily_dose_ug(rate_ul_per_h: float, concentration_ug_per_ml: float) -> float:
    """Daily dose delivered by a constant ``rate_ul_per_h`` at the given concentration."""
    return rate_ul_per_h * _HOURS_PER_DAY / _UL_PER_ML * concentration_ug_per_ml


def dose_rate_to_rate_ul_per_h(dose_rate_ug_per_h: float, concentration_ug_per_ml: float) -> float:
    return dose_rate_ug_per_h / concentration_ug_per_ml * _UL_PER_ML


@functools.cache
def default_drug_library() -> DrugLibrary:
    """The shipped ``config/drugs.yaml`` (read once)."""
    return load_drug_library(default_drug_library_path())


@dataclass(frozen=True)
class BolusPolicy:
    """Patient-activated bolus: dose per activation, its duration, lockout and daily count."""

    dose_ug: float
    duration_s: float
    lockout_s: float
    max_per_24h: int


@dataclass(frozen=True)
class TherapyProgram:
    """A validated program. Build it with :func:`parse_program`."""

    name: str
    drug: str
    concentration_ug_per_ml: float
    schedule: DoseSchedule
    reservoir_capacity_ul: float
    reservoir_volume_ul: float
    low_reservoir_ul: float
    mode: ProgramMode = ProgramMode.CONTINUOUS
    rate_basis: RateBasis = RateBasis.DAILY_DOSE
    low_reservoir_days: float | None = None
    max_daily_dose_ug: float | None = None
    patient_bolus: BolusPolicy | None = None
    # What the prescriber wrote (per step for flex), for to_yaml; not part of equality.
    written: tuple[tuple[str, float], ...] = field(default=(), compare=False)

    @property
    def daily_dose_ug(self) -> float:
        """Basal dose of the heaviest day of the week."""
        return self.schedule.max_daily_dose_ug

    @property
    def basal_rate_ul_per_h(self) -> float:
        """Mean basal rate over the week at the program's concentration."""
        return daily_dose_to_rate_ul_per_h(
            self.schedule.mean_daily_dose_ug, self.concentration_ug_per_ml
        )

    def planned_max_daily_dose_ug(self) -> float:
        """Heaviest day's basal plus every patient bolus the policy allows in 24 h."""
        bolus = self.patient_bolus
        extra = bolus.dose_ug * bolus.max_per_24h if bolus else 0.0
        return self.daily_dose_ug + extra

    def daily_limit_ug(self, drug: Drug) -> float:
        """The daily maximum in force: the lower of the program's and the drug's."""
        if self.max_daily_dose_ug is None:
            return drug.max_daily_dose_ug
        return min(self.max_daily_dose_ug, drug.max_daily_dose_ug)

    def to_yaml(self) -> str:
        """The program in the file format; ``parse_program(p.to_yaml()) == p``."""
        doc: dict[str, Any] = {
            "name": self.name,
            "drug": self.drug,
            "concentration_ug_per_ml": float(self.concentration_ug_per_ml),
            "mode": self.mode.value,
        }
        if self.schedule.utc_offset_s:
            doc["utc_offset_h"] = self.schedule.utc_offset_s / SECONDS_PER_HOUR
        if self.mode is ProgramMode.CONTINUOUS:
            rate = self.schedule.week[0][0].dose_rate_ug_per_h
            if self.rate_basis is RateBasis.RATE:
                doc["rate_ul_per_h"] = dict(self.written).get(
                    "rate_ul_per_h"
                ) or dose_rate_to_rate_ul_per_h(rate, self.concentration_ug_per_ml)
            else:
                doc["daily_dose_ug"] = dict(self.written).get("daily_dose_ug") or rate * 24.0
        else:
            doc["schedule"] = self._schedule_doc()
        if self.max_daily_dose_ug is not None:
            doc["max_daily_dose_ug"] = float(self.max_daily_dose_ug)
        if self.patient_bolus is not None:
            b = self.patient_bolus
            doc["patient_bolus"] = {
                "dose_ug": float(b.dose_ug),
                "duration_min": b.duration_s / 60.0,
                "lockout_min": b.lockout_s / 60.0,
                "max_per_24h": int(b.max_per_24h),
            }
        reservoir: dict[str, Any] = {
            "capacity_ul": float(self.reservoir_capacity_ul),
            "volume_ul": float(self.reservoir_volume_ul),
            "low_alarm_ul": float(self.low_reservoir_ul),
        }
        if self.low_reservoir_days is not None:
            reservoir["low_alarm_days"] = float(self.low_reservoir_days)
        doc["reservoir"] = reservoir
        body = yaml.dump(
            doc,
            Dumper=_ProgramDumper,
            sort_keys=False,
            default_flow_style=False,
            allow_unicode=True,
        )
        return f"# pump_rig therapy program\n{body}"

    def _schedule_doc(self) -> list[dict[str, Any]]:
        groups: list[tuple[list[str], tuple[FlexStep, ...]]] = []
        for day, steps in zip(WEEKDAYS, self.schedule.week, strict=True):
            for days, group_steps in groups:
                if group_steps == steps:
                    days.append(day)
                    break
            else:
                groups.append(([day], steps))
        out: list[dict[str, Any]] = []
        for days, steps in groups:
            written = [
                {"at": _format_time(s.at_s), "dose_rate_ug_per_h": float(s.dose_rate_ug_per_h)}
                for s in steps
            ]
            out.append({"days": "all" if len(days) == 7 else days, "steps": written})
        return out

    def summary(self) -> str:
        """One line for logs and service replies."""
        kind = (
            f"{self.daily_dose_ug:.6g} µg/day"
            if self.mode is ProgramMode.CONTINUOUS
            else f"flex, up to {self.daily_dose_ug:.6g} µg/day"
        )
        bolus = ""
        if self.patient_bolus is not None:
            b = self.patient_bolus
            bolus = (
                f", bolus {b.dose_ug:g} µg / {b.lockout_s / 60:g} min lockout / "
                f"max {b.max_per_24h} per 24 h"
            )
        return (
            f"{self.name}: {self.drug} {self.concentration_ug_per_ml:g} µg/mL, {kind} "
            f"(mean {self.basal_rate_ul_per_h:.6g} µL/h){bolus}"
        )


def titration_problem(current: TherapyProgram | None, new: TherapyProgram, drug: Drug) -> str:
    """Why ``new`` raises the daily dose more than the drug's titration limit ('' = it does not).

    Compared: the heaviest day's basal dose of each program. A first program has nothing to
    titrate from; the drug's maximum daily dose still applies to it.
    """
    if current is None or current.drug != new.drug:
        return ""
    old, now = current.daily_dose_ug, new.daily_dose_ug
    allowed = drug.titration.max_increase_ug(old)
    if now - old <= allowed * _LIMIT_SLACK:
        return ""
    return (
        f"daily dose rises from {old:.6g} to {now:.6g} µg/day (+{now - old:.6g}); "
        f"{drug.name}'s titration limit is {drug.titration.describe()} "
        f"(+{allowed:.6g} µg/day from here)"
    )


# --- YAML dialect -----------------------------------------------------------------------------


class _ProgramDumper(yaml.SafeDumper):
    """SafeDumper that quotes strings the strict loader would read as numbers."""


for _first, _resolvers in StrictLoader.yaml_implicit_resolvers.items():
    for _tag, _regexp in _resolvers:
        if _tag == "tag:yaml.org,2002:float":
            _ProgramDumper.add_implicit_resolver(_tag, _regexp, [_first])


def _format_time(at_s: float) -> str:
    seconds = round(at_s)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}" if s == 0 else f"{h:02d}:{m:02d}:{s:02d}"


# --- schema -----------------------------------------------------------------------------------

_TOP_FIELDS: Final = (
    "name",
    "drug",
    "concentration_ug_per_ml",
    "mode",
    "daily_dose_ug",
    "rate_ul_per_h",
    "utc_offset_h",
    "schedule",
    "max_daily_dose_ug",
    "patient_bolus",
    "reservoir",
)
_RESERVOIR_FIELDS: Final = ("capacity_ul", "volume_ul", "low_alarm_ul", "low_alarm_days")
_GROUP_FIELDS: Final = ("days", "steps")
_STEP_FIELDS: Final = ("at", "dose_rate_ug_per_h", "rate_ul_per_h")
_BOLUS_FIELDS: Final = ("dose_ug", "duration_min", "lockout_min", "max_per_24h")


def parse_program(
    text: str,
    *,
    source: str = DEFAULT_SOURCE,
    max_rate_ul_per_h: float = DEFAULT_MAX_RATE_UL_PER_H,
    library: DrugLibrary | None = None,
) -> TherapyProgram:
    """Parse and validate program text; raise :class:`ProgramError` on anything wrong.

    ``source`` names the text in error messages (a file path, ``"set_program"``).
    ``max_rate_ul_per_h`` is the device limit no rate (basal or bolus) may exceed.
    ``library`` is the drug library (default: the shipped ``config/drugs.yaml``).
    """
    if not (math.isfinite(max_rate_ul_per_h) and max_rate_ul_per_h > 0):
        raise ValueError(f"max_rate_ul_per_h must be finite and > 0 (got {max_rate_ul_per_h!r})")
    lib = library if library is not None else default_drug_library()
    return _Parser(source, max_rate_ul_per_h, lib).parse(text)


def load_program_file(
    path: Path,
    *,
    max_rate_ul_per_h: float = DEFAULT_MAX_RATE_UL_PER_H,
    library: DrugLibrary | None = None,
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
    return parse_program(text, source=source, max_rate_ul_per_h=max_rate_ul_per_h, library=library)


class _Parser(StrictDocParser):
    noun = "program"
    max_chars = MAX_PROGRAM_TEXT_CHARS

    def __init__(self, source: str, max_rate_ul_per_h: float, library: DrugLibrary) -> None:
        super().__init__(source)
        self._max_rate_ul_per_h = max_rate_ul_per_h
        self._library = library

    def _error(self, field: str, message: str) -> ProgramError:
        return ProgramError(field, message, source=self._source)

    def _unknown_field(self, key: str, known: tuple[str, ...]) -> str:
        for wrong, right in _WRONG_UNITS:
            if key.endswith(wrong):
                fixed = key[: -len(wrong)] + right
                if fixed in known:
                    return f"wrong unit: the rig uses {fixed!r}"
        return super()._unknown_field(key, known)

    def parse(self, text: str) -> TherapyProgram:
        top = self._mapping(self._load_document(text), "", _TOP_FIELDS)

        # Structure first: a misspelt field is reported as such, not as a missing one.
        reservoir_raw = top.get("reservoir")
        reservoir = (
            self._mapping(reservoir_raw, "reservoir", _RESERVOIR_FIELDS)
            if reservoir_raw is not None
            else None
        )
        bolus_raw = top.get("patient_bolus")
        bolus_doc = (
            self._mapping(bolus_raw, "patient_bolus", _BOLUS_FIELDS)
            if bolus_raw is not None
            else None
        )
        for required in ("name", "drug", "concentration_ug_per_ml", "mode"):
            if required not in top:
                raise self._error(required, "required field missing")
        if reservoir is None:
            raise self._error("reservoir", "required field missing")
        for required in _RESERVOIR_FIELDS[:3]:
            if required not in reservoir:
                raise self._error(f"reservoir.{required}", "required field missing")

        name = self._text_field(top["name"], "name")
        drug = self._drug(top["drug"])
        mode = self._mode(top["mode"])
        concentration = self._positive(top["concentration_ug_per_ml"], "concentration_ug_per_ml")
        problem = drug.check_concentration(concentration)
        if problem:
            raise self._error("concentration_ug_per_ml", problem)
        offset_s = 0.0
        if "utc_offset_h" in top:
            offset_h = self._number(top["utc_offset_h"], "utc_offset_h")
            if abs(offset_h) > 14.0:
                raise self._error(
                    "utc_offset_h", f"must be within ±14 h (got {show_value(offset_h)})"
                )
            offset_min = offset_h * 60.0
            # Time zones are whole minutes (in practice quarter hours); a fraction would put
            # step times at odd seconds nobody meant.
            if abs(offset_min - round(offset_min)) > 1e-6:
                raise self._error(
                    "utc_offset_h",
                    f"must be a whole number of minutes, e.g. 5.75 for +05:45 "
                    f"(got {show_value(offset_h)})",
                )
            offset_s = round(offset_min) * 60.0

        written: list[tuple[str, float]] = []
        if mode is ProgramMode.CONTINUOUS:
            if "schedule" in top:
                raise self._error("schedule", "only for mode: flex (continuous has one rate)")
            basis, dose_rate = self._continuous(top, concentration, written)
            schedule = DoseSchedule.constant(dose_rate, offset_s)
        else:
            for single in ("daily_dose_ug", "rate_ul_per_h"):
                if single in top:
                    raise self._error(single, "not for mode: flex (give rates in schedule steps)")
            if "schedule" not in top:
                raise self._error("schedule", "required field missing for mode: flex")
            basis = RateBasis.DOSE_RATE
            schedule = self._schedule(top["schedule"], concentration, offset_s)

        max_daily: float | None = None
        if "max_daily_dose_ug" in top:
            max_daily = self._positive(top["max_daily_dose_ug"], "max_daily_dose_ug")
            if max_daily > drug.max_daily_dose_ug:
                raise self._error(
                    "max_daily_dose_ug",
                    f"{show_value(max_daily)} µg is above {drug.name}'s maximum daily dose of "
                    f"{show_value(drug.max_daily_dose_ug)} µg",
                )
        limit = drug.max_daily_dose_ug if max_daily is None else max_daily
        basal_field = "schedule" if mode is ProgramMode.FLEX else basis.value
        if schedule.max_daily_dose_ug > limit * _LIMIT_SLACK:
            raise self._error(
                basal_field,
                f"basal dose of {schedule.max_daily_dose_ug:.6g} µg/day is above the daily "
                f"maximum of {show_value(limit)} µg",
            )

        bolus = None
        if bolus_doc is not None:
            bolus = self._bolus(bolus_doc, concentration, schedule)
            planned = schedule.max_daily_dose_ug + bolus.dose_ug * bolus.max_per_24h
            if planned > limit * _LIMIT_SLACK:
                raise self._error(
                    "patient_bolus.max_per_24h",
                    f"basal {schedule.max_daily_dose_ug:.6g} µg/day plus {bolus.max_per_24h} "
                    f"boluses of {show_value(bolus.dose_ug)} µg is {planned:.6g} µg, "
                    f"above the daily maximum of {show_value(limit)} µg",
                )

        capacity = self._positive(reservoir["capacity_ul"], "reservoir.capacity_ul")
        volume = self._positive(reservoir["volume_ul"], "reservoir.volume_ul")
        low = self._positive(reservoir["low_alarm_ul"], "reservoir.low_alarm_ul")
        low_days = None
        if "low_alarm_days" in reservoir:
            low_days = self._positive(reservoir["low_alarm_days"], "reservoir.low_alarm_days")
        if volume > capacity:
            raise self._error(
                "reservoir.volume_ul",
                f"must be <= reservoir.capacity_ul ({show_value(capacity)}) "
                f"(got {show_value(volume)})",
            )
        if low >= capacity:
            raise self._error(
                "reservoir.low_alarm_ul",
                f"must be < reservoir.capacity_ul ({show_value(capacity)}) (got {show_value(low)})",
            )

        return TherapyProgram(
            name=name,
            drug=drug.name,
            concentration_ug_per_ml=concentration,
            schedule=schedule,
            reservoir_capacity_ul=capacity,
            reservoir_volume_ul=volume,
            low_reservoir_ul=low,
            mode=mode,
            rate_basis=basis,
            low_reservoir_days=low_days,
            max_daily_dose_ug=max_daily,
            patient_bolus=bolus,
            written=tuple(written),
        )

    def _continuous(
        self, top: dict[str, object], concentration: float, written: list[tuple[str, float]]
    ) -> tuple[RateBasis, float]:
        has_dose, has_rate = "daily_dose_ug" in top, "rate_ul_per_h" in top
        if has_dose and has_rate:
            raise self._error("rate_ul_per_h", "give only one of daily_dose_ug or rate_ul_per_h")
        if not (has_dose or has_rate):
            raise self._error(
                "daily_dose_ug", "required field missing (give daily_dose_ug or rate_ul_per_h)"
            )
        if has_dose:
            basis = RateBasis.DAILY_DOSE
            daily = self._positive(top["daily_dose_ug"], "daily_dose_ug")
            written.append(("daily_dose_ug", daily))
            dose_rate = daily / _HOURS_PER_DAY
        else:
            basis = RateBasis.RATE
            rate = self._positive(top["rate_ul_per_h"], "rate_ul_per_h")
            written.append(("rate_ul_per_h", rate))
            dose_rate = rate / _UL_PER_ML * concentration
        self._check_rate(dose_rate, concentration, basis.value)
        return basis, dose_rate

    def _check_rate(self, dose_rate: float, concentration: float, field: str) -> None:
        rate = dose_rate_to_rate_ul_per_h(dose_rate, concentration)
        if not (math.isfinite(rate) and math.isfinite(dose_rate) and dose_rate > 0):
            raise self._error(field, "gives a rate or dose that is not a finite number > 0")
        if rate > self._max_rate_ul_per_h * _LIMIT_SLACK:
            raise self._error(
                field,
                f"gives {rate:.6g} µL/h, above the device limit of "
                f"{self._max_rate_ul_per_h:g} µL/h",
            )

    def _schedule(self, value: object, concentration: float, offset_s: float) -> DoseSchedule:
        if not isinstance(value, list) or not value:
            raise self._error("schedule", f"must be a list of day groups (got {kind_of(value)})")
        week: list[tuple[FlexStep, ...] | None] = [None] * 7
        for g, raw in enumerate(value):
            path = f"schedule[{g}]"
            group = self._mapping(raw, path, _GROUP_FIELDS)
            days = self._days(group.get("days", "all"), f"{path}.days")
            if "steps" not in group:
                raise self._error(f"{path}.steps", "required field missing")
            steps = self._steps(group["steps"], f"{path}.steps", concentration)
            for day in days:
                if week[day] is not None:
                    raise self._error(
                        f"{path}.days", f"{WEEKDAYS[day]} is already scheduled by another group"
                    )
                week[day] = steps
        missing = [WEEKDAYS[d] for d, steps in enumerate(week) if steps is None]
        if missing:
            raise self._error("schedule", f"no steps for {', '.join(missing)}")
        return DoseSchedule(week=tuple(s for s in week if s is not None), utc_offset_s=offset_s)

    def _days(self, value: object, path: str) -> list[int]:
        if value == "all":
            return list(range(7))
        if not isinstance(value, list) or not value:
            raise self._error(
                path, f"must be 'all' or a list of weekdays (got {show_value(value)})"
            )
        days: list[int] = []
        for item in value:
            name = item.lower()[:3] if isinstance(item, str) else None
            if name not in WEEKDAYS:
                raise self._error(
                    path, f"unknown weekday {show_value(item)} (use {', '.join(WEEKDAYS)})"
                )
            index = WEEKDAYS.index(name)
            if index in days:
                raise self._error(path, f"{name} given twice")
            days.append(index)
        return days

    def _steps(self, value: object, path: str, concentration: float) -> tuple[FlexStep, ...]:
        if not isinstance(value, list) or not value:
            raise self._error(path, f"must be a list of steps (got {kind_of(value)})")
        if len(value) > MAX_STEPS_PER_DAY:
            raise self._error(path, f"{len(value)} steps; at most {MAX_STEPS_PER_DAY} per day")
        steps: list[FlexStep] = []
        for i, raw in enumerate(value):
            where = f"{path}[{i}]"
            step = self._mapping(raw, where, _STEP_FIELDS)
            if "at" not in step:
                raise self._error(f"{where}.at", "required field missing")
            at_s = self._time_of_day(step["at"], f"{where}.at")
            has_dose, has_rate = "dose_rate_ug_per_h" in step, "rate_ul_per_h" in step
            if has_dose == has_rate:
                raise self._error(where, "give exactly one of dose_rate_ug_per_h or rate_ul_per_h")
            if has_dose:
                field = f"{where}.dose_rate_ug_per_h"
                dose_rate = self._positive(step["dose_rate_ug_per_h"], field)
            else:
                field = f"{where}.rate_ul_per_h"
                dose_rate = (
                    self._positive(step["rate_ul_per_h"], field) / _UL_PER_ML * concentration
                )
            self._check_rate(dose_rate, concentration, field)
            if i == 0 and at_s != 0.0:
                raise self._error(f"{where}.at", "the first step of a day must start at 00:00")
            if steps and at_s <= steps[-1].at_s:
                raise self._error(
                    f"{where}.at",
                    f"{_format_time(at_s)} is not after the previous step's "
                    f"{_format_time(steps[-1].at_s)} (steps must be in time order, no overlaps)",
                )
            steps.append(FlexStep(at_s, dose_rate))
        return tuple(steps)

    def _time_of_day(self, value: object, path: str) -> float:
        if not isinstance(value, str):
            # YAML 1.1 reads an unquoted 07:30 as sexagesimal 450: ask for quotes.
            raise self._error(path, f'must be a quoted time "HH:MM" (got {show_value(value)})')
        match = _TIME_RE.match(value.strip())
        if match is None:
            raise self._error(path, f"must be a time of day HH:MM[:SS] (got {value!r})")
        h, m, s = int(match[1]), int(match[2]), int(match[3] or 0)
        return float(h * 3600 + m * 60 + s)

    def _bolus(
        self, doc: dict[str, object], concentration: float, schedule: DoseSchedule
    ) -> BolusPolicy:
        for name in _BOLUS_FIELDS:
            if name not in doc:
                raise self._error(f"patient_bolus.{name}", "required field missing")
        dose = self._positive(doc["dose_ug"], "patient_bolus.dose_ug")
        duration_s = self._positive(doc["duration_min"], "patient_bolus.duration_min") * 60.0
        lockout_s = self._positive(doc["lockout_min"], "patient_bolus.lockout_min") * 60.0
        count_raw = doc["max_per_24h"]
        if isinstance(count_raw, bool) or not isinstance(count_raw, int):
            raise self._error(
                "patient_bolus.max_per_24h", f"must be a whole number (got {show_value(count_raw)})"
            )
        if not 1 <= count_raw <= MAX_BOLUSES_PER_24H:
            raise self._error(
                "patient_bolus.max_per_24h",
                f"must be 1 to {MAX_BOLUSES_PER_24H} (got {show_value(count_raw)})",
            )
        if duration_s > lockout_s:
            raise self._error(
                "patient_bolus.lockout_min", "must not be shorter than the bolus duration"
            )
        bolus_rate = dose / concentration * _UL_PER_ML / (duration_s / SECONDS_PER_HOUR)
        top_rate = bolus_rate + dose_rate_to_rate_ul_per_h(
            schedule.max_dose_rate_ug_per_h, concentration
        )
        if top_rate > self._max_rate_ul_per_h * _LIMIT_SLACK:
            raise self._error(
                "patient_bolus.duration_min",
                f"bolus at {bolus_rate:.6g} µL/h on top of the basal rate is {top_rate:.6g} µL/h, "
                f"above the device limit of {self._max_rate_ul_per_h:g} µL/h",
            )
        return BolusPolicy(dose, duration_s, lockout_s, int(count_raw))

    def _text_field(self, value: object, field: str) -> str:
        return self._line_of_text(value, field, MAX_NAME_CHARS)

    def _drug(self, value: object) -> Drug:
        name = self._text_field(value, "drug").lower()
        try:
            return self._library.get(name)
        except DrugLibraryError as exc:
            raise self._error("drug", exc.message) from None

    def _mode(self, value: object) -> ProgramMode:
        mode = self._text_field(value, "mode").lower()
        try:
            return ProgramMode(mode)
        except ValueError:
            known = ", ".join(m.value for m in ProgramMode)
            raise self._error("mode", f"unknown mode {mode!r} (known: {known})") from None

    def _number(self, value: object, field: str) -> float:
        # bool is an int subclass in Python; "true" is never a volume.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._error(field, f"must be a number (got {kind_of(value)} {show_value(value)})")
        try:
            number = float(value)
        except OverflowError:
            raise self._error(field, f"must be a finite number (got {show_value(value)})") from None
        if not math.isfinite(number):
            raise self._error(field, f"must be a finite number (got {show_value(number)})")
        return number

    def _positive(self, value: object, field: str) -> float:
        number = self._number(value, field)
        if number <= 0:
            raise self._error(field, f"must be > 0 (got {show_value(value)})")
        return number
