"""The bench drug library: per-drug concentration range, daily maximum and titration limit.

The library file (``config/drugs.yaml``)::

    version: 1                      # optional; only 1 exists
    note: free text                 # optional
    drugs:
      baclofen:
        dose_unit: ug               # only micrograms exist; anything else is refused
        concentration_ug_per_ml: {min: 50, max: 2000}
        max_daily_dose_ug: 1000
        max_daily_increase: {percent: 30}   # or {ug: 2.4}: exactly one of the two
        source: Lioresal Intrathecal label ...

Every field of a drug is required. Parsing is all-or-nothing: the first problem raises
:class:`DrugLibraryError` naming the culprit by its dotted path (``morphine.max_daily_dose_ug``;
drug fields are named from the drug, without the ``drugs.`` prefix).

The figures are bench defaults for exercising the rig's limits, not clinical guidance.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

from pump_rig.core.strict_yaml import (
    DEFAULT_SOURCE,
    FieldError,
    StrictDocParser,
    key_text,
    kind_of,
    show_value,
)

__all__ = [
    "DOSE_UNITS",
    "LIBRARY_VERSION",
    "MAX_LIBRARY_TEXT_CHARS",
    "Drug",
    "DrugLibrary",
    "DrugLibraryError",
    "TitrationLimit",
    "default_drug_library_path",
    "load_drug_library",
    "parse_drug_library",
]

LIBRARY_VERSION: Final = 1
DOSE_UNITS: Final[tuple[str, ...]] = ("ug",)
MAX_LIBRARY_TEXT_CHARS: Final = 256 * 1024
MAX_SOURCE_CHARS: Final = 400

_DRUG_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_-]{0,39}\Z")

_TOP_FIELDS: Final = ("version", "note", "drugs")
_DRUG_FIELDS: Final = (
    "dose_unit",
    "concentration_ug_per_ml",
    "max_daily_dose_ug",
    "max_daily_increase",
    "source",
)
_RANGE_FIELDS: Final = ("min", "max")
_INCREASE_FIELDS: Final = ("percent", "ug")


class DrugLibraryError(FieldError):
    """The drug library (or a lookup in it) was rejected.

    ``field`` is the dotted path of the culprit ("" = the whole text), ``source`` the file.
    ``str(e)`` reads ``"config/drugs.yaml: morphine.max_daily_dose_ug: must be a finite
    number > 0 (got -1)"``; the source is left out when it is the default ``"<text>"`` and the
    field when it is empty.
    """


# --- value types ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TitrationLimit:
    """How much one program change may raise the daily dose: exactly one of the two is set.

    ``percent``: relative to the current program's daily dose, in (0, 100].
    ``ug``: absolute, in µg/day.
    """

    percent: float | None
    ug: float | None

    def __post_init__(self) -> None:
        if (self.percent is None) == (self.ug is None):
            got = "both" if self.percent is not None else "neither"
            raise DrugLibraryError("", f"give exactly one of percent or ug (got {got})")
        if self.percent is not None:
            if not (_is_number(self.percent) and 0 < self.percent <= 100):
                raise DrugLibraryError(
                    "percent",
                    f"must be a finite number in (0, 100] (got {show_value(self.percent)})",
                )
        elif not (_is_number(self.ug) and self.ug is not None and self.ug > 0):
            raise DrugLibraryError("ug", f"must be a finite number > 0 (got {show_value(self.ug)})")

    def max_increase_ug(self, current_daily_dose_ug: float) -> float:
        """Largest allowed rise (µg/day) above ``current_daily_dose_ug`` in one change.

        A percentage limit allows nothing above a current dose of 0: starting a drug is a new
        program, not a titration step.
        """
        current = current_daily_dose_ug
        if not (_is_number(current) and current >= 0):
            raise ValueError(
                f"current_daily_dose_ug must be a finite number >= 0 (got {show_value(current)})"
            )
        if self.percent is not None:
            # percent / 100 first: a factor <= 1 never rounds the rise above the current dose.
            return current * (self.percent / 100.0)
        assert self.ug is not None  # __post_init__: exactly one is set
        return self.ug

    def describe(self) -> str:
        """``"30 % per change"`` or ``"2.4 µg/day per change"``."""
        if self.percent is not None:
            return f"{self.percent:g} % per change"
        return f"{self.ug:g} µg/day per change"


@dataclass(frozen=True)
class Drug:
    """One drug's bench limits. Build it with :func:`parse_drug_library`.

    Direct construction is checked too, but only the parser names fields by YAML path.
    """

    name: str
    dose_unit: str
    min_concentration_ug_per_ml: float
    max_concentration_ug_per_ml: float
    max_daily_dose_ug: float
    titration: TitrationLimit
    source: str

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and _DRUG_NAME_RE.match(self.name)):
            raise DrugLibraryError("name", f"not a valid drug name (got {show_value(self.name)})")
        if self.dose_unit not in DOSE_UNITS:
            raise DrugLibraryError(f"{self.name}.dose_unit", _unit_message(self.dose_unit))
        for attr in (
            "min_concentration_ug_per_ml",
            "max_concentration_ug_per_ml",
            "max_daily_dose_ug",
        ):
            value = getattr(self, attr)
            if not (_is_number(value) and value > 0):
                raise DrugLibraryError(
                    f"{self.name}.{attr}", f"must be a finite number > 0 (got {show_value(value)})"
                )
        if self.min_concentration_ug_per_ml > self.max_concentration_ug_per_ml:
            raise DrugLibraryError(
                f"{self.name}.min_concentration_ug_per_ml",
                f"must be <= max_concentration_ug_per_ml "
                f"({show_value(self.max_concentration_ug_per_ml)}) "
                f"(got {show_value(self.min_concentration_ug_per_ml)})",
            )
        if not isinstance(self.titration, TitrationLimit):
            raise DrugLibraryError(f"{self.name}.titration", "must be a TitrationLimit")
        if self.titration.ug is not None and self.titration.ug > self.max_daily_dose_ug:
            raise DrugLibraryError(
                f"{self.name}.titration",
                f"a step of {show_value(self.titration.ug)} µg/day is above max_daily_dose_ug "
                f"({show_value(self.max_daily_dose_ug)})",
            )
        if not (isinstance(self.source, str) and self.source.strip()):
            raise DrugLibraryError(f"{self.name}.source", "must not be empty")

    def check_concentration(self, concentration_ug_per_ml: float) -> str | None:
        """None if the concentration is within this drug's range, else the reason why not."""
        c = concentration_ug_per_ml
        limits = f"{self.min_concentration_ug_per_ml:g}–{self.max_concentration_ug_per_ml:g} µg/mL"
        if not _is_number(c):
            return f"{self.name} concentration must be a finite number (got {show_value(c)})"
        if self.min_concentration_ug_per_ml <= c <= self.max_concentration_ug_per_ml:
            return None
        return f"{self.name} concentration {c:g} µg/mL is outside the library range {limits}"


