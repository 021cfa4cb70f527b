"""One rig, one set of files: per-rig paths keyed by domain and namespace, and locks that
refuse a second rig on the same journal or port link, naming the first."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pump_rig.core.dose_journal import DoseJournal, sidecars
from pump_rig.core.rig_files import (
    LockHeldError,
    OwnerLock,
    default_journal_path,
    default_port_link,
    legacy_journal_path,
    ros_domain_id,
    runtime_dir,
)
from pump_rig.core.stepper_emulator import StepperEmulator
from pump_rig.drivers.pty_device import PtySerialDevice
from tests.core.pump_fixtures import make_pump

T0 = 1_700_000_000.0


def test_every_per_rig_path_is_keyed_by_domain_and_namespace(tmp_path: Path) -> None:
    env = {"ROS_HOME": str(tmp_path / "ros"), "XDG_RUNTIME_DIR": str(tmp_path)}
    journals = {
        default_journal_path(ns, domain, env) for ns in ("/rig", "/rig2") for domain in (0, 7)
    }
    links = {default_port_link(ns, domain, env) for ns in ("/rig", "/rig2") for domain in (0, 7)}
    assert len(journals) == 4 and len(links) == 4
    assert default_journal_path("/rig", 7, env) == (
        tmp_path / "ros" / "pump_rig" / "domain7" / "rig" / "dose_journal.jsonl"
    )
    # The old, domain-blind place is known (a controller refuses to start past it).
    assert legacy_journal_path("/rig", env) not in journals


def test_links_live_in_a_directory_only_this_user_can_write(tmp_path: Path) -> None:
    directory = runtime_dir({"XDG_RUNTIME_DIR": str(tmp_path)})
    assert directory == tmp_path / "pump_rig"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    # Without a runtime directory: a per-user one under the temporary directory.
    fallback = runtime_dir({})
    assert fallback.name == f"pump_rig-{os.getuid()}"


def test_ros_domain_id_is_read_as_ros_does_with_one_line_for_nonsense() -> None:
    assert ros_domain_id({}) == 0
    assert ros_domain_id({"ROS_DOMAIN_ID": "42"}) == 42
    for bad in ("forty", "300"):
        with pytest.raises(ValueError, match="ROS_DOMAIN_ID"):
            ros_domain_id({"ROS_DOMAIN_ID": bad})


def test_a_second_holder_is_refused_with_the_first_ones_name(tmp_path: Path) -> None:
    target = tmp_path / "thing"
    first = OwnerLock.acquire(target, "the thing", {"namespace": "/rig", "domain": 3})
    with pytest.raises(LockHeldError) as refused:
        OwnerLock.acquire(target, "the thing")
    text = str(refused.value)
    assert text.startswith("the thing is in use by pid ")
    assert str(os.getpid()) in text and "rig /rig in ROS domain 3" in text
    assert OwnerLock.holder(target) is not None
    first.release()
    assert OwnerLock.holder(target) is None
    OwnerLock.acquire(target, "the thing").release()


def test_a_holder_killed_with_sigkill_leaves_no_stale_lock(tmp_path: Path) -> None:
    target = tmp_path / "thing"
    code = (
        "import sys, time; from pathlib import Path;"
        "from pump_rig.core.rig_files import OwnerLock;"
        f"lock = OwnerLock.acquire(Path({str(target)!r}), 'the thing');"
        "print('held', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        holder = OwnerLock.holder(target)
        assert holder is not None and holder["pid"] == child.pid
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        child.kill()
    OwnerLock.acquire(target, "the thing").release()  # the kernel let it go


def test_a_second_controller_on_a_journal_is_refused_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "dose.journal"
    journal, _ = DoseJournal.open(path, t_s=T0, owner={"namespace": "/rig", "domain": 0})
    journal.append({"k": "note", "t": T0}, t_s=T0)
    before = path.read_bytes()
    with pytest.raises(LockHeldError, match=r"dose journal .* is in use by pid \d+"):
        DoseJournal.open(path, t_s=T0 + 1)
    with pytest.raises(LockHeldError):
        DoseJournal.open(path, t_s=T0 + 1, new_ledger=True)  # nor archived under it
    assert path.read_bytes() == before
    journal.close()
    again, records = DoseJournal.open(path, t_s=T0 + 2)
    assert [r["k"] for r in records] == ["note"]
    again.close()


def test_a_new_ledger_keeps_the_old_journal_as_a_dated_copy(tmp_path: Path) -> None:
    path = tmp_path / "dose.journal"
    journal, _ = DoseJournal.open(path, t_s=T0)
    journal.append({"k": "note", "t": T0}, t_s=T0)
    journal.close()
    old = {p.name: p.read_bytes() for p in sidecars(path)}
    fresh, records = DoseJournal.open(path, t_s=T0 + 1, new_ledger=True)
    assert records == []
    kept = fresh.archived_as
    assert kept is not None and kept.parent == path.parent
    for name, data in old.items():
        assert (path.parent / (name + kept.name.removeprefix(path.name))).read_bytes() == data
    fresh.close()
    # A second new ledger in the same second does not overwrite the first copy.
    again, _ = DoseJournal.open(path, t_s=T0 + 2, new_ledger=True)
    assert again.archived_as is not None and again.archived_as != kept and kept.exists()
    again.close()


def _emulator() -> StepperEmulator:
    return StepperEmulator(make_pump(), pressure_source=lambda t_s: 1.5, seed=3)


def test_a_second_emulator_cannot_take_a_running_rigs_port_link(tmp_path: Path) -> None:
    link = tmp_path / "pump"
    first = PtySerialDevice(_emulator(), time.monotonic, link_path=link)
    target = link.readlink()
    with pytest.raises(ValueError, match=r"port link .* is in use by pid"):
        PtySerialDevice(_emulator(), time.monotonic, link_path=link)
    assert link.readlink() == target  # still the first rig's pty
    first.close()
    assert not link.exists()


def test_closing_leaves_a_link_that_points_elsewhere(tmp_path: Path) -> None:
    link = tmp_path / "pump"
    device = PtySerialDevice(_emulator(), time.monotonic, link_path=link)
    link.unlink()
    link.symlink_to("/dev/null")  # made by something else meanwhile
    device.close()
    assert link.readlink() == Path("/dev/null")
