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

import re
from collections.abc import Hashable
from typing import Any, Final

import yaml

__all__ = ["DuplicateKeyError", "StrictLoader", "YamlNestingError", "load_strict_yaml"]

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
