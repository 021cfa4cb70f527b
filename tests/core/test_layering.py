"""The functional core stays free of ROS: it must import and run without rclpy."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "pump_rig" / "pump_rig"
PURE = sorted((PACKAGE / "core").glob("*.py")) + sorted((PACKAGE / "drivers").glob("*.py"))
ROS_MODULES = ("rclpy", "pump_rig_interfaces", "std_msgs", "sensor_msgs", "pump_rig.nodes")


@pytest.mark.parametrize("module", PURE, ids=lambda p: p.name)
def test_core_and_drivers_import_no_ros(module: Path) -> None:
    tree = ast.parse(module.read_text())
    imported = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ] + [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    offending = [name for name in imported if name.startswith(ROS_MODULES)]
    assert not offending, f"{module.name} imports {offending}"
