"""The rig on mock hardware, one process per node.

    ros2 launch pump_rig mock.launch.py
    ros2 launch pump_rig mock.launch.py namespace:=rig2 speed:=600 record:=true

Arguments: namespace (rig), speed (1.0; above 1 the mock publishes /clock and every other node
uses sim time), record (false), program (the bundled constant-rate baclofen program), config
(share/pump_rig/config/mock.yaml), port_link (/tmp/pump_rig/<namespace>/pump).
"""

from __future__ import annotations

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchContext, LaunchDescription

SHARE = Path(get_package_share_directory("pump_rig"))


def _nodes(context: LaunchContext) -> list[Node]:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    namespace = arg("namespace").strip("/")
    speed = float(arg("speed"))
    sim = speed != 1.0
    port_link = arg("port_link") or f"/tmp/pump_rig/{namespace or 'root'}/pump"
    config = arg("config")
    common = {"use_sim_time": sim}

    def node(executable: str, *overrides: dict[str, object], **kwargs: object) -> Node:
        return Node(
            package="pump_rig",
            executable=executable,
            namespace=namespace,
            parameters=[config, *overrides],
            output="screen",
            emulate_tty=True,
            **kwargs,
        )

    return [
        # The mock is the time source: it never uses sim time itself.
        node("mock_hardware", {"speed": speed, "port_link": port_link}),
        node("motor_driver", common, {"port": port_link}),
        node("pressure_monitor", common),
        node("dosing_controller", common, {"program_file": arg("program")}),
        node(
            "telemetry_recorder",
            common,
            condition=IfCondition(LaunchConfiguration("record")),
        ),
    ]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument("namespace", default_value="rig", description="Rig namespace"),
            DeclareLaunchArgument(
                "speed", default_value="1.0", description="Simulated seconds per wall second"
            ),
            DeclareLaunchArgument(
                "record", default_value="false", description="Record the rig topics to a bag"
            ),
            DeclareLaunchArgument(
                "program",
                default_value=str(SHARE / "config" / "programs" / "baclofen_constant.yaml"),
                description="Therapy program loaded at start ('' = none)",
            ),
            DeclareLaunchArgument(
                "config",
                default_value=str(SHARE / "config" / "mock.yaml"),
                description="ROS parameter file for all nodes",
            ),
            DeclareLaunchArgument(
                "port_link",
                default_value="",
                description="Path of the mock pump's serial device ('' = /tmp/pump_rig/<ns>/pump)",
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
