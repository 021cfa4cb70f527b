"""The rig as separate processes (one per executable), checked from outside over DDS."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from pump_rig_interfaces.msg import DoseStatus, PumpState

from pump_rig.core.bag_report import read_report
from tests.ros.conftest import PROGRAM, REPO, Probe, last

pytestmark = pytest.mark.ros

EXECUTABLES = [
    "mock_hardware",
    "motor_driver",
    "pressure_monitor",
    "dosing_controller",
    "telemetry_recorder",
]
SPEED = 60.0
RECORDED = ("pump/command", "pump/state", "pressure", "occlusion", "dose")


def _executable(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise pytest.UsageError(f"{name} not on PATH: run the tests through `make test`")
    return path


@pytest.fixture
def rig_processes(
    tmp_path: Path, namespace: str
) -> Iterator[tuple[list[subprocess.Popen[bytes]], Path]]:
    port = tmp_path / "pump"
    bag = tmp_path / "bag"
    config = REPO / "config" / "mock.yaml"
    per_node = {
        "mock_hardware": [f"speed:={SPEED}", f"port_link:={port}"],
        "motor_driver": [f"port:={port}", "use_sim_time:=true"],
        "pressure_monitor": ["use_sim_time:=true"],
        "dosing_controller": [f"program_file:={PROGRAM}", "use_sim_time:=true"],
        "telemetry_recorder": [f"bag_path:={bag}", "use_sim_time:=true"],
    }
    procs = []
    for name in EXECUTABLES:
        args = [_executable(name), "--ros-args", "-r", f"__ns:={namespace}"]
        args += ["--params-file", str(config)]
        for param in per_node[name]:
            args += ["-p", param]
        # Logs go to files: an unread pipe fills up and blocks the process writing to it.
        with (tmp_path / f"{name}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
            )
    yield procs, bag
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def exited_cleanly(name: str, proc: subprocess.Popen[bytes], bag: Path) -> None:
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{name} still running 20 s after the signal:\n{logs(bag)}") from None
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{logs(bag)}"


def recorder_counts(diagnostics: list[DiagnosticArray]) -> dict[str, int]:
    """Messages per topic in the recorder's open bag, from its latest diagnostics."""
    for array in reversed(diagnostics):
        for status in array.status:
            if status.name.endswith(": recording"):
                return {
                    kv.key.removeprefix("messages "): int(kv.value)
                    for kv in status.values
                    if kv.key.startswith("messages ")
                }
    return {}


def logs(bag: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(bag.parent.glob("*.log")))


def test_separate_processes_run_therapy_and_record_every_topic(
    rig_processes: tuple[list[subprocess.Popen[bytes]], Path], probe: Probe
) -> None:
    procs, bag = rig_processes
    states = probe.watch("pump/state")
    dose = probe.watch("dose")
    pressure = probe.watch("pressure")
    diagnostics: list[DiagnosticArray] = []
    probe.node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 100)
    try:
        probe.wait_for(
            lambda: (s := last(states)) is not None and s.state == PumpState.RUNNING,
            timeout_s=30.0,
            what="pump RUNNING across processes",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs(bag)}") from None
    d = probe.wait_for(
        lambda: (d := last(dose)) is not None and d.therapy_state == DoseStatus.RUNNING and d,
        what="dose RUNNING",
    )
    assert d.program == "baclofen-constant"
    # Simulated time flows across processes: device volume grows at ~20 µL/h of sim time.
    first = last(states)
    probe.wait_for(
        lambda: last(states).delivered_volume_ul > first.delivered_volume_ul + 0.5,
        what="delivered volume growing",
    )
    probe.wait_for(lambda: len(pressure) >= 5, what="pressure samples")
    # The recorder is started last and subscribes as it discovers each topic: stopping the
    # rig before it has written a message of every topic would test the race, not the rig.
    # Its diagnostics say how many messages of each topic the open bag holds.
    wanted = [f"{probe.namespace}/{topic}" for topic in RECORDED]
    probe.wait_for(
        lambda: all(recorder_counts(diagnostics).get(topic, 0) > 0 for topic in wanted),
        what=f"the recorder writing {RECORDED}",
    )
    for proc in procs:
        assert proc.poll() is None, logs(bag)

    # SIGINT, as Ctrl-C or `ros2 launch` sends, to the rig; then SIGTERM (docker stop,
    # systemd) to the recorder, last, so it has heard everything the others published.
    # Every node exits cleanly and the bag is closed whole.
    by_name = dict(zip(EXECUTABLES, procs, strict=True))
    recorder = by_name.pop("telemetry_recorder")
    for proc in by_name.values():
        proc.send_signal(signal.SIGINT)
    for name, proc in by_name.items():
        exited_cleanly(name, proc, bag)
    recorder.send_signal(signal.SIGTERM)
    exited_cleanly("telemetry_recorder", recorder, bag)

    report = read_report(bag)
    recorded = {topic.removeprefix(probe.namespace + "/") for topic in report.topic_counts}
    for topic in RECORDED:
        assert topic in recorded, f"{topic} missing from {sorted(recorded)}"
    # The recording ends after the probe saw 0.5 µL more than its first state.
    assert report.device_delivered_last_ul >= first.delivered_volume_ul + 0.5


