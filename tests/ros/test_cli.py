"""`pumprig` as a user runs it: one-line errors on bad input, and commands against a live rig."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pump_rig.core.dose_journal import DoseJournal
from pump_rig.core.program import default_drug_library, load_program_file
from pump_rig.core.therapy_engine import TherapyEngine
from tests.ros.conftest import PROGRAM, REPO, unique_namespace

pytestmark = pytest.mark.ros

FLEX_PROGRAM = REPO / "config" / "programs" / "baclofen_flex.yaml"


def pumprig(*args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("pumprig")
    if exe is None:
        raise pytest.UsageError("pumprig not on PATH: run the tests through `make test`")
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=timeout_s, env=os.environ.copy()
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) >= 1
    return lines[-1]


def test_bad_program_file_is_refused_before_any_ros_traffic(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(PROGRAM.read_text().replace("drug: baclofen", "drug: unobtainium"))
    line = one_line_error(pumprig("-n", unique_namespace(), "program", "set", str(bad)))
    assert "drug" in line and "unobtainium" in line


def test_missing_program_file_names_the_path(tmp_path: Path) -> None:
    line = one_line_error(pumprig("program", "set", str(tmp_path / "nope.yaml")))
    assert "nope.yaml" in line


def test_unknown_fault_kind_lists_the_known_ones() -> None:
    line = one_line_error(pumprig("-n", unique_namespace(), "fault", "inject", "gremlins"))
    assert "gremlins" in line and "occlusion" in line


def test_report_of_a_missing_bag(tmp_path: Path) -> None:
    line = one_line_error(pumprig("report", str(tmp_path / "missing_bag")))
    assert "does not exist" in line


def test_status_without_a_rig_says_so_quickly() -> None:
    started = time.monotonic()
    line = one_line_error(pumprig("-n", unique_namespace(), "--wait", "2", "status"))
    assert "no dose status" in line
    assert time.monotonic() - started < 20.0  # gives up after --wait, not the 30 s test timeout


def test_up_with_a_negative_speed_is_a_usage_error() -> None:
    result = pumprig("up", "--speed", "-5")
    assert result.returncode == 2
    assert "must be a finite number > 0" in result.stderr


@contextmanager
def running_rig(
    program: Path, cwd: Path, *extra: str, output: list[str] | None = None
) -> Iterator[str]:
    """`pumprig up` at x60 in its own process; yields its namespace, then stops it cleanly
    (its terminal output is appended to ``output``)."""
    namespace = unique_namespace()
    exe = shutil.which("pumprig")
    assert exe is not None
    proc = subprocess.Popen(
        [exe, "-n", namespace, "up", "--speed", "60", "--program", str(program), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
        cwd=cwd,
    )
    try:
        yield namespace
    finally:
        proc.send_signal(signal.SIGINT)
        printed = proc.communicate(timeout=20)[0]
    if output is not None:
        output.append(printed)
    assert proc.returncode == 0, printed
    assert "pumprig up: stopped" in printed


@pytest.fixture
def live_rig(tmp_path: Path) -> Iterator[str]:
    with running_rig(PROGRAM, tmp_path) as namespace:
        yield namespace


def wait_for_status(ns: str, text: str, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    status = pumprig("-n", ns, "status")
    while text not in status.stdout and time.monotonic() < deadline:
        status = pumprig("-n", ns, "status")
    assert text in status.stdout, status.stdout + status.stderr
    return status.stdout


def test_boluses_and_refills_against_a_running_rig(tmp_path: Path) -> None:
    with running_rig(FLEX_PROGRAM, tmp_path) as ns:
        wait_for_status(ns, "therapy        RUNNING")
        granted = pumprig("-n", ns, "bolus", "--request-id", "press-1")
        assert granted.returncode == 0, granted.stderr
        assert "granted: 25 µg (50 µL) over 10 min" in granted.stdout
        # A retry of the same press is the same answer, not a second bolus.
        again = pumprig("-n", ns, "bolus", "--request-id", "press-1")
        assert again.returncode == 0 and "granted" in again.stdout, again.stderr
        denied = pumprig("-n", ns, "bolus", "--request-id", "press-2")
        assert denied.returncode == 1
        assert "lockout: 180 min after the last bolus" in denied.stderr
        assert "next allowed in" in denied.stderr
        # Changing drug needs therapy suspended and a new program: refused, nothing changed.
        refused = pumprig("-n", ns, "refill", "5000", "--drug", "morphine", "--concentration", "10")
        assert refused.returncode == 1 and "morphine" in refused.stderr, refused.stderr
        refilled = pumprig(
            "-n", ns, "refill", "15000", "--drug", "baclofen", "--concentration", "500"
        )
        assert refilled.returncode == 0, refilled.stderr
        assert "discarded" in refilled.stdout and "next refill" in refilled.stdout
        status = wait_for_status(ns, "reservoir")
        assert "baclofen-flex" in status
        assert "next refill" in status


def test_commands_against_a_running_rig(live_rig: str, tmp_path: Path) -> None:
    ns = live_rig
    assert "baclofen-constant" in wait_for_status(ns, "therapy        RUNNING")

    suspended = pumprig("-n", ns, "suspend")
    assert suspended.returncode == 0 and "suspended" in suspended.stdout
    assert "therapy        SUSPENDED" in pumprig("-n", ns, "status").stdout

    faster = tmp_path / "faster.yaml"
    faster.write_text(PROGRAM.read_text().replace("daily_dose_ug: 240.0", "daily_dose_ug: 480.0"))
    refused = pumprig("-n", ns, "program", "set", str(faster))
    assert refused.returncode != 0 and "titration limit" in refused.stderr, refused.stderr
    applied = pumprig(
        "-n", ns, "program", "set", str(faster), "--override-titration", "bench rig test"
    )
    assert applied.returncode == 0, applied.stderr
    assert "titration limit overridden (bench rig test)" in applied.stdout
    assert "40 µL/h" in applied.stdout
    assert "basal rate     40.000 µL/h" in pumprig("-n", ns, "program", "show").stdout

    assert pumprig("-n", ns, "resume").returncode == 0
    injected = pumprig("-n", ns, "fault", "inject", "leak")
    assert injected.returncode == 0 and "injected leak" in injected.stdout
    assert pumprig("-n", ns, "fault", "clear").returncode == 0


def test_a_rolled_back_journal_doses_only_after_an_operator_accepts_the_loss(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "dose_journal.jsonl"
    # A ledger with a granted bolus, written by the engine itself; then its last records are
    # lost whole (a restored copy): the records left are intact and numbered.
    engine = TherapyEngine.open(
        t_s=time.time(),
        library=default_drug_library(),
        journal_path=journal,
        initial_program=load_program_file(FLEX_PROGRAM),
    )
    engine.on_device_volume(time.time(), 0.0)
    assert engine.request_bolus(time.time()).granted
    engine.close()
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:-2]))

    printed: list[str] = []
    with running_rig(
        FLEX_PROGRAM, tmp_path, "--journal", str(journal), "--resume", output=printed
    ) as ns:
        status = wait_for_status(ns, "JOURNAL_FAULT")
        assert "therapy        ALARM" in status
        denied = pumprig("-n", ns, "bolus")
        assert denied.returncode != 0 and "journal" in denied.stderr, denied.stderr
        no_reason = pumprig("-n", ns, "journal", "accept-rollback", "--reason", " ")
        assert "reason" in one_line_error(no_reason)
        accepted = pumprig(
            "-n", ns, "journal", "accept-rollback", "--reason", "restored from backup"
        )
        assert accepted.returncode == 0, accepted.stderr
        assert "rolled back (2 records lost" in accepted.stdout
        wait_for_status(ns, "therapy        SUSPENDED")
        assert pumprig("-n", ns, "resume").returncode == 0
        wait_for_status(ns, "therapy        RUNNING")
        held = pumprig("-n", ns, "bolus")
        assert held.returncode != 0 and "journal lost records" in held.stderr, held.stderr
    assert "restored from backup" in journal.read_text(encoding="utf-8")
    # The operator at the terminal saw the controller's critical alarm raised and cleared,
    # once each.
    log = printed[0]
    assert log.count("CRITICAL JOURNAL_FAULT raised: dose journal") == 1, log
    assert log.count("CRITICAL JOURNAL_FAULT cleared") == 1, log


def _small_journal(path: Path) -> None:
    engine = TherapyEngine.open(
        t_s=time.time(),
        library=default_drug_library(),
        journal_path=path,
        initial_program=load_program_file(FLEX_PROGRAM),
    )
    engine.on_device_volume(time.time(), 0.0)
    engine.command(time.time())
    engine.on_device_volume(time.time() + 3600.0, 24.0)  # 24 µL of baclofen 500 µg/mL
    engine.close()


def test_journal_show_verify_and_reset_work_on_disk_and_never_delete(tmp_path: Path) -> None:
    journal = tmp_path / "dose_journal.jsonl"
    _small_journal(journal)
    shown = pumprig("journal", "show", "--file", str(journal))
    assert shown.returncode == 0, shown.stderr
    assert "program        baclofen-flex (baclofen 500 µg/mL)" in shown.stdout
    assert "24.000 µL, 12.000 µg in all" in shown.stdout
    assert "held           not in use" in shown.stdout
    verified = pumprig("journal", "verify", "--file", str(journal))
    assert verified.returncode == 0 and "intact (3 records" in verified.stdout
    # While a controller holds it, reset is refused naming the holder; show still reads it.
    holder = DoseJournal.open(journal, t_s=time.time(), owner={"namespace": "/rig", "domain": 0})
    try:
        refused = one_line_error(pumprig("journal", "reset", "--file", str(journal)))
        assert f"is in use by pid {os.getpid()}" in refused and "stop that rig" in refused
        assert (
            f"in use by pid {os.getpid()}"
            in pumprig("journal", "show", "--file", str(journal)).stdout
        )
    finally:
        holder[0].close()
    before = journal.read_bytes()
    reset = pumprig("journal", "reset", "--file", str(journal))
    assert reset.returncode == 0, reset.stderr
    kept = Path(reset.stdout.split("kept as ", 1)[1].split(" ", 1)[0])
    assert kept.read_bytes() == before and not journal.exists()
    gone = one_line_error(pumprig("journal", "verify", "--file", str(journal)))
    assert gone == f"pumprig journal: error: dose journal {journal}: no such journal"


def test_journal_verify_names_the_damage_in_one_line(tmp_path: Path) -> None:
    journal = tmp_path / "dose_journal.jsonl"
    _small_journal(journal)
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:-1]))  # the last whole record lost
    line = one_line_error(pumprig("journal", "verify", "--file", str(journal)))
    assert "rolled back: it ends at record 2 but record 3 was written" in line
    damaged = journal.read_bytes().replace(b'"k":"baseline"', b'"k":"basEline"')
    journal.write_bytes(damaged)
    assert "checksum mismatch" in one_line_error(pumprig("journal", "show", "--file", str(journal)))


def test_a_ledger_moved_to_another_rigs_pump_counts_nothing_until_the_swap_is_confirmed(
    tmp_path: Path,
) -> None:
    """Rig A's ledger, resumed by a controller whose port answers with rig B's emulated pump
    (each emulator now has its own serial number): nothing of B's counter is booked and
    nothing is dosed (critical DEVICE_CHANGED) until an operator confirms the swap with a
    reason; then therapy waits for resume and doses on the new pump."""
    journal = tmp_path / "dose_journal.jsonl"
    with running_rig(PROGRAM, tmp_path, "--journal", str(journal)) as ns:
        wait_for_status(ns, "therapy        RUNNING")
    with running_rig(PROGRAM, tmp_path, "--journal", str(journal), "--resume") as ns:
        status = wait_for_status(ns, "therapy        ALARM")
        assert "DEVICE_CHANGED" in status, status
        assert pumprig("-n", ns, "bolus").returncode != 0  # denied: therapy in ALARM
        no_reason = pumprig("-n", ns, "journal", "confirm-device", "--reason", " ")
        assert "reason" in one_line_error(no_reason)
        confirmed = pumprig("-n", ns, "journal", "confirm-device", "--reason", "pump B now")
        assert confirmed.returncode == 0, confirmed.stderr
        assert "device changed from" in confirmed.stdout and "pump B now" in confirmed.stdout
        wait_for_status(ns, "therapy        SUSPENDED")
        assert pumprig("-n", ns, "resume").returncode == 0
        wait_for_status(ns, "therapy        RUNNING")
    assert "pump B now" in journal.read_text(encoding="utf-8")


def test_a_demo_faster_than_it_can_follow_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    """`pumprig demo --speed 1000000` used to exit 0 having delivered nothing and never
    injected its fault. It is refused in one line naming the fastest speed that works."""
    result = pumprig("demo", "--speed", "1000000", "--runs", str(tmp_path / "runs"))
    line = one_line_error(result)
    assert line.startswith("pumprig demo: error: --speed 1e+06: at most x43200 for a fault 12 h")
    assert not (tmp_path / "runs").exists()


def test_alarms_names_what_holds_therapy_even_once_its_source_has_cleared_it(
    tmp_path: Path,
) -> None:
    """A motor stall latches therapy in ALARM; the driver's MOTOR_STALL ends with the next
    command, after which `pumprig alarms` used to print "none active". It says what holds
    therapy and how to release it; `--clear` says whether an estop was released."""
    with running_rig(PROGRAM, tmp_path) as ns:
        wait_for_status(ns, "therapy        RUNNING")
        assert pumprig("-n", ns, "fault", "inject", "motor_stall").returncode == 0
        wait_for_status(ns, "therapy        ALARM")
        assert pumprig("-n", ns, "fault", "clear").returncode == 0
        shown = pumprig("-n", ns, "alarms")
        assert shown.returncode == 0, shown.stderr
        assert "therapy held   alarm: MOTOR_STALL" in shown.stdout, shown.stdout
        assert "pumprig alarms --clear, then pumprig resume" in shown.stdout
        cleared = pumprig("-n", ns, "alarms", "--clear")
        assert cleared.returncode == 0, cleared.stderr
        assert "no estop was engaged" in cleared.stdout and "estop released" not in cleared.stdout
        assert "therapy held" not in pumprig("-n", ns, "alarms").stdout


def test_status_shows_the_dose_rate_leaving_the_tip_during_a_bridge(tmp_path: Path) -> None:
    """Refilled at double strength with a bridge, the pump keeps 20 µL/h while the old
    500 µg/mL fluid leaves the tip: 240 µg/day, as prescribed. `status` used to multiply by
    the reservoir's strength and show 480 µg/day."""
    with running_rig(PROGRAM, tmp_path) as ns:
        wait_for_status(ns, "therapy        RUNNING")
        bridged = pumprig(
            "-n", ns, "refill", "15000", "--drug", "baclofen", "--concentration", "1000", "--bridge"
        )
        assert bridged.returncode == 0, bridged.stderr
        status = wait_for_status(ns, "(catheter tip: 500 µg/mL)")
        assert "basal rate     20.000 µL/h now (240.000 µg/day at the tip)" in status, status
