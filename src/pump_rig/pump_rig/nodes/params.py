"""Parameter declaration with descriptors, and validation when parameters are set at run time.

Every node declares its parameters through ``ParamSet`` so that ``ros2 param describe`` shows a
description and range, and a bad ``ros2 param set`` is refused with a reason instead of being
half-applied.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

Validator = Callable[[Any], str | None]

# Parameters ROS itself reads from a params file for any node (QoS overrides).
_ROS_OWNED_PREFIXES = ("qos_overrides.",)


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    min_value: float | None = None
    max_value: float | None = None
    read_only: bool = False
    validator: Validator | None = None


def positive(value: Any) -> str | None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        return f"must be a finite number > 0 (got {value!r})"
    return None


class ParamSet:
    """Declares parameters on a node and refuses invalid updates with a reason."""

    def __init__(self, node: Node, specs: Sequence[ParamSpec]) -> None:
        self._node = node
        self._specs = {spec.name: spec for spec in specs}
        for spec in specs:
            node.declare_parameter(spec.name, spec.default, self._descriptor(spec))
        problems = [
            f"{name}: {problem}"
            for name in self._specs
            if (problem := self._check(name, node.get_parameter(name).value)) is not None
        ]
        if problems:
            raise ValueError(f"{node.get_name()}: invalid parameters: " + "; ".join(problems))
        self._refuse_unknown(node)
        node.add_on_set_parameters_callback(self._validate)

    def _refuse_unknown(self, node: Node) -> None:
        """A value given for a parameter this node does not have (a misspelt
        ``max_rate_ul_per_hr``) would leave the real one at its default, a safety limit
        included: refuse to start, naming the closest known name. rclpy keeps the values from
        params files and ``-p`` in ``Node._parameter_overrides`` (there is no public accessor)."""
        given: dict[str, Any] = getattr(node, "_parameter_overrides", {}) or {}
        unknown = sorted(
            name
            for name in given
            if not node.has_parameter(name) and not name.startswith(_ROS_OWNED_PREFIXES)
        )
        if not unknown:
            return
        known = sorted(self._specs)
        described = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            described.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"{node.get_name()}: unknown parameter {', '.join(described)}")

    def get(self, name: str) -> Any:
        return self._node.get_parameter(name).value

    def _descriptor(self, spec: ParamSpec) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
        if spec.min_value is not None and spec.max_value is not None:
            if isinstance(spec.default, float):
                descriptor.floating_point_range = [
                    FloatingPointRange(
                        from_value=float(spec.min_value), to_value=float(spec.max_value)
                    )
                ]
            elif isinstance(spec.default, int) and not isinstance(spec.default, bool):
                descriptor.integer_range = [
                    IntegerRange(
                        from_value=int(spec.min_value), to_value=int(spec.max_value), step=1
                    )
                ]
        return descriptor

    def _check(self, name: str, value: Any) -> str | None:
        spec = self._specs.get(name)
        if spec is None:
            return None
        if (
            isinstance(spec.default, float)
            and isinstance(value, int)
            and not isinstance(value, bool)
        ):
            value = float(value)
        if type(value) is not type(spec.default):
            return f"expected {type(spec.default).__name__}, got {type(value).__name__}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be finite (got {value})"
        if spec.min_value is not None and isinstance(value, int | float) and value < spec.min_value:
            return f"must be >= {spec.min_value:g} (got {value})"
        if spec.max_value is not None and isinstance(value, int | float) and value > spec.max_value:
            return f"must be <= {spec.max_value:g} (got {value})"
        if spec.validator is not None:
            return spec.validator(value)
        return None

    def _validate(self, params: list[Parameter[Any]]) -> SetParametersResult:
        for param in params:
            problem = self._check(param.name, param.value)
            if problem is not None:
                return SetParametersResult(successful=False, reason=f"{param.name}: {problem}")
        return SetParametersResult(successful=True)
