"""The syringe catalog: published inner diameters of real syringes, each with its source.

The catalog file (``hardware/syringes.yaml``)::

    version: 1                          # optional; only 1 exists
    note: free text                     # optional
    syringes:
      - id: bd_plastipak_30ml           # snake_case, unique in the file
        maker: BD
        model: Plastipak 30 mL
        nominal_volume_ml: 30
        inner_diameter_mm: 21.59
        source: New Era NE-1000 user manual, syringe diameter table
        note: free text                 # optional: where sources disagree, ...

Parsing is all-or-nothing: the first problem raises :class:`SyringeCatalogError` naming the
file and the field by its path (``syringes[3].inner_diameter_mm: must be a positive number
(got -1)``). Volumes are kept in µL inside the program (``nominal_volume_ul``), as everywhere
in the rig; the file speaks the maker's language (mL).

The inner diameter is what turns plunger travel into volume (π·d²/4 µL per mm), so a wrong
figure is a dosing error: calibrate gravimetrically before trusting a new syringe type.

:func:`default_hardware_dir` locates the ``hardware/`` folder (installed share, else source
tree); :mod:`pump_rig.core.pump_profile` uses it too.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pump_rig.core.strict_yaml import (
    DEFAULT_SOURCE,
    FieldError,
    StrictDocParser,
    kind_of,
    show_value,
)

__all__ = [
    "CATALOG_VERSION",
    "MAX_CATALOG_TEXT_CHARS",
    "HardwareDocParser",
    "Syringe",
    "SyringeCatalog",
    "SyringeCatalogError",
    "default_hardware_dir",
    "default_syringe_catalog_path",
    "load_syringe_catalog",
    "parse_syringe_catalog",
    "read_hardware_text",
]

CATALOG_VERSION: Final = 1
MAX_CATALOG_TEXT_CHARS: Final = 256 * 1024
MAX_SOURCE_CHARS: Final = 400
MAX_NAME_CHARS: Final = 80
MAX_NOTE_CHARS: Final = 1000
UL_PER_ML: Final = 1000.0

_ID_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")
_TOP_FIELDS: Final = ("version", "note", "syringes")
_SYRINGE_FIELDS: Final = (
    "id",
    "maker",
    "model",
    "nominal_volume_ml",
    "inner_diameter_mm",
    "source",
    "note",
)
_REQUIRED_SYRINGE_FIELDS: Final = tuple(f for f in _SYRINGE_FIELDS if f != "note")


class SyringeCatalogError(FieldError):
    """The syringe catalog (or a lookup in it) was rejected.

    ``field`` is the path of the culprit (``syringes[3].inner_diameter_mm``; "" = the whole
    text), ``source`` the file.
    """


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_line(value: object, max_chars: int) -> bool:
    return (
        isinstance(value, str)
        and bool(value.strip())
        and len(value) <= max_chars
        and "\n" not in value
    )


# --- value types ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Syringe:
    """One catalog entry. ``note`` is "" when the file gives none."""

    id: str
    maker: str
    model: str
    nominal_volume_ul: float
    inner_diameter_mm: float
    source: str
    note: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.id, str) and _ID_RE.match(self.id)):
            raise SyringeCatalogError("id", f"not a snake_case id (got {show_value(self.id)})")
        for name in ("maker", "model"):
            if not _is_line(getattr(self, name), MAX_NAME_CHARS):
                raise SyringeCatalogError(f"{self.id}.{name}", "must be one non-empty line")
        if not _is_line(self.source, MAX_SOURCE_CHARS):
            raise SyringeCatalogError(f"{self.id}.source", "must be one non-empty line")
        if not isinstance(self.note, str):
            raise SyringeCatalogError(f"{self.id}.note", "must be text")
        for name in ("nominal_volume_ul", "inner_diameter_mm"):
            value = getattr(self, name)
            if not (_is_number(value) and value > 0):
                raise SyringeCatalogError(
                    f"{self.id}.{name}", f"must be a positive number (got {show_value(value)})"
                )

    @property
    def area_mm2(self) -> float:
        """Bore cross-section, mm²: also µL per mm of plunger travel (1 mm³ = 1 µL)."""
        return math.pi * self.inner_diameter_mm**2 / 4.0

    @property
    def stroke_mm(self) -> float:
        """Plunger travel of the nominal volume, mm."""
        return self.nominal_volume_ul / self.area_mm2

    def describe(self) -> str:
        """``"BD Plastipak 30 mL (21.59 mm)"``."""
        return f"{self.maker} {self.model} ({self.inner_diameter_mm:g} mm)"


@dataclass(frozen=True)
class SyringeCatalog:
    """The validated catalog, in file order, and the file it came from."""

    syringes: tuple[Syringe, ...]
    source: str = DEFAULT_SOURCE

    def __post_init__(self) -> None:
        entries = tuple(self.syringes)
        object.__setattr__(self, "syringes", entries)
        if not entries:
            raise SyringeCatalogError(
                "syringes", "must list at least one syringe", source=self.source
            )
        seen: set[str] = set()
        for index, entry in enumerate(entries):
            if not isinstance(entry, Syringe):
                raise SyringeCatalogError(
                    f"syringes[{index}]", "must be a Syringe", source=self.source
                )
            if entry.id in seen:
                raise SyringeCatalogError(
                    f"syringes[{index}].id", f"duplicate id {entry.id!r}", source=self.source
                )
            seen.add(entry.id)

    def ids(self) -> tuple[str, ...]:
        """The ids, in file order."""
        return tuple(s.id for s in self.syringes)

    def get(self, syringe_id: str) -> Syringe:
        """The syringe with this id (surrounding blanks and case ignored).

        An unknown id raises :class:`SyringeCatalogError` (a ValueError) on field
        ``"syringe"``, naming the id, suggesting close matches and listing the known ids.
        """
        key = syringe_id.strip().lower() if isinstance(syringe_id, str) else syringe_id
        for entry in self.syringes:
            if entry.id == key:
                return entry
        hint = ""
        if isinstance(key, str):
            close = difflib.get_close_matches(key, self.ids(), n=3, cutoff=0.5)
            if close:
                hint = f"did you mean {', '.join(repr(c) for c in close)}? "
        raise SyringeCatalogError(
            "syringe",
            f"unknown syringe id {show_value(key)} ({hint}known: {', '.join(self.ids())})",
            source=self.source,
        )

    def __iter__(self) -> Iterator[Syringe]:
        return iter(self.syringes)

    def __len__(self) -> int:
        return len(self.syringes)

    def __contains__(self, syringe_id: object) -> bool:
        return any(s.id == syringe_id for s in self.syringes)


# --- locating and reading files ---------------------------------------------------------------


def default_hardware_dir() -> Path:
    """``hardware/`` of the installed package (``share/pump_rig/hardware``) when it exists,
    else the source tree's ``hardware/`` (as :func:`default_drug_library_path` does for the
    drug library)."""
    source_tree = Path(__file__).resolve().parents[4] / "hardware"
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("pump_rig")) / "hardware"
    except Exception:
        return source_tree
    if installed.is_dir() or not source_tree.is_dir():
        return installed
    return source_tree


def default_syringe_catalog_path() -> Path:
    """``syringes.yaml`` in :func:`default_hardware_dir`."""
    return default_hardware_dir() / "syringes.yaml"


def read_hardware_text(path: Path, error: type[FieldError]) -> str:
    """The UTF-8 text of a hardware file; every failure is an ``error`` naming the file."""
    source = str(path)
    try:
        if not path.exists():
            raise error("", "file not found", source=source)
        if not path.is_file():
            raise error("", "not a regular file", source=source)
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error("", f"not UTF-8 text ({exc.reason})", source=source) from exc
    except OSError as exc:
        raise error("", f"cannot read: {exc.strerror or exc}", source=source) from exc


def parse_syringe_catalog(text: str, *, source: str = DEFAULT_SOURCE) -> SyringeCatalog:
    """Parse and validate catalog text; raise :class:`SyringeCatalogError` on anything wrong."""
    return _Parser(source).parse(text)


def load_syringe_catalog(path: Path | None = None) -> SyringeCatalog:
    """Read and parse a catalog file (default: :func:`default_syringe_catalog_path`)."""
    path = default_syringe_catalog_path() if path is None else Path(path)
    return parse_syringe_catalog(read_hardware_text(path, SyringeCatalogError), source=str(path))


# --- parsing ----------------------------------------------------------------------------------


class HardwareDocParser(StrictDocParser):
    """Value checks shared by the parsers of the ``hardware/`` documents."""

    def _require(self, fields: Mapping[str, object], path: str, names: Sequence[str]) -> None:
        for name in names:
            if name not in fields:
                raise self._error(_join(path, name), "required field missing")

    def _number(self, value: object, field: str, wanted: str) -> float:
        # bool is an int subclass in Python; "true" is never a diameter.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._error(field, f"must be {wanted} (got {kind_of(value)} {show_value(value)})")
        try:
            number = float(value)
        except OverflowError:
            raise self._error(field, f"must be {wanted} (got {show_value(value)})") from None
        if not math.isfinite(number):
            raise self._error(field, f"must be {wanted} (got {show_value(number)})")
        return number

    def _positive(self, value: object, field: str) -> float:
        number = self._number(value, field, "a positive number")
        if number <= 0:
            raise self._error(field, f"must be a positive number (got {show_value(number)})")
        return number

    def _integer(self, value: object, field: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self._error(
                field,
                f"must be an integer in {low}..{high} (got {kind_of(value)} {show_value(value)})",
            )
        return value

    def _token(self, value: object, field: str, pattern: re.Pattern[str], what: str) -> str:
        if not isinstance(value, str) or not pattern.match(value):
            raise self._error(field, f"must be {what} (got {kind_of(value)} {show_value(value)})")
        return value

    def _optional_text(self, value: object, field: str, max_chars: int) -> str:
        if not isinstance(value, str):
            raise self._error(field, f"must be text (got {kind_of(value)})")
        text = " ".join(value.split())
        if len(text) > max_chars:
            raise self._error(field, f"too long ({len(text)} chars, max {max_chars})")
        return text

    def _version(self, value: object, supported: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._error(
                "version", f"must be an integer (got {kind_of(value)} {show_value(value)})"
            )
        if value != supported:
            raise self._error(
                "version",
                f"unsupported version {show_value(value)} (this loader reads {supported})",
            )


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class _Parser(HardwareDocParser):
    noun = "syringe catalog"
    max_chars = MAX_CATALOG_TEXT_CHARS

    def _error(self, field: str, message: str) -> SyringeCatalogError:
        return SyringeCatalogError(field, message, source=self._source)

    def parse(self, text: str) -> SyringeCatalog:
        top = self._mapping(self._load_document(text), "", _TOP_FIELDS)
        if "version" in top:
            self._version(top["version"], CATALOG_VERSION)
        if "note" in top:
            self._optional_text(top["note"], "note", MAX_NOTE_CHARS)
        self._require(top, "", ("syringes",))
        raw = top["syringes"]
        if not isinstance(raw, list):
            raise self._error("syringes", f"must be a list of syringes (got {kind_of(raw)})")
        if not raw:
            raise self._error("syringes", "must list at least one syringe")
        entries: list[Syringe] = []
        first_at: dict[str, int] = {}
        for index, item in enumerate(raw):
            entry = self._syringe(item, f"syringes[{index}]")
            if entry.id in first_at:
                raise self._error(
                    f"syringes[{index}].id",
                    f"duplicate id {entry.id!r} (first at syringes[{first_at[entry.id]}])",
                )
            first_at[entry.id] = index
            entries.append(entry)
        return SyringeCatalog(syringes=tuple(entries), source=self._source)

    def _syringe(self, item: object, path: str) -> Syringe:
        fields = self._mapping(item, path, _SYRINGE_FIELDS)
        self._require(fields, path, _REQUIRED_SYRINGE_FIELDS)
        syringe_id = self._token(
            fields["id"],
            f"{path}.id",
            _ID_RE,
            "a snake_case id: a lower-case letter, then lower-case letters, digits or '_'",
        )
        maker = self._line_of_text(fields["maker"], f"{path}.maker", MAX_NAME_CHARS)
        model = self._line_of_text(fields["model"], f"{path}.model", MAX_NAME_CHARS)
        volume_ml = self._positive(fields["nominal_volume_ml"], f"{path}.nominal_volume_ml")
        diameter = self._positive(fields["inner_diameter_mm"], f"{path}.inner_diameter_mm")
        source = self._line_of_text(fields["source"], f"{path}.source", MAX_SOURCE_CHARS)
        note = ""
        if "note" in fields:
            note = self._optional_text(fields["note"], f"{path}.note", MAX_NOTE_CHARS)
        return Syringe(
            id=syringe_id,
            maker=maker,
            model=model,
            nominal_volume_ul=volume_ml * UL_PER_ML,
            inner_diameter_mm=diameter,
            source=source,
            note=note,
        )
