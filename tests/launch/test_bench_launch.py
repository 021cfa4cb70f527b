"""launch_pytest test of launch/bench.launch.py: the rig on a (virtual) bench pump.

`pumprig emulate stepper` stands in for the pump on a pseudo-terminal; the installed
``share/pump_rig/launch/bench.launch.py`` starts motor_driver, pressure_monitor and
dosing_controller on it with ``config/bench_stepper.yaml`` (firmware pressure channel on).
Skipped where launch_pytest cannot be imported (see tests/launch/test_mock_launch.py).
"""

from __future__ import annotations

import pytest

launch_pytest = pytest.importorskip(
    "launch_pytest",
    reason=(
        "launch_pytest is not installed (it is not on PyPI, so the venv cannot have it): run "
        "tests/launch on a ROS 2 install - see tests/launch/test_mock_launch.py"
    ),
)

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from ament_index_python.packages import get_package_share_directory  # noqa: E402
from launch.actions import ExecuteProcess, IncludeLaunchDescription  # noqa: E402
from launch.launch_description import LaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from pump_rig_interfaces.msg import PumpState  # noqa: E402

from tests.ros.conftest import Probe, unique_namespace  # noqa: E402

SHARE = Path(get_package_share_directory("pump_rig"))
NAMESPACE = unique_namespace()


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench_launch") / "vpump"


@launch_pytest.fixture(scope="module")  # type: ignore[untyped-decorator]
def bench_launch(link: Path) -> LaunchDescription:
    pumprig = shutil.which("pumprig")
    assert pumprig is not None
    return LaunchDescription(
        [
            ExecuteProcess(cmd=[pumprig, "emulate", "stepper", "--link", str(link)]),
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(str(SHARE / "launch" / "bench.launch.py")),
                launch_arguments={
                    "pump": "stepper",
                    "port": str(link),
                    "namespace": NAMESPACE,
                    "syringe": "bd_plastipak_30ml",
                    "program": str(SHARE / "config" / "programs" / "baclofen_constant.yaml"),
                }.items(),
            ),
            launch_pytest.actions.ReadyToTest(),
        ]
    )


@pytest.fixture(scope="module")
def probe() -> Any:
    p = Probe(NAMESPACE)
    yield p
    p.close()


@pytest.mark.launch(fixture=bench_launch)
def test_the_bench_pump_runs_the_program_and_feeds_pressure(probe: Probe) -> None:
    states, pressure = probe.watch("pump/state"), probe.watch("pressure")
    running = probe.wait_for(
        lambda: next((s for s in reversed(states) if s.state == PumpState.RUNNING), None),
        45.0,
        "the bench pump RUNNING",
    )
    assert running.flow_rate_ul_per_h == pytest.approx(20.0, rel=1e-6)
    assert "(stepper)" in running.device
    probe.wait_for(lambda: len(pressure) >= 3, 30.0, "pressure from the pump firmware")
    assert {p.header.frame_id for p in pressure} == {"pump_firmware_pressure_sensor"}
