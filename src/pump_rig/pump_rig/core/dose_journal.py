"""The dose journal: an append-only file of records, each written and fsync'd as it happens.

One JSON object per line followed by a tab and the CRC-32 of the JSON text (8 hex digits).
Every record carries ``n``, its position in the journal, so a lost or duplicated line is
detected as well as a damaged one. The first record names the journal's ``id``; a sidecar file
``<journal>.id`` holds the same id, so a journal that disappears (or is swapped for another
rig's) is noticed: with the sidecar present and the journal missing, or the ids differing,
opening fails instead of silently starting a new, empty dose history.

To start a new ledger on purpose, remove both files.
"""

from __future__ import annotations

import json
import os
import uuid
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Final

__all__ = ["JOURNAL_VERSION", "DoseJournal", "JournalError", "JournalMissingError"]

JOURNAL_VERSION: Final = 1


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


def _encode(record: Mapping[str, Any]) -> str:
    text = json.dumps(record, separators=(",", ":"), sort_keys=True, allow_nan=False)
    return f"{text}\t{zlib.crc32(text.encode()):08x}\n"


def _id_path(path: Path) -> Path:
    return path.with_name(path.name + ".id")


class DoseJournal:
    """Open with :meth:`open`; :meth:`append` returns once the record is on disk."""

    def __init__(self, path: Path, journal_id: str, next_n: int, handle: IO[str]) -> None:
        self.path = path
        self.journal_id = journal_id
        self._next_n = next_n
        self._handle: IO[str] | None = handle

    @classmethod
    def open(cls, path: Path, *, t_s: float) -> tuple[DoseJournal, list[dict[str, Any]]]:
        """Open (or create) the journal; return it with its records after the header.

        Raises :class:`JournalError` for a damaged journal, :class:`JournalMissingError` when
        the sidecar exists but the journal does not.
        """
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
        records = cls._read(path)
        header = records[0]
        if id_path.exists():
            expected = id_path.read_text(encoding="utf-8").strip()
            if expected != header.get("id"):
                raise JournalError(
                    path, 1, f"journal id {header.get('id')!r} is not this rig's ({expected!r})"
                )
        handle = path.open("a", encoding="utf-8")
        return cls(path, str(header["id"]), len(records), handle), records[1:]

    @classmethod
    def _create(cls, path: Path, t_s: float) -> DoseJournal:
        path.parent.mkdir(parents=True, exist_ok=True)
        journal_id = uuid.uuid4().hex
        _write_durably(_id_path(path), journal_id + "\n")
        handle = path.open("x", encoding="utf-8")
        journal = cls(path, journal_id, 0, handle)
        journal.append({"k": "journal", "version": JOURNAL_VERSION, "id": journal_id, "t": t_s})
        _fsync_dir(path.parent)
        return journal

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]]:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise JournalError(path, 0, f"cannot read: {exc.strerror or exc}") from exc
        if not data:
            raise JournalError(path, 0, "empty (not even a header)")
        if not data.endswith(b"\n"):
            raise JournalError(path, data.count(b"\n") + 1, "last record is incomplete")
        records: list[dict[str, Any]] = []
        for number, raw in enumerate(data.split(b"\n")[:-1], start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise JournalError(path, number, "not UTF-8 text") from None
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
        return records

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record and fsync it. ``n`` is added here."""
        if self._handle is None:
            raise JournalError(self.path, 0, "journal is closed")
        line = _encode({**record, "n": self._next_n})
        self._handle.write(line)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._next_n += 1

    @property
    def records_written(self) -> int:
        return self._next_n

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


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
