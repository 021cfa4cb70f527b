"""Dose journal: an append-only, checksummed, numbered record file that refuses to be trusted
when damaged; and the therapy engine, which stops all dosing on a journal it cannot trust."""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pump_rig.core.dose_journal import (
    JOURNAL_VERSION,
    DoseJournal,
    JournalError,
    JournalMissingError,
    JournalRollbackError,
)
from pump_rig.core.program import TherapyProgram, default_drug_library, parse_program
from pump_rig.core.pump_types import PumpAction
from pump_rig.core.therapy_engine import (
    JOURNAL_FAULT,
    AlarmSeverity,
    TherapyEngine,
    TherapyError,
    TherapyState,
)

T0 = 1000.0
LIB = default_drug_library()
PROGRAM: TherapyProgram = parse_program(
    """\
name: baclofen-bolus
drug: baclofen
concentration_ug_per_ml: 500.0
mode: continuous
daily_dose_ug: 240.0
patient_bolus: {dose_ug: 20.0, duration_min: 10.0, lockout_min: 60.0, max_per_24h: 4}
reservoir: {capacity_ul: 20000.0, volume_ul: 18000.0, low_alarm_ul: 2000.0}
"""
)
RECORDS: list[dict[str, Any]] = [
    {"k": "alpha", "v": 1.5},
    {"k": "beta", "v": 2, "nested": {"list": [1, 2.25, None], "text": "µg"}},
    {"k": "gamma", "v": 3},
]


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".id")


def encode(record: dict[str, Any]) -> bytes:
    """The format, written independently: compact sorted JSON, a tab, CRC-32 in 8 hex digits."""
    text = json.dumps(record, separators=(",", ":"), sort_keys=True)
    return f"{text}\t{zlib.crc32(text.encode()):08x}\n".encode()


def write_journal(path: Path) -> str:
    """A healthy journal of RECORDS; returns its id."""
    journal, records = DoseJournal.open(path, t_s=T0)
    assert records == []
    for record in RECORDS:
        journal.append(record)
    journal.close()
    return journal.journal_id


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


# --- round trip -----------------------------------------------------------------------------


def test_create_append_reopen_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state" / "dose.journal"  # the directory is created too
    journal, records = DoseJournal.open(path, t_s=T0)
    assert records == []
    assert journal.path == path
    assert journal.records_written == 1  # the header
    assert sidecar(path).read_text(encoding="utf-8") == journal.journal_id + "\n"
    for record in RECORDS:
        journal.append(record)
    assert journal.records_written == 4
    journal.close()

    lines = lines_of(path)
    assert len(lines) == 4
    assert lines[0] == encode(
        {"k": "journal", "version": JOURNAL_VERSION, "id": journal.journal_id, "t": T0, "n": 0}
    )
    assert lines[1:] == [encode({**r, "n": n}) for n, r in enumerate(RECORDS, start=1)]

    again, records = DoseJournal.open(path, t_s=T0 + 1)
    assert again.journal_id == journal.journal_id
    assert records == [{**r, "n": n} for n, r in enumerate(RECORDS, start=1)]
    again.append({"k": "delta"})
    again.close()
    third, records = DoseJournal.open(path, t_s=T0 + 2)
    third.close()
    assert [r["k"] for r in records] == ["alpha", "beta", "gamma", "delta"]
    assert records[-1]["n"] == 4
    assert lines_of(path)[:4] == lines  # appended, never rewritten


def test_each_journal_gets_its_own_id(tmp_path: Path) -> None:
    a = write_journal(tmp_path / "a.journal")
    b = write_journal(tmp_path / "b.journal")
    assert a != b
    assert len(a) == 32


def test_append_after_close_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dose.journal"
    journal, _ = DoseJournal.open(path, t_s=T0)
    journal.close()
    journal.close()  # harmless
    before = path.read_bytes()
    with pytest.raises(JournalError, match="closed"):
        journal.append({"k": "late"})
    assert path.read_bytes() == before


def test_non_finite_numbers_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "dose.journal"
    journal, _ = DoseJournal.open(path, t_s=T0)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        journal.append({"k": "bad", "v": math.nan})
    assert path.read_bytes() == before
    journal.append({"k": "good"})  # numbering goes on without a gap
    journal.close()
    _, records = DoseJournal.open(path, t_s=T0)
    assert records == [{"k": "good", "n": 1}]


# --- damage: each case names its line and changes nothing ----------------------------------------


def _flip_value(lines: list[bytes]) -> list[bytes]:
    lines[2] = lines[2].replace(b'"v":2', b'"v":3')  # a changed digit, same length
    return lines


