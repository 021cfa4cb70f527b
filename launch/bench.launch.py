"""The rig on a real pump, one process per node (no mock hardware, real time).

    ros2 launch pump_rig bench.launch.py pump:=ne1000 port:=/dev/pump_rig/ne1000-0
    ros2 launch pump_rig bench.launch.py pump:=stepper port:=/dev/pump_rig/stepper-0 \\
        syringe:=hamilton_gastight_1000_10ml record:=true

Arguments:

* pump (ne1000): which bench, by its parameter file config/bench_<pump>.yaml: ne1000 (a New
  Era NE-1000 family pump on RS-232) or stepper (the open stepper pump).
* port (required): the pump's serial device; prefer a stable udev name
  (hardware/udev/99-pump-rig.rules) to /dev/ttyUSB<n>, which changes on replug.
* syringe ('' = the parameter file's): syringe id from hardware/syringes.yaml.
* address ('' = the parameter file's): network address of a New Era pump, 0-99.
* safe_mode ('' = the parameter file's): true/false, New Era Safe mode.
* namespace (rig), program (none), record (false), bag_dir (runs): as in mock.launch.py.
* config ('' = share/pump_rig/config/bench_<pump>.yaml): another parameter file.
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
PUMPS = ("ne1000", "stepper")


def _driver_overrides(context: LaunchContext, port: str) -> dict[str, object]:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    overrides: dict[str, object] = {"port": port}
    if arg("syringe"):
        overrides["syringe"] = arg("syringe")
    if arg("address"):
        try:
            address = int(arg("address"))
        except ValueError:
            address = -1
        if not 0 <= address <= 99:
            raise ValueError(f"address must be a whole number 0-99, not {arg('address')!r}")
        overrides["address"] = address
    if arg("safe_mode"):
        if arg("safe_mode").lower() not in ("true", "false"):
            raise ValueError(f"safe_mode must be true or false, not {arg('safe_mode')!r}")
        overrides["safe_mode"] = arg("safe_mode").lower() == "true"
    return overrides


def _nodes(context: LaunchContext) -> list[Node]:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    pump = arg("pump")
    if pump not in PUMPS:
        raise ValueError(f"pump must be one of {', '.join(PUMPS)}, not {pump!r}")
    port = arg("port")
    if not port:
        raise ValueError("port is required: the pump's serial device, e.g. port:=/dev/ttyUSB0")
    namespace = arg("namespace").strip("/")
    config = arg("config") or str(SHARE / "config" / f"bench_{pump}.yaml")
    bag_dir = str(Path(arg("bag_dir") or "runs").expanduser().absolute())

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
        node("motor_driver", _driver_overrides(context, port)),
        node("pressure_monitor"),
        node("dosing_controller", {"program_file": arg("program")}),
        node(
            "telemetry_recorder",
            {"output_dir": bag_dir},
            condition=IfCondition(LaunchConfiguration("record")),
        ),
    ]


def generate_launch_description() -> LaunchDescription:
    def declare(name: str, default: str, description: str) -> DeclareLaunchArgument:
        return DeclareLaunchArgument(name, default_value=default, description=description)

    return LaunchDescription(
        [
            declare("pump", "ne1000", "Bench pump family: " + ", ".join(PUMPS)),
            declare("port", "", "Serial device of the pump (required)"),
            declare("syringe", "", "Syringe id from hardware/syringes.yaml ('' = config's)"),
            declare("address", "", "New Era network address 0-99 ('' = config's)"),
            declare("safe_mode", "", "New Era Safe mode true/false ('' = config's)"),
            declare("namespace", "rig", "Rig namespace"),
            declare("program", "", "Therapy program loaded at start ('' = none)"),
            declare("record", "false", "Record the rig topics to a bag"),
            declare("bag_dir", "runs", "Directory bags are created in"),
            declare("config", "", "ROS parameter file ('' = config/bench_<pump>.yaml)"),
            OpaqueFunction(function=_nodes),
        ]
    )