@dataclass(frozen=True)
class DrugLibrary:
    """The validated library: drugs by (lower-case) name, and the file it came from."""

    drugs: Mapping[str, Drug]
    source: str = DEFAULT_SOURCE

    def __post_init__(self) -> None:
        # A read-only copy: neither the caller's dict nor a reader can change the library.
        if not isinstance(self.drugs, Mapping) or not all(isinstance(k, str) for k in self.drugs):
            raise DrugLibraryError("drugs", "must map drug names to drugs", source=self.source)
        frozen = MappingProxyType({name: self.drugs[name] for name in sorted(self.drugs)})
        object.__setattr__(self, "drugs", frozen)
        if not frozen:
            raise DrugLibraryError("drugs", "must list at least one drug", source=self.source)
        for name, drug in frozen.items():
            if not isinstance(drug, Drug) or drug.name != name:
                raise DrugLibraryError(
                    f"drugs.{name}", "must be the Drug of that name", source=self.source
                )

    def names(self) -> tuple[str, ...]:
        """The drug names, sorted."""
        return tuple(self.drugs)

    def get(self, name: str) -> Drug:
        """The drug called ``name`` (case and surrounding blanks ignored).

        Unknown names raise :class:`DrugLibraryError` on field ``"drug"``, suggesting a close
        match when there is one.
        """
        key = name.strip().lower() if isinstance(name, str) else name
        if isinstance(key, str) and key in self.drugs:
            return self.drugs[key]
        known = ", ".join(self.names())
        hint = ""
        if isinstance(key, str):
            close = difflib.get_close_matches(key, self.names(), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
        raise DrugLibraryError("drug", f"unknown drug {show_value(key)} ({hint}known: {known})")


# --- loading ----------------------------------------------------------------------------------


def parse_drug_library(text: str, *, source: str = DEFAULT_SOURCE) -> DrugLibrary:
    """Parse and validate library text; raise :class:`DrugLibraryError` on anything wrong."""
    return _Parser(source).parse(text)


def load_drug_library(path: Path) -> DrugLibrary:
    """Read and parse a library file; every failure is a :class:`DrugLibraryError` naming it."""
    path = Path(path)
    source = str(path)
    try:
        if not path.exists():
            raise DrugLibraryError("", "file not found", source=source)
        if not path.is_file():
            raise DrugLibraryError("", "not a regular file", source=source)
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DrugLibraryError("", f"not UTF-8 text ({exc.reason})", source=source) from exc
    except OSError as exc:
        raise DrugLibraryError("", f"cannot read: {exc.strerror or exc}", source=source) from exc
    return parse_drug_library(text, source=source)


def default_drug_library_path() -> Path:
    """``config/drugs.yaml`` of the installed package, else of the source tree.

    Like ``pumprig``'s ``package_share()``; an install built before the library existed has no
    copy, so the source tree's is used then too.
    """
    source_tree = Path(__file__).resolve().parents[4] / "config" / "drugs.yaml"
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("pump_rig")) / "config" / "drugs.yaml"
    except Exception:
        return source_tree
    if installed.is_file() or not source_tree.is_file():
        return installed
    return source_tree


