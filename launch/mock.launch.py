"""The rig on mock hardware, one process per node.

    ros2 launch pump_rig mock.launch.py
    ros2 launch pump_rig mock.launch.py namespace:=rig2 speed:=600 record:=true
    ros2 launch pump_rig mock.launch.py record:=true bag_dir:=/data/pump_rig/bags

Arguments:

* namespace (rig): namespace of every node and rig topic ('' = the root namespace).
* speed (1.0): simulated seconds per wall second, a positive number; other than 1 the mock
  publishes /clock and every other node uses sim time.
* record (false): also start telemetry_recorder, which writes the rig topics to a rosbag2 bag
  (MCAP) named rig_<date>_<time> inside bag_dir, and closes it cleanly on Ctrl-C.
* bag_dir (runs): directory the recorder creates its bags in. A relative path is taken from the
  directory `ros2 launch` runs in and handed to the recorder as an absolute path.
* program (the bundled constant-rate baclofen program; '' = start without one).
* config (share/pump_rig/config/mock.yaml): ROS parameter file for all nodes.
* port_link ('' = <runtime dir>/domain<ROS domain>/<namespace>/pump): path of the mock pump's
  serial device (runtime dir: $XDG_RUNTIME_DIR/pump_rig or /tmp/pump_rig-<uid>).
* resume (false): go on with the dose ledger the journal holds; by default a mock run starts a
  new ledger and keeps the old journal as a dated copy.
"""

from __future__ import annotations

import math
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchContext, LaunchDescription
from pump_rig.core.rig_files import default_port_link, ros_domain_id

SHARE = Path(get_package_share_directory("pump_rig"))


def _speed(text: str) -> float:
    try:
        speed = float(text)
    except ValueError:
        speed = math.nan
    if not (math.isfinite(speed) and speed > 0.0):
        raise ValueError(f"speed must be a positive number of simulated s per wall s, not {text!r}")
    return speed


def _nodes(context: LaunchContext) -> list[Node]:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    namespace = arg("namespace").strip("/")
    speed = _speed(arg("speed"))
    sim = not math.isclose(speed, 1.0)  # the same test mock_hardware uses to publish /clock
    port_link = arg("port_link") or str(default_port_link("/" + namespace, ros_domain_id()))
    ledger = "resume" if arg("resume").lower() in ("true", "1", "yes") else "new"
    bag_dir = str(Path(arg("bag_dir") or "runs").expanduser().absolute())
    config = arg("config")
    common = {"use_sim_time": sim}

    # Each rig's simulated time is its own: /clock lives in the rig's namespace (the mock
    # publishes it there, the other nodes listen there), so a second accelerated rig in the
    # same ROS domain cannot drive this one's clock.
    clock = [("/clock", f"/{namespace}/clock")] if namespace else []

    def node(executable: str, *overrides: dict[str, object], **kwargs: object) -> Node:
        return Node(
            package="pump_rig",
            executable=executable,
            namespace=namespace,
            remappings=clock,
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
        node(
            "dosing_controller",
            common,
            {"program_file": arg("program"), "journal_on_start": ledger},
        ),
        node(
            "telemetry_recorder",
            common,
            {"output_dir": bag_dir},
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
                "bag_dir",
                default_value="runs",
                description="Directory bags are created in (relative = to the launch's cwd)",
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
                description="Path of the mock pump's serial device ('' = <runtime dir>/"
                "domain<ROS domain>/<ns>/pump)",
            ),
            DeclareLaunchArgument(
                "resume",
                default_value="false",
                description="Go on with the dose ledger the journal holds (default: a new one; "
                "the old journal is kept as a dated copy)",
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
