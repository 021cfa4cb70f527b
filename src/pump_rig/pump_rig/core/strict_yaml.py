"""The YAML dialect of the rig's hand-written files (programs, drug library).

PyYAML's ``SafeLoader`` with two changes:

* a key given twice in one mapping is an error (:class:`DuplicateKeyError`); PyYAML would
  silently keep the last value, so a file edited in a hurry could mean something else than
  it reads;
* ``1e3`` and ``2.4e2`` are numbers. PyYAML follows YAML 1.1, which wants ``2.4e+2`` and
  reads the short forms as text; people writing doses mean numbers, and YAML 1.2 agrees.

Merge keys (``<<: *anchor``) work as in YAML 1.1: keys written next to the merge win.

:func:`load_strict_yaml` raises only :class:`yaml.YAMLError` (including for input nested too
deeply for the parser), so a caller needs one ``except`` to turn any bad text into its own
error type.
"""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
from collections.abc import Hashable, Mapping
from typing import Any, ClassVar, Final

import yaml

__all__ = [
    "DEFAULT_SOURCE",
    "DuplicateKeyError",
    "FieldError",
    "StrictDocParser",
    "StrictLoader",
    "YamlNestingError",
    "key_text",
    "kind_of",
    "load_strict_yaml",
    "show_value",
]

# The source name of text that came from no file; left out of messages.
DEFAULT_SOURCE: Final = "<text>"

_EXP_FLOAT_RE: Final = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_EXP_FLOAT_FIRST: Final = list("-+.0123456789")
_YAML_TAG_PREFIX: Final = "tag:yaml.org,2002:"
_MERGE_TAG: Final = _YAML_TAG_PREFIX + "merge"


class DuplicateKeyError(yaml.YAMLError):
    """A mapping gives the same key twice. ``line`` is 1-based."""

    def __init__(self, key: object, line: int) -> None:
        super().__init__(f"duplicate field {key!r} (line {line})")
        self.key = key
        self.line = line


class YamlNestingError(yaml.YAMLError):
    """The text nests collections deeper than the parser can follow."""

    def __init__(self) -> None:
        super().__init__("YAML nested too deeply")


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads ``1e3`` as a float."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # SafeLoader's flatten_mapping resolves merges itself
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise DuplicateKeyError(key, key_node.start_mark.line + 1)
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # PyYAML's constructors raise plain ValueError/KeyError on values such as
        # "2001-13-45", "!!int x" or an integer of 5000 digits; report them as YAML errors at
        # the value's position.
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:
            tag = str(node.tag).replace(_YAML_TAG_PREFIX, "!!")
            raise yaml.constructor.ConstructorError(
                None, None, f"invalid {tag} value ({exc})", node.start_mark
            ) from exc


StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT_RE, _EXP_FLOAT_FIRST)


def load_strict_yaml(text: str) -> object:
    """Parse one YAML document with :class:`StrictLoader`; any failure is a ``yaml.YAMLError``."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # a SafeLoader subclass
    except RecursionError:
        raise YamlNestingError() from None
    except yaml.YAMLError:
        raise
    except Exception as exc:  # a constructor failing outside construct_object: still bad text
        raise yaml.YAMLError(f"cannot read the YAML ({type(exc).__name__}: {exc})") from exc


class FieldError(ValueError):
    """A hand-written file was rejected. ``field`` is the dotted path of the culprit ("" = the
    whole text), ``source`` the file. ``str(e)`` reads ``"config/x.yaml: a.b: must be > 0
    (got -5)"``; the source is left out when it is :data:`DEFAULT_SOURCE`, the field when empty.
    """

    def __init__(self, field: str, message: str, *, source: str = DEFAULT_SOURCE) -> None:
        self.field = field
        self.message = message
        self.source = source
        super().__init__(self._text())

    def _text(self) -> str:
        parts = []
        if self.source != DEFAULT_SOURCE:
            parts.append(self.source)
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)

    def __str__(self) -> str:
        return self._text()


def kind_of(value: object) -> str:
    """What a YAML value is, in words, for messages."""
    if value is None:
        return "nothing"
    names = {bool: "bool", int: "integer", float: "number", str: "text", list: "list"}
    return names.get(type(value), type(value).__name__)


def show_value(value: object) -> str:
    """Render a value for a message: -5.0 as "-5", text quoted, long things cut short."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value)) if abs(value) < 1e16 else repr(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        try:
            digits = str(value)
        except ValueError:  # beyond Python's int-to-text limit
            return f"<integer of {value.bit_length()} bits>"
        return digits if len(digits) <= 40 else f"{digits[:20]}...({len(digits)} digits)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_PLAIN_KEY_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,60}\Z")