class _Parser(StrictDocParser):
    noun = "drug library"
    max_chars = MAX_LIBRARY_TEXT_CHARS

    def _error(self, field: str, message: str) -> DrugLibraryError:
        return DrugLibraryError(field, message, source=self._source)

    def parse(self, text: str) -> DrugLibrary:
        top = self._mapping(self._load_document(text), "", _TOP_FIELDS)
        if "version" in top:
            self._version(top["version"])
        if "note" in top and not isinstance(top["note"], str):
            raise self._error("note", f"must be text (got {kind_of(top['note'])})")
        if "drugs" not in top:
            raise self._error("drugs", "required field missing")
        drugs_raw = top["drugs"]
        if not isinstance(drugs_raw, Mapping):
            raise self._error(
                "drugs", f"must be a mapping of drug names (got {kind_of(drugs_raw)})"
            )
        if not drugs_raw:
            raise self._error("drugs", "must list at least one drug")
        drugs: dict[str, Drug] = {}
        for key, entry in drugs_raw.items():
            name = self._drug_name(key)
            drugs[name] = self._drug(name, entry)
        return DrugLibrary(drugs=drugs, source=self._source)

    def _version(self, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._error(
                "version", f"must be an integer (got {kind_of(value)} {show_value(value)})"
            )
        if value != LIBRARY_VERSION:
            raise self._error(
                "version",
                f"unsupported version {show_value(value)} (this loader reads {LIBRARY_VERSION})",
            )

    def _drug_name(self, key: object) -> str:
        if not isinstance(key, str):
            raise self._error(
                f"drugs.{key_text(key)}", f"drug names must be text (got {kind_of(key)})"
            )
        if not _DRUG_NAME_RE.match(key):
            raise self._error(
                f"drugs.{key_text(key)}",
                "drug names must be lower case: a letter, then letters, digits, '-' or '_' "
                "(at most 40)",
            )
        return key

    def _drug(self, name: str, entry: object) -> Drug:
        fields = self._mapping(entry, name, _DRUG_FIELDS)
        # Structure first: a misspelt field is reported as such, not as a missing one.
        conc = self._sub_mapping(fields, name, "concentration_ug_per_ml", _RANGE_FIELDS)
        increase = self._sub_mapping(fields, name, "max_daily_increase", _INCREASE_FIELDS)
        for field in _DRUG_FIELDS:
            if field not in fields:
                raise self._error(f"{name}.{field}", "required field missing")
        assert conc is not None and increase is not None  # both required, checked above
        for field in _RANGE_FIELDS:
            if field not in conc:
                raise self._error(
                    f"{name}.concentration_ug_per_ml.{field}", "required field missing"
                )

        unit = fields["dose_unit"]
        if not isinstance(unit, str):
            raise self._error(
                f"{name}.dose_unit", f"must be text (got {kind_of(unit)} {show_value(unit)})"
            )
        if unit not in DOSE_UNITS:
            raise self._error(f"{name}.dose_unit", _unit_message(unit))

        c_min = self._positive(conc["min"], f"{name}.concentration_ug_per_ml.min")
        c_max = self._positive(conc["max"], f"{name}.concentration_ug_per_ml.max")
        if c_min > c_max:
            raise self._error(
                f"{name}.concentration_ug_per_ml.min",
                f"must be <= max ({show_value(c_max)}) (got {show_value(c_min)})",
            )
        max_daily = self._positive(fields["max_daily_dose_ug"], f"{name}.max_daily_dose_ug")
        titration = self._titration(name, increase, max_daily)
        source = self._source_text(fields["source"], f"{name}.source")
        return Drug(
            name=name,
            dose_unit=unit,
            min_concentration_ug_per_ml=c_min,
            max_concentration_ug_per_ml=c_max,
            max_daily_dose_ug=max_daily,
            titration=titration,
            source=source,
        )

    def _sub_mapping(
        self, fields: dict[str, object], name: str, field: str, known: tuple[str, ...]
    ) -> dict[str, object] | None:
        if field not in fields:
            return None
        return self._mapping(fields[field], f"{name}.{field}", known)

    def _titration(
        self, name: str, increase: dict[str, object], max_daily: float
    ) -> TitrationLimit:
        path = f"{name}.max_daily_increase"
        has_percent, has_ug = "percent" in increase, "ug" in increase
        if has_percent == has_ug:
            got = "both" if has_percent else "neither"
            raise self._error(path, f"give exactly one of percent or ug (got {got})")
        if has_percent:
            percent = self._number(increase["percent"], f"{path}.percent", "in (0, 100]")
            if not 0 < percent <= 100:
                raise self._error(
                    f"{path}.percent",
                    f"must be a finite number in (0, 100] (got {show_value(increase['percent'])})",
                )
            return TitrationLimit(percent=percent, ug=None)
        ug = self._positive(increase["ug"], f"{path}.ug")
        if ug > max_daily:
            raise self._error(
                f"{path}.ug",
                f"must be <= max_daily_dose_ug ({show_value(max_daily)}) (got {show_value(ug)})",
            )
        return TitrationLimit(percent=None, ug=ug)

    def _number(self, value: object, field: str, wanted: str) -> float:
        # bool is an int subclass in Python; "true" is never a dose.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._error(
                field,
                f"must be a finite number {wanted} (got {kind_of(value)} {show_value(value)})",
            )
        try:
            number = float(value)
        except OverflowError:
            raise self._error(
                field, f"must be a finite number {wanted} (got {show_value(value)})"
            ) from None
        if not math.isfinite(number):
            raise self._error(field, f"must be a finite number {wanted} (got {show_value(number)})")
        return number

    def _positive(self, value: object, field: str) -> float:
        number = self._number(value, field, "> 0")
        if number <= 0:
            raise self._error(field, f"must be a finite number > 0 (got {show_value(value)})")
        return number

    def _source_text(self, value: object, field: str) -> str:
        return self._line_of_text(value, field, MAX_SOURCE_CHARS)


# --- helpers ----------------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    """A finite int or float that is not a bool."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _unit_message(unit: object) -> str:
    supported = ", ".join(repr(u) for u in DOSE_UNITS)
    return (
        f"unsupported dose unit {show_value(unit)} "
        f"(supported: {supported}; doses are in micrograms)"
    )
