"""ament_python build of pump_rig. Launch files, config and the hardware catalog live at the
repository top level (``launch/``, ``config/``, ``hardware/``, symlinked here) and install into
share/pump_rig."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "pump_rig"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "tests"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", [*glob("config/*.yaml"), "config/fastdds.xml"]),
        (f"share/{PACKAGE}/config/programs", glob("config/programs/*.yaml")),
        (f"share/{PACKAGE}/hardware", [*glob("hardware/*.yaml"), *glob("hardware/*.md")]),
        (f"share/{PACKAGE}/hardware/pumps", glob("hardware/pumps/*.yaml")),
        (f"share/{PACKAGE}/hardware/udev", glob("hardware/udev/*.rules")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="pump_rig maintainers",
    maintainer_email="pump-rig@example.org",
    description="ROS 2 control stack for an intrathecal drug pump bench rig",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "dosing_controller = pump_rig.nodes.dosing_controller:main",
            "motor_driver = pump_rig.nodes.motor_driver:main",
            "pressure_monitor = pump_rig.nodes.pressure_monitor:main",
            "telemetry_recorder = pump_rig.nodes.telemetry_recorder:main",
            "mock_hardware = pump_rig.nodes.mock_hardware:main",
            "pumprig = pump_rig.cli.main:main",
        ],
    },
)