def key_text(key: object) -> str:
    """A mapping key as it appears in a field path: plain names as they are, others quoted."""
    if isinstance(key, str) and _PLAIN_KEY_RE.match(key):
        return key
    return show_value(key)


class StrictDocParser:
    """What the parsers of the rig's hand-written documents share: one parse carries the
    source name so every error names it; text is read with :func:`load_strict_yaml`, and
    mappings have a fixed set of fields."""

    noun: ClassVar[str]  # what the document is, for messages ("program")
    max_chars: ClassVar[int]

    def __init__(self, source: str) -> None:
        self._source = source

    def _error(self, field: str, message: str) -> FieldError:
        return FieldError(field, message, source=self._source)

    def _load_document(self, text: object) -> object:
        """The parsed text; a FieldError for anything but non-empty, parseable YAML text."""
        if not isinstance(text, str):
            raise self._error("", f"{self.noun} must be text (got {kind_of(text)})")
        if len(text) > self.max_chars:
            raise self._error(
                "", f"{self.noun} text too long ({len(text)} chars, max {self.max_chars})"
            )
        try:
            doc = load_strict_yaml(text)
        except DuplicateKeyError as exc:
            raise self._error(key_text(exc.key), f"duplicate field (line {exc.line})") from exc
        except yaml.MarkedYAMLError as exc:
            where = ""
            if exc.problem_mark is not None:
                mark = exc.problem_mark
                where = f" at line {mark.line + 1}, column {mark.column + 1}"
            problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
            raise self._error("", f"YAML syntax error{where}: {problem}") from exc
        except yaml.YAMLError as exc:
            raise self._error("", f"YAML error: {' '.join(str(exc).split())}") from exc
        if doc is None:
            raise self._error("", f"{self.noun} is empty")
        return doc

    def _mapping(self, value: object, path: str, known: tuple[str, ...]) -> dict[str, object]:
        """``value`` as a mapping of fields, each one of ``known`` ("" path: the document)."""
        if not isinstance(value, Mapping):
            what = "must be" if path else f"{self.noun} must be"
            raise self._error(path, f"{what} a mapping of fields (got {kind_of(value)})")
        out: dict[str, object] = {}
        for key, item in value.items():
            field = f"{path}.{key_text(key)}" if path else key_text(key)
            if not isinstance(key, str):
                raise self._error(field, f"field names must be text (got {kind_of(key)})")
            if key not in known:
                raise self._error(field, self._unknown_field(key, known))
            out[key] = item
        return out

    def _unknown_field(self, key: str, known: tuple[str, ...]) -> str:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
        return f"unknown field ({hint})"

    def _line_of_text(self, value: object, field: str, max_chars: int) -> str:
        """``value`` stripped, as one non-empty printable line of at most ``max_chars`` (names
        and sources go into messages, logs and bag metadata)."""
        if not isinstance(value, str):
            raise self._error(field, f"must be text (got {kind_of(value)} {show_value(value)})")
        text = value.strip()
        if not text:
            raise self._error(field, "must not be empty")
        if len(text) > max_chars:
            raise self._error(field, f"too long ({len(text)} chars, max {max_chars})")
        if any(unicodedata.category(ch)[0] in "CZ" and ch != " " for ch in text):
            raise self._error(field, f"must be one line of printable text (got {text!r})")
        return text
