"""No node class may reuse a name rclpy's Node keeps for itself.

The recorder once stored its subscriptions in ``self._subscriptions``, rclpy's own list: every
subscription was registered twice and the executor spun on a full core.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import rclpy
from rclpy.context import Context
from rclpy.lifecycle import LifecycleNode
from rclpy.node import Node

pytestmark = pytest.mark.ros

NODES = Path(__file__).resolve().parents[2] / "src" / "pump_rig" / "pump_rig" / "nodes"
OVERRIDES = {
    "on_configure",
    "on_activate",
    "on_deactivate",
    "on_cleanup",
    "on_shutdown",
    "__init__",
}


@pytest.fixture(scope="module")
def reserved() -> Iterator[set[str]]:
    context = Context()
    rclpy.init(context=context)
    plain = Node("reserved_names", context=context)
    managed = LifecycleNode("reserved_names_lc", context=context)
    yield set(dir(plain)) | set(vars(plain)) | set(dir(managed)) | set(vars(managed))
    plain.destroy_node()
    managed.destroy_node()
    rclpy.try_shutdown(context=context)


@pytest.mark.parametrize("module", sorted(NODES.glob("*.py")), ids=lambda p: p.name)
def test_node_attributes_do_not_shadow_rclpy(module: Path, reserved: set[str]) -> None:
    text = module.read_text()
    mine = set(re.findall(r"self\.(\w+)\s*[:=]", text)) | set(re.findall(r"def (\w+)\(self", text))
    clashes = sorted((mine & reserved) - OVERRIDES)
    assert not clashes, f"{module.name} reuses rclpy Node names: {clashes}"