def _flip_checksum(lines: list[bytes]) -> list[bytes]:
    text, crc = lines[3].rstrip(b"\n").split(b"\t")
    lines[3] = text + b"\t" + (b"0" if crc[:1] != b"0" else b"1") + crc[1:] + b"\n"
    return lines


def _bad_utf8(lines: list[bytes]) -> list[bytes]:
    lines[2] = lines[2].replace(b'"beta"', b'"bet\xff"')
    return lines


def _truncate(lines: list[bytes]) -> list[bytes]:
    lines[3] = lines[3][:-7]  # a write cut short: the last record has no end
    return lines


def _delete_line(lines: list[bytes]) -> list[bytes]:
    del lines[2]
    return lines


def _duplicate_line(lines: list[bytes]) -> list[bytes]:
    lines.insert(2, lines[2])
    return lines


def _swap_lines(lines: list[bytes]) -> list[bytes]:
    lines[1], lines[2] = lines[2], lines[1]
    return lines


def _delete_header(lines: list[bytes]) -> list[bytes]:
    del lines[0]
    return lines


def _header(**changes: Any) -> Callable[[list[bytes]], list[bytes]]:
    def change(lines: list[bytes]) -> list[bytes]:
        header = json.loads(lines[0].split(b"\t")[0])
        header.update(changes)
        lines[0] = encode({k: v for k, v in header.items() if v is not None})
        return lines

    return change


def _no_checksum(lines: list[bytes]) -> list[bytes]:
    lines[1] = lines[1].split(b"\t")[0] + b"\n"
    return lines


def _not_json(lines: list[bytes]) -> list[bytes]:
    text = b'{"k":"alpha","n":1'
    lines[1] = text + b"\t" + f"{zlib.crc32(text):08x}".encode() + b"\n"
    return lines


def _not_an_object(lines: list[bytes]) -> list[bytes]:
    text = b'["k",1]'
    lines[1] = text + b"\t" + f"{zlib.crc32(text):08x}".encode() + b"\n"
    return lines


