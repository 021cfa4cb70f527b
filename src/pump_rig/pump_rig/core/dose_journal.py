"""The dose journal: an append-only file of records, each written and fsync'd as it happens.

One JSON object per line followed by a tab and the CRC-32 of the JSON text (8 hex digits).
Every record carries ``n``, its position in the journal, so a lost or duplicated line is
detected as well as a damaged one. The first record names the journal's ``id``; a sidecar file
``<journal>.id`` holds the same id, so a journal that disappears (or is swapped for another
rig's) is noticed: with the sidecar present and the journal missing, or the ids differing,
opening fails instead of silently starting a new, empty dose history.

A journal can also lose its last WHOLE records and still read as healthy (a file restored from
a copy, a filesystem that dropped the tail it had acknowledged): the records left are intact and
numbered, and the sidecar cannot see it. So a high-water mark is kept apart from the journal, in
``<journal>.hwm``: the number, CRC and time of the last record written, and the writer's digest
of the state it left (the therapy engine's: device counter and 24 h dose per drug), updated
(and fsync'd) after every append. A journal that ends before its high-water mark was rolled
back: opening it raises :class:`JournalRollbackError` unless an operator accepts the loss with a
reason, which is then journaled (a ``rollback`` record naming what was lost, with the mark's
digest) before anything else.

The mark has two slots written in turn, each with its own CRC, so a crash in the middle of
writing one leaves the other: the newer valid slot is the mark.

One controller at a time: opening takes an :class:`~pump_rig.core.rig_files.OwnerLock` on
``<journal>.lock`` (held until :meth:`DoseJournal.close` or the process ends), so a second rig
started on the same ledger is refused with the first one's host and pid instead of
interleaving its records.

To start a new ledger on purpose, open with ``new_ledger=True``: the old journal and its
sidecars are kept as a dated copy (``<journal>.<YYYYmmdd-HHMMSS>`` and so on), never deleted.
"""

from __future__ import annotations

import json
import os
import time
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from pump_rig.core.rig_files import OwnerLock

__all__ = [
    "JOURNAL_VERSION",
    "DoseJournal",
    "HighWaterMark",
    "JournalError",
    "JournalMissingError",
    "JournalRollbackError",
    "archive",
    "sidecars",
]

JOURNAL_VERSION: Final = 1
_SLOT_BYTES: Final = 512  # one high-water-mark slot: JSON, tab, CRC-32, padding, newline
_OLD_SLOT_BYTES: Final = 192  # marks written before they carried a digest


class JournalError(Exception):
    """The journal cannot be trusted. ``line`` is 1-based (0 = the file as a whole)."""

    def __init__(self, path: Path, line: int, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"dose journal {where}: {reason}")


class JournalMissingError(JournalError):
    """The sidecar says a journal exists, but the journal file is not there."""


class JournalRollbackError(JournalError):
    """The journal ends before its high-water mark: whole records were lost."""

    def __init__(self, path: Path, last_n: int, mark: HighWaterMark) -> None:
        self.last_n = last_n
        self.mark = mark
        super().__init__(
            path,
            0,
            f"rolled back: it ends at record {last_n} but record {mark.n} was written "
            f"({mark.n - last_n} lost, the last at t={mark.t_s:.3f} s); dosing needs an "
            "operator to accept the loss",
        )


@dataclass(frozen=True)
class HighWaterMark:
    """The last record written: its number, the CRC of its line and its time (s), and the
    writer's digest of the state it left (what a rollback past it cannot otherwise know)."""

    n: int
    crc: str
    t_s: float
    digest: Mapping[str, Any] | None = None


def _encode(record: Mapping[str, Any]) -> str:
    text = json.dumps(record, separators=(",", ":"), sort_keys=True, allow_nan=False)
    return f"{text}\t{zlib.crc32(text.encode()):08x}\n"


def _id_path(path: Path) -> Path:
    return path.with_name(path.name + ".id")


