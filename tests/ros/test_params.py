"""Parameters are declared with descriptors and refused, with a reason, when invalid."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import rclpy
from rclpy.context import Context
from rclpy.node import Node
from rclpy.parameter import Parameter

from pump_rig.nodes.params import ParamSet, ParamSpec, positive

pytestmark = pytest.mark.ros


@pytest.fixture
def node() -> Iterator[Node]:
    context = Context()
    rclpy.init(context=context)
    n = Node("params_under_test", context=context)
    yield n
    n.destroy_node()
    rclpy.try_shutdown(context=context)


def test_descriptor_carries_description_and_range(node: Node) -> None:
    ParamSet(node, [ParamSpec("rate_ul_per_h", 10.0, "How fast", 0.0, 100.0)])
    descriptor = node.describe_parameter("rate_ul_per_h")
    assert descriptor.description == "How fast"
    assert descriptor.floating_point_range[0].to_value == 100.0


def test_invalid_updates_are_refused_and_the_value_kept(node: Node) -> None:
    params = ParamSet(
        node,
        [
            ParamSpec("rate_ul_per_h", 10.0, "How fast", 0.0, 100.0),
            ParamSpec("timeout_s", 5.0, "Watchdog", validator=positive),
            ParamSpec("port", "/dev/x", "Port", read_only=True),
        ],
    )
    too_big = node.set_parameters([Parameter("rate_ul_per_h", Parameter.Type.DOUBLE, 150.0)])[0]
    assert not too_big.successful and "100" in too_big.reason
    zero = node.set_parameters([Parameter("timeout_s", Parameter.Type.DOUBLE, 0.0)])[0]
    assert not zero.successful and "timeout_s" in zero.reason
    wrong_type = node.set_parameters([Parameter("timeout_s", Parameter.Type.STRING, "soon")])[0]
    assert not wrong_type.successful
    read_only = node.set_parameters([Parameter("port", Parameter.Type.STRING, "/dev/y")])[0]
    assert not read_only.successful
    assert params.get("rate_ul_per_h") == 10.0 and params.get("timeout_s") == 5.0
    ok = node.set_parameters([Parameter("rate_ul_per_h", Parameter.Type.DOUBLE, 50.0)])[0]
    assert ok.successful and params.get("rate_ul_per_h") == 50.0


def test_invalid_values_at_start_fail_loudly() -> None:
    context = Context()
    rclpy.init(context=context)
    try:
        n = Node(
            "bad_start",
            context=context,
            parameter_overrides=[Parameter("timeout_s", Parameter.Type.DOUBLE, -1.0)],
        )
        with pytest.raises(ValueError, match="timeout_s"):
            ParamSet(n, [ParamSpec("timeout_s", 5.0, "Watchdog", validator=positive)])
        n.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_a_misspelt_parameter_is_refused_with_the_closest_name_and_nothing_starts(
    tmp_path: Path,
) -> None:
    """`max_rate_ul_per_hr` in a params file used to be ignored, leaving the safety limit at
    its default. The node refuses to start, in one line naming the closest known name; ROS's
    own parameters (use_sim_time, QoS overrides) stay accepted."""
    params = tmp_path / "rig.yaml"
    params.write_text(
        "/**/motor_driver:\n"
        "  ros__parameters:\n"
        "    use_sim_time: false\n"
        "    qos_overrides./rig/pump/state.publisher.depth: 10\n"
        "    max_rate_ul_per_hr: 50.0\n"
    )
    context = Context()
    rclpy.init(context=context, args=["--ros-args", "--params-file", str(params)])
    try:
        n = Node("motor_driver", namespace="/rig", context=context)
        with pytest.raises(ValueError) as refused:
            ParamSet(n, [ParamSpec("max_rate_ul_per_h", 1000.0, "Highest rate", 0.0, 1e5)])
        assert str(refused.value) == (
            "motor_driver: unknown parameter 'max_rate_ul_per_hr' "
            "(did you mean 'max_rate_ul_per_h'?)"
        )
        n.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