@pytest.mark.parametrize(
    ("damage", "line", "reason"),
    [
        (_flip_value, 3, "checksum mismatch"),
        (_flip_checksum, 4, "checksum mismatch"),
        (_bad_utf8, 3, "not UTF-8"),
        (_truncate, 4, "last record is incomplete"),
        (_delete_line, 3, "record number 3, expected 2"),
        (_duplicate_line, 4, "record number 2, expected 3"),
        (_swap_lines, 2, "record number 2, expected 1"),
        (_delete_header, 1, "record number 1, expected 0"),
        (_header(version=2), 1, "version 2; this build reads 1"),
        (_header(version=None), 1, "version None"),
        (_header(k="dlv"), 1, "first record is not a journal header"),
        (_header(id=42), 1, "first record is not a journal header"),
        (_no_checksum, 2, "no checksum"),
        (_not_json, 2, "not JSON"),
        (_not_an_object, 2, "record is not an object"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_damaged_journal_is_refused_naming_the_line(
    tmp_path: Path, damage: Callable[[list[bytes]], list[bytes]], line: int, reason: str
) -> None:
    path = tmp_path / "dose.journal"
    journal_id = write_journal(path)
    # lines: 1 header, 2 alpha, 3 beta, 4 gamma
    path.write_bytes(b"".join(damage(lines_of(path))))
    damaged = path.read_bytes()
    with pytest.raises(JournalError) as info:
        DoseJournal.open(path, t_s=T0 + 1)
    error = info.value
    assert not isinstance(error, JournalMissingError)
    assert (error.path, error.line) == (path, line)
    assert reason in error.reason
    assert str(error).startswith(f"dose journal {path}:{line}: ")
    assert path.read_bytes() == damaged  # opening never repairs or rewrites
    assert sidecar(path).read_text(encoding="utf-8") == journal_id + "\n"


def test_journal_of_another_rig_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dose.journal"
    journal_id = write_journal(path)
    sidecar(path).write_text("0123456789abcdef0123456789abcdef\n", encoding="utf-8")
    before = path.read_bytes()
    with pytest.raises(JournalError) as info:
        DoseJournal.open(path, t_s=T0)
    assert info.value.line == 1
    assert repr(journal_id) in str(info.value)
    assert "is not this rig's ('0123456789abcdef0123456789abcdef')" in str(info.value)
    assert path.read_bytes() == before


def test_empty_journal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dose.journal"
    write_journal(path)
    path.write_bytes(b"")
    with pytest.raises(JournalError) as info:
        DoseJournal.open(path, t_s=T0)
    assert (info.value.line, info.value.reason) == (0, "empty (not even a header)")
    assert str(info.value) == f"dose journal {path}: empty (not even a header)"


def test_missing_journal_with_its_sidecar_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dose.journal"
    journal_id = write_journal(path)
    path.unlink()
    with pytest.raises(JournalMissingError) as info:
        DoseJournal.open(path, t_s=T0)
    assert isinstance(info.value, JournalError)
    assert info.value.line == 0
    assert "missing" in str(info.value)
    assert "dose.journal.id" in str(info.value)
    assert not path.exists()  # no new, empty history in its place
    assert sidecar(path).read_text(encoding="utf-8") == journal_id + "\n"


def test_both_missing_starts_a_fresh_journal(tmp_path: Path) -> None:
    path = tmp_path / "dose.journal"
    old_id = write_journal(path)
    path.unlink()
    sidecar(path).unlink()  # removing both files is how a new ledger is started on purpose
    journal, records = DoseJournal.open(path, t_s=T0 + 5)
    journal.close()
    assert records == []
    assert journal.journal_id != old_id
    assert sidecar(path).read_text(encoding="utf-8") == journal.journal_id + "\n"
    assert lines_of(path) == [
        encode(
            {"k": "journal", "version": JOURNAL_VERSION, "id": journal.journal_id, "t": T0 + 5}
            | {"n": 0}
        )
    ]


# --- the therapy engine on a journal ---------------------------------------------------------


def healthy_engine_journal(path: Path) -> None:
    """A journal written by an engine: a program, some delivery, a clean shutdown."""
    engine = TherapyEngine.open(t_s=T0, library=LIB, journal_path=path, initial_program=PROGRAM)
    assert engine.state is TherapyState.RUNNING
    engine.on_device_volume(T0, 0.0)
    engine.command(T0)
    for k in range(1, 5):  # two delivery buckets of 1 µL each
        engine.on_device_volume(T0 + 120 * k, 0.5 * k)
    engine.close()
    kinds = [json.loads(line.split(b"\t")[0])["k"] for line in lines_of(path)]
    assert kinds == ["journal", "program", "baseline", "dlv", "dlv", "close"]


def test_engine_restarts_from_its_journal(tmp_path: Path) -> None:
    path = tmp_path / "dose.journal"
    healthy_engine_journal(path)
    before = path.read_bytes()
    engine = TherapyEngine.open(
        t_s=T0 + 300,
        library=LIB,
        journal_path=path,
        initial_program=parse_program(PROGRAM.to_yaml().replace("baclofen-bolus", "not-applied")),
    )
    assert engine.state is TherapyState.RUNNING
    assert engine.drain_alarm_events() == []
    snap = engine.snapshot(T0 + 300)
    assert snap.program == "baclofen-bolus"  # the journal's, not the initial program
    assert snap.delivered_volume_ul == pytest.approx(2.0)
    assert snap.delivered_dose_24h_ug == pytest.approx(1.0)
    assert snap.reservoir_volume_ul == pytest.approx(17998.0)
    assert engine.command(T0 + 300).action is PumpAction.INFUSE
    engine.close()
    assert path.read_bytes().startswith(before)  # only appended to


def _corrupt_checksum(path: Path) -> None:
    lines = lines_of(path)
    lines[1] = lines[1].replace(b"baclofen-bolus", b"baclofen-bolux")
    path.write_bytes(b"".join(lines))


def _truncate_last(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def _delete_a_delivery(path: Path) -> None:
    lines = lines_of(path)
    del lines[2]  # the first of the two delivery buckets
    path.write_bytes(b"".join(lines))


def _other_rig(path: Path) -> None:
    sidecar(path).write_text("ffffffffffffffffffffffffffffffff\n", encoding="utf-8")


def _delete_journal(path: Path) -> None:
    path.unlink()


def _unreplayable(path: Path) -> None:
    # Intact checksums and numbering, but a delivery record without its amounts.
    n = len(lines_of(path))
    with path.open("ab") as handle:
        handle.write(encode({"k": "dlv", "t0": T0, "t1": T0, "n": n}))


@pytest.mark.parametrize(
    "damage",
    [
        _corrupt_checksum,
        _truncate_last,
        _delete_a_delivery,
        _other_rig,
        _delete_journal,
        _unreplayable,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_engine_on_an_untrusted_journal_refuses_all_dosing(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    path = tmp_path / "dose.journal"
    healthy_engine_journal(path)
    damage(path)
    journal_bytes = path.read_bytes() if path.exists() else None
    sidecar_bytes = sidecar(path).read_bytes()
    t = T0 + 3600

    engine = TherapyEngine.open(t_s=t, library=LIB, journal_path=path, initial_program=PROGRAM)
    assert engine.state is TherapyState.ALARM
    events = engine.drain_alarm_events()
    assert [(e.code, e.severity, e.active) for e in events] == [
        (JOURNAL_FAULT, int(AlarmSeverity.CRITICAL), True)
    ]
    assert str(path) in events[0].message
    intent = engine.command(t)
    assert intent.action is PumpAction.STOP
    assert intent.flow_rate_ul_per_h == 0.0
    assert "journal" in intent.reason
    snap = engine.snapshot(t)
    assert snap.therapy_state is TherapyState.ALARM
    assert JOURNAL_FAULT in snap.active_alarms
    assert snap.program == ""  # the initial program was not applied either

    with pytest.raises(TherapyError, match="refused"):
        engine.set_program(t + 1, PROGRAM)
    with pytest.raises(TherapyError, match="refused"):
        engine.resume(t + 2)
    with pytest.raises(TherapyError, match="refused"):
        engine.refill(t + 3, volume_ul=100.0, drug="baclofen", concentration_ug_per_ml=500.0)
    with pytest.raises(TherapyError, match="refused"):
        engine.clinician_bolus(t + 4, "clinician", dose_ug=5.0, duration_s=600.0)
    answer = engine.request_bolus(t + 5, "req-1")
    assert not answer.granted
    assert "journal fault" in answer.message
    assert answer.dose_ug == 0.0

    # Nothing clears it short of repairing the journal and restarting.
    engine.clear_alarms(t + 6)
    engine.suspend(t + 7, "operator")
    engine.on_device_volume(t + 8, 0.0)
    engine.on_device_volume(t + 9, 2.0)
    assert engine.state is TherapyState.ALARM
    assert engine.command(t + 10).action is PumpAction.STOP
    with pytest.raises(TherapyError):
        engine.resume(t + 11)
    assert JOURNAL_FAULT in engine.snapshot(t + 12).active_alarms
    assert engine.drain_alarm_events() == []  # raised once
    engine.close()

    # The journal (or its absence) and the sidecar are left exactly as found.
    assert (path.read_bytes() if path.exists() else None) == journal_bytes
    assert sidecar(path).read_bytes() == sidecar_bytes


def test_engine_on_a_malformed_state_record_refuses_dosing(tmp_path: Path) -> None:
    path = tmp_path / "dose.journal"
    healthy_engine_journal(path)
    lines = lines_of(path)
    last = json.loads(lines[-1].split(b"\t")[0])
    last["s"]["dev"] = []
    lines[-1] = encode(last)
    path.write_bytes(b"".join(lines))
    engine = TherapyEngine.open(t_s=T0 + 3600, library=LIB, journal_path=path)
    assert engine.state is TherapyState.ALARM
    assert [e.code for e in engine.drain_alarm_events()] == [JOURNAL_FAULT]


def test_a_high_water_mark_in_the_old_slot_size_is_still_read(tmp_path: Path) -> None:
    """Marks written before they carried a digest had 192-byte slots: the journal opens, and
    a rollback past such a mark is still caught (with no digest to restore)."""
    path = tmp_path / "dose.journal"
    journal, _ = DoseJournal.open(path, t_s=T0)
    for k in range(3):
        journal.append({"k": "note", "i": k}, t_s=T0 + k, digest={"c": float(k)})
    journal.close()
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    slots = b""
    for n in (2, 3):  # slot n % 2, as the old writer left them
        text = json.dumps({"n": n, "crc": lines[n].rstrip("\n").rpartition("\t")[2], "t": T0})
        slot = f"{text}\t{zlib.crc32(text.encode()):08x}".encode()
        slots += slot.ljust(191) + b"\n"
    mark = path.with_name(path.name + ".hwm")
    mark.write_bytes(slots[192:] + slots[:192])  # n=2 in slot 0, n=3 in slot 1
    again, records = DoseJournal.open(path, t_s=T0 + 10)
    assert [r["i"] for r in records] == [0, 1, 2]
    again.close()
    path.write_text("".join(lines[:-1]), encoding="utf-8")  # the last record lost
    mark.write_bytes(slots[192:] + slots[:192])
    with pytest.raises(JournalRollbackError):
        DoseJournal.open(path, t_s=T0 + 20)
    _, records = DoseJournal.open(path, t_s=T0 + 30, accept_rollback="test")
    assert records[-1]["k"] == "rollback" and records[-1]["mark_d"] is None
