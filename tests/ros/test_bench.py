"""A bench as a lab sets it up: `pumprig emulate` stands in for the pump on a serial port, and
`pumprig up --config config/bench_<backend>.yaml --port <link>` runs therapy on it, each in
its own process, with no mock hardware in the rig."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pump_rig_interfaces.msg import Alarm, DoseStatus, PumpState

from pump_rig.drivers.backends import BACKENDS
from tests.ros.conftest import REPO, Probe, last

pytestmark = pytest.mark.ros

# 800 µL/h (baclofen at its lowest strength, 960 µg/day): visible delivery within seconds.
PROGRAM = """\
name: bench-check
drug: baclofen
concentration_ug_per_ml: 50.0
mode: continuous
daily_dose_ug: 960.0
reservoir:
  capacity_ul: 20000.0
  volume_ul: 18000.0
  low_alarm_ul: 2000.0
"""
RATE_UL_PER_H = 800.0


def pumprig() -> str:
    exe = shutil.which("pumprig")
    if exe is None:
        raise pytest.UsageError("pumprig not on PATH: run the tests through `make test`")
    return exe


@contextmanager
def process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Runs ``args``, output to ``log``; at the end SIGINT, and it must exit 0."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"{args[1:3]} exited {proc.returncode}:\n{log.read_text()}"


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_pumprig_up_runs_therapy_on_an_emulated_bench_pump(
    tmp_path: Path, namespace: str, probe: Probe, backend: str
) -> None:
    link = tmp_path / "vpump"
    program = tmp_path / "program.yaml"
    program.write_text(PROGRAM)
    config = REPO / "config" / f"bench_{backend}.yaml"
    emulate = [pumprig(), "emulate", backend, "--link", str(link), "--diameter", "21.59"]
    with process(emulate, tmp_path / "emulate.log"):
        probe.wait_for(link.exists, what=f"{link} made by pumprig emulate")
        up = [pumprig(), "-n", namespace, "up", "--config", str(config), "--port", str(link)]
        up += ["--program", str(program), "--journal", str(tmp_path / "journal.jsonl")]
        with process(up, tmp_path / "up.log"):
            states, doses = probe.watch("pump/state"), probe.watch("dose")
            running = probe.wait_for(
                lambda: (s := last(states)) is not None and s.state == PumpState.RUNNING and s,
                timeout_s=30.0,
                what="the emulated pump RUNNING",
            )
            assert running.flow_rate_ul_per_h == pytest.approx(RATE_UL_PER_H, rel=5e-4)
            assert f"({backend})" in running.device
            # A few seconds of therapy, accounted from what the device counts.
            dose = probe.wait_for(
                lambda: (d := last(doses)) is not None and d.delivered_volume_ul >= 1.0 and d,
                timeout_s=30.0,
                what="1 µL delivered",
            )
            assert dose.therapy_state == DoseStatus.RUNNING
            assert dose.program == "bench-check"
            device_ul = last(states).delivered_volume_ul
            assert dose.delivered_volume_ul <= device_ul + last(states).volume_resolution_ul
            critical = [
                a for a in probe.watch("alarms") if a.active and a.severity == Alarm.CRITICAL
            ]
            assert not critical, [f"{a.code}: {a.message}" for a in critical]
    assert not link.exists(), "pumprig emulate leaves its link behind"


def test_emulate_refuses_an_unknown_backend_by_name(tmp_path: Path) -> None:
    result = subprocess.run(
        [pumprig(), "emulate", "ne9999", "--link", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "ne9999" in result.stderr and "stepper" in result.stderr