@pytest.mark.parametrize(
    ("executable", "param", "expected"),
    [
        ("dosing_controller", "program_file:=/no/such/program.yaml", "program.yaml"),
        ("motor_driver", "max_rate_ul_per_h:=-5.0", "max_rate_ul_per_h"),
        ("pressure_monitor", "detector.occlusion_threshold_kpa:=-3.0", "occlusion_threshold_kpa"),
        ("mock_hardware", "bench.compliance_ul_per_kpa:=0.0", "compliance_ul_per_kpa"),
    ],
)
def test_bad_configuration_is_refused_in_one_line(
    executable: str, param: str, expected: str, namespace: str
) -> None:
    result = subprocess.run(
        [_executable(executable), "--ros-args", "-r", f"__ns:={namespace}", "-p", param],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_a_crashed_controller_restarts_from_its_journal_and_loses_no_delivery(
    tmp_path: Path, namespace: str, probe: Probe
) -> None:
    """The controller process is killed (no clean shutdown) while the pump runs, and started
    again on the same journal: the dose ledger carries on from the device's counter, so what
    was delivered while nobody was listening is counted, and nothing is counted twice."""
    port = tmp_path / "pump"
    journal = tmp_path / "dose_journal.jsonl"
    config = REPO / "config" / "mock.yaml"

    def start(name: str, *params: str, log: str = "") -> subprocess.Popen[bytes]:
        args = [_executable(name), "--ros-args", "-r", f"__ns:={namespace}"]
        args += ["--params-file", str(config)]
        for param in params:
            args += ["-p", param]
        with (tmp_path / f"{log or name}.log").open("wb") as out:
            return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    controller_params = (
        f"program_file:={PROGRAM}",
        f"journal_path:={journal}",
        "journal_bucket_s:=60.0",
        "use_sim_time:=true",
    )
    procs = [
        start("mock_hardware", f"speed:={SPEED}", f"port_link:={port}"),
        start("motor_driver", f"port:={port}", "use_sim_time:=true"),
    ]
    try:
        controller = start("dosing_controller", *controller_params)
        procs.append(controller)
        states, dose = probe.watch("pump/state"), probe.watch("dose")
        probe.wait_for(
            lambda: (d := last(dose)) is not None and d.delivered_volume_ul > 1.0,
            timeout_s=40.0,
            what="the first controller accounting delivery",
        )
        before = last(dose)
        controller.kill()  # a crash: no close record, the open bucket is lost with it
        controller.wait()
        # The pump goes on until the driver's command timeout stops it; the device counts it.
        stopped = probe.wait_for(
            lambda: (s := last(states)) is not None and s.state == PumpState.IDLE and s,
            timeout_s=20.0,
            what="the driver stopping the pump without commands",
        )
        device_ul = stopped.delivered_volume_ul
        assert device_ul > before.delivered_volume_ul  # some of it nobody accounted yet
        dose.clear()
        procs.append(start("dosing_controller", *controller_params, log="controller2"))
        after = probe.wait_for(
            lambda: (
                (d := last(dose)) is not None and d.delivered_volume_ul >= device_ul - 1e-6 and d
            ),
            timeout_s=30.0,
            what="the restarted controller accounting what the device delivered",
        )
        # All of the device's delivery since the first baseline, once: the ledger follows the
        # device counter (within what the device delivered since it was read).
        latest_ul = last(states).delivered_volume_ul
        assert device_ul - 1e-6 <= after.delivered_volume_ul <= latest_ul + 1e-6
        assert after.delivered_dose_total_ug >= before.delivered_dose_total_ug
        assert after.program == "baclofen-constant"
        # The driver stopped the pump on COMMAND_STALE while no controller was there, a
        # critical alarm the new controller hears (transient local): it holds therapy in
        # ALARM until someone clears and resumes, and the pump stays stopped.
        held = probe.wait_for(
            lambda: (d := last(dose)) is not None and d.therapy_state == DoseStatus.ALARM and d,
            what="the restarted controller holding on the driver's COMMAND_STALE",
        )
        assert "COMMAND_STALE" in held.detail
        assert last(states).state == PumpState.IDLE
        kinds = [
            line.split(b'"k":"', 1)[1].split(b'"', 1)[0]
            for line in journal.read_bytes().splitlines()
        ]
        assert kinds.count(b"journal") == 1  # the same journal, appended to
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