def _mark_path(path: Path) -> Path:
    return path.with_name(path.name + ".hwm")


def _line_crc(line: str) -> str:
    return line.rstrip("\n").rpartition("\t")[2]


class _MarkFile:
    """The high-water mark: two fixed-size slots, written in turn with pwrite and fsync."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    @staticmethod
    def read(path: Path) -> HighWaterMark | None:
        """The newest valid slot; None when there is no mark file (a journal from before
        marks were kept). A file with no valid slot raises ValueError."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        marks = _MarkFile._slots(data, _SLOT_BYTES) or _MarkFile._slots(data, _OLD_SLOT_BYTES)
        if not marks:
            raise ValueError("no valid slot")
        return max(marks, key=lambda m: m.n)

    @staticmethod
    def _slots(data: bytes, size: int) -> list[HighWaterMark]:
        marks = []
        for k in range(0, len(data), size):
            slot = data[k : k + size].rstrip(b" \n\0").decode("utf-8", "replace")
            text, _, crc = slot.rpartition("\t")
            if not text or f"{zlib.crc32(text.encode()):08x}" != crc:
                continue
            try:
                fields = json.loads(text)
                digest = fields.get("d")
                marks.append(
                    HighWaterMark(
                        int(fields["n"]),
                        str(fields["crc"]),
                        float(fields["t"]),
                        digest if isinstance(digest, dict) else None,
                    )
                )
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
        return marks

    def write(self, mark: HighWaterMark) -> None:
        fields: dict[str, Any] = {"n": mark.n, "crc": mark.crc, "t": mark.t_s}
        if mark.digest is not None:
            fields["d"] = mark.digest
        text = json.dumps(fields, separators=(",", ":"), allow_nan=False)
        slot = f"{text}\t{zlib.crc32(text.encode()):08x}".encode()
        if len(slot) >= _SLOT_BYTES:
            raise ValueError(f"high-water mark of {len(slot)} bytes does not fit its slot")
        slot = slot.ljust(_SLOT_BYTES - 1) + b"\n"
        os.pwrite(self._fd, slot, (mark.n % 2) * _SLOT_BYTES)
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class DoseJournal:
    """Open with :meth:`open`; :meth:`append` returns once the record is on disk."""

    def __init__(
        self, path: Path, journal_id: str, next_n: int, handle: IO[str], mark: _MarkFile
    ) -> None:
        self.path = path
        self.journal_id = journal_id
        self._next_n = next_n
        self._handle: IO[str] | None = handle
        self._mark: _MarkFile | None = mark
        self._lock: OwnerLock | None = None
        self.archived_as: Path | None = None  # the dated copy a new ledger left behind

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        t_s: float,
        accept_rollback: str = "",
        owner: Mapping[str, object] | None = None,
        new_ledger: bool = False,
        lock: OwnerLock | None = None,
    ) -> tuple[DoseJournal, list[dict[str, Any]]]:
        """Open (or create) the journal; return it with its records after the header.

        Raises :class:`~pump_rig.core.rig_files.LockHeldError` when another process has it
        open (``owner`` is what this one tells such a process about itself),
        :class:`JournalError` for a damaged journal, :class:`JournalMissingError` when
        the sidecar exists but the journal does not, :class:`JournalRollbackError` when it
        ends before its high-water mark — unless ``accept_rollback`` gives the operator's
        reason, which is journaled as a ``rollback`` record (returned last). ``new_ledger``
        keeps an existing journal as a dated copy and starts an empty one. ``lock``: the
        caller already holds the journal's lock (and keeps it when the journal closes).
        """
        own = lock is None
        held = OwnerLock.acquire(path, f"dose journal {path}", owner) if lock is None else lock
        if not held.held or held.path != path:
            raise ValueError(f"the lock given is not held for {path}")
        try:
            archived = archive(path) if new_ledger else None
            journal, records = cls._open_locked(path, t_s, accept_rollback)
        except BaseException:
            if own:
                held.release()
            raise
        journal._lock = held if own else None
        journal.archived_as = archived
        return journal, records

    @classmethod
    def _open_locked(
        cls, path: Path, t_s: float, accept_rollback: str
    ) -> tuple[DoseJournal, list[dict[str, Any]]]:
        id_path = _id_path(path)
        if not path.exists():
            if id_path.exists():
                raise JournalMissingError(
                    path,
                    0,
                    f"missing, but {id_path.name} says this rig has a dose history; restore the "
                    "journal (or remove both files to start a new ledger on purpose)",
                )
            return cls._create(path, t_s), []
        records, lines = cls._read(path)
        header = records[0]
        if id_path.exists():
            expected = id_path.read_text(encoding="utf-8").strip()
            if expected != header.get("id"):
                raise JournalError(
                    path, 1, f"journal id {header.get('id')!r} is not this rig's ({expected!r})"
                )
        rollback = cls._check_mark(path, lines)
        if rollback is not None and not accept_rollback.strip():
            raise rollback
        handle = path.open("a", encoding="utf-8")
        journal = cls(path, str(header["id"]), len(records), handle, _MarkFile(_mark_path(path)))
        records = records[1:]
        if rollback is not None:
            lost = {
                "k": "rollback",
                "reason": accept_rollback.strip(),
                "last_n": rollback.last_n,
                "mark_n": rollback.mark.n,
                "mark_t": rollback.mark.t_s,
                "mark_d": rollback.mark.digest,
                "t": t_s,
            }
            journal.append(lost, t_s=t_s)
            records.append({**lost, "n": len(lines)})
        elif not _mark_path(path).stat().st_size:
            # A journal from before marks were kept gets one now.
            journal._write_mark(len(lines) - 1, lines[-1], t_s)
        return journal, records

    @classmethod
    def read(cls, path: Path) -> list[dict[str, Any]]:
        """Every record, header first, without opening the journal for writing (no lock):
        what ``pumprig journal show`` and ``verify`` read. Raises :class:`JournalError` for
        a damaged, foreign, missing or rolled-back journal, as :meth:`open` would."""
        if not path.exists():
            if _id_path(path).exists():
                raise JournalMissingError(path, 0, f"missing, but {_id_path(path).name} exists")
            raise JournalError(path, 0, "no such journal")
        records, lines = cls._read(path)
        if _id_path(path).exists():
            expected = _id_path(path).read_text(encoding="utf-8").strip()
            if expected != records[0].get("id"):
                raise JournalError(
                    path, 1, f"journal id {records[0].get('id')!r} is not this rig's ({expected!r})"
                )
        rollback = cls._check_mark(path, lines)
        if rollback is not None:
            raise rollback
        return records

    @staticmethod
    def _check_mark(path: Path, lines: list[str]) -> JournalRollbackError | None:
        try:
            mark = _MarkFile.read(_mark_path(path))
        except (OSError, ValueError) as exc:
            raise JournalError(
                path, 0, f"high-water mark {_mark_path(path).name} unreadable ({exc})"
            ) from None
        if mark is None:
            return None
        last_n = len(lines) - 1
        if last_n < mark.n:
            return JournalRollbackError(path, last_n, mark)
        if _line_crc(lines[mark.n]) != mark.crc:
            raise JournalError(
                path,
                mark.n + 1,
                f"record {mark.n} is not the one written (high-water mark CRC {mark.crc}): "
                "the journal was replaced or rewritten",
            )
        return None

    @classmethod
    def _create(cls, path: Path, t_s: float) -> DoseJournal:
        path.parent.mkdir(parents=True, exist_ok=True)
        journal_id = uuid.uuid4().hex
        _write_durably(_id_path(path), journal_id + "\n")
        handle = path.open("x", encoding="utf-8")
        mark_path = _mark_path(path)
        mark_path.unlink(missing_ok=True)  # an old ledger's mark (its journal was removed)
        journal = cls(path, journal_id, 0, handle, _MarkFile(mark_path))
        journal.append(
            {"k": "journal", "version": JOURNAL_VERSION, "id": journal_id, "t": t_s}, t_s=t_s
        )
        _fsync_dir(path.parent)
        return journal

    @staticmethod
    def _read(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise JournalError(path, 0, f"cannot read: {exc.strerror or exc}") from exc
        if not data:
            raise JournalError(path, 0, "empty (not even a header)")
        if not data.endswith(b"\n"):
            raise JournalError(path, data.count(b"\n") + 1, "last record is incomplete")
        records: list[dict[str, Any]] = []
        lines: list[str] = []
        for number, raw in enumerate(data.split(b"\n")[:-1], start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise JournalError(path, number, "not UTF-8 text") from None
            lines.append(line)
            text, sep, crc = line.rpartition("\t")
            if not sep or len(crc) != 8:
                raise JournalError(path, number, "no checksum")
            if f"{zlib.crc32(text.encode()):08x}" != crc:
                raise JournalError(path, number, "checksum mismatch")
            try:
                record = json.loads(text)
            except ValueError as exc:
                raise JournalError(path, number, f"not JSON ({exc})") from None
            if not isinstance(record, dict):
                raise JournalError(path, number, "record is not an object")
            if record.get("n") != number - 1:
                raise JournalError(
                    path, number, f"record number {record.get('n')!r}, expected {number - 1}"
                )
            records.append(record)
        header = records[0]
        if header.get("k") != "journal" or not isinstance(header.get("id"), str):
            raise JournalError(path, 1, "first record is not a journal header")
        if header.get("version") != JOURNAL_VERSION:
            raise JournalError(
                path, 1, f"version {header.get('version')!r}; this build reads {JOURNAL_VERSION}"
            )
        return records, lines

    def append(
        self,
        record: Mapping[str, Any],
        *,
        t_s: float = 0.0,
        digest: Mapping[str, Any] | None = None,
    ) -> None:
        """Write one record made at ``t_s`` and fsync it, then the high-water mark (with
        ``digest``, the writer's summary of the state the record leaves: returned as
        ``mark_d`` of an accepted rollback). ``n`` is added here."""
        if self._handle is None:
            raise JournalError(self.path, 0, "journal is closed")
        line = _encode({**record, "n": self._next_n})
        self._handle.write(line)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._write_mark(self._next_n, line, t_s, digest)
        self._next_n += 1

    def _write_mark(
        self, n: int, line: str, t_s: float, digest: Mapping[str, Any] | None = None
    ) -> None:
        if self._mark is not None:
            self._mark.write(HighWaterMark(n, _line_crc(line), t_s, digest))

    @property
    def records_written(self) -> int:
        return self._next_n

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._mark is not None:
            self._mark.close()
            self._mark = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def sidecars(path: Path) -> list[Path]:
    """The journal and the files kept beside it (the lock file aside)."""
    return [path, _id_path(path), _mark_path(path)]


def archive(path: Path, stamp: str | None = None) -> Path | None:
    """Keep the journal at ``path`` and its sidecars as a dated copy (``<name>.<stamp>``) and
    leave nothing at ``path``; returns the copy's journal path (None: there was none). The
    caller holds the journal's lock."""
    present = [p for p in sidecars(path) if p.exists()]
    if not present:
        return None
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    suffix, k = stamp, 1
    while any(p.with_name(f"{p.name}.{suffix}").exists() for p in sidecars(path)):
        k += 1
        suffix = f"{stamp}-{k}"
    for p in present:
        p.replace(p.with_name(f"{p.name}.{suffix}"))
    _fsync_dir(path.parent)
    return path.with_name(f"{path.name}.{suffix}")


def _write_durably(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
