"""Where a rig keeps its files, and the locks that make each of them one rig's.

A rig is one ROS namespace in one ROS domain: two rigs on one machine (two checkouts, two
launches, two users) must never share a dose journal or a serial-port link. Every per-rig
path is therefore keyed by both (``domain<N>/<namespace>``), links live in a per-user runtime
directory, and a file one rig writes is held with an :class:`OwnerLock`: an exclusive
``flock`` on a ``.lock`` file beside it that names its holder (host, pid, what it is). The
kernel releases the lock when the holder exits, however it exits (``kill -9`` included), so a
lock is never stale; the holder's name is only what a refusal prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Final

__all__ = [
    "LockHeldError",
    "OwnerLock",
    "default_journal_path",
    "default_port_link",
    "emulator_serial",
    "legacy_journal_path",
    "rig_key",
    "ros_domain_id",
    "runtime_dir",
]

_LOCK_SUFFIX: Final = ".lock"


def _namespace_name(namespace: str) -> str:
    return namespace.strip("/").replace("/", "_") or "root"


def rig_key(namespace: str, domain_id: int) -> Path:
    """``domain<N>/<namespace>``: the relative directory of one rig's files."""
    return Path(f"domain{int(domain_id)}") / _namespace_name(namespace)


def ros_domain_id(environ: Mapping[str, str] = os.environ) -> int:
    """The ROS domain a process started with this environment joins (ROS_DOMAIN_ID, 0 if
    unset). Raises ValueError with one line for a value ROS would refuse."""
    text = environ.get("ROS_DOMAIN_ID", "").strip()
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"ROS_DOMAIN_ID={text!r} is not a number") from None
    if not 0 <= value <= 232:
        raise ValueError(f"ROS_DOMAIN_ID={value} is outside 0..232")
    return value


def runtime_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """This user's directory for per-rig links: $XDG_RUNTIME_DIR/pump_rig, else
    <tmp>/pump_rig-<uid> (mode 0700 either way: another user cannot replace a link)."""
    base = environ.get("XDG_RUNTIME_DIR", "")
    if base and Path(base).is_dir() and os.access(base, os.W_OK):
        directory = Path(base) / "pump_rig"
    else:
        directory = Path(tempfile.gettempdir()) / f"pump_rig-{os.getuid()}"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_uid != os.getuid():
        raise PermissionError(f"{directory} belongs to another user; set XDG_RUNTIME_DIR")
    return directory


def default_port_link(
    namespace: str, domain_id: int, environ: Mapping[str, str] = os.environ
) -> Path:
    """Where the mock hardware links its emulated pump's pty."""
    return runtime_dir(environ) / rig_key(namespace, domain_id) / "pump"


def emulator_serial(prefix: str, *parts: object) -> str:
    """A serial number for an emulated pump, the same for the same rig (host, domain,
    namespace, link) and different for another: ``<prefix>-<8 hex digits>``."""
    key = "\0".join(str(p) for p in (socket.gethostname(), *parts))
    return f"{prefix}-{zlib.crc32(key.encode()):08X}"


def _ros_home(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("ROS_HOME") or Path.home() / ".ros")


def default_journal_path(
    namespace: str, domain_id: int, environ: Mapping[str, str] = os.environ
) -> Path:
    """$ROS_HOME/pump_rig/domain<N>/<namespace>/dose_journal.jsonl (ROS_HOME: ~/.ros)."""
    return _ros_home(environ) / "pump_rig" / rig_key(namespace, domain_id) / "dose_journal.jsonl"


def legacy_journal_path(namespace: str, environ: Mapping[str, str] = os.environ) -> Path:
    """Where releases before rig keys kept the journal (shared by every domain)."""
    return _ros_home(environ) / "pump_rig" / _namespace_name(namespace) / "dose_journal.jsonl"


class LockHeldError(Exception):
    """Another process holds the lock; ``holder`` is what it wrote about itself."""

    def __init__(self, path: Path, what: str, holder: Mapping[str, object]) -> None:
        self.path = path
        self.holder = dict(holder)
        super().__init__(f"{what} is in use by {describe_holder(holder)}")


def describe_holder(holder: Mapping[str, object]) -> str:
    """ "pid 1234 on host lab-pc (rig /rig in ROS domain 0, since 2026-12-03 10:00:00)"."""
    if not holder:
        return "another process (it did not say which)"
    text = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    details = []
    if "namespace" in holder or "domain" in holder:
        details.append(
            f"rig {holder.get('namespace', '?')} in ROS domain {holder.get('domain', '?')}"
        )
    if "since" in holder:
        details.append(f"since {holder['since']}")
    return f"{text} ({', '.join(details)})" if details else text


class OwnerLock:
    """An exclusive lock on ``<path>.lock`` naming its holder; release with :meth:`release`
    (or let the process end)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        # A file object, so that a holder dropped without release() (a test's simulated
        # crash) lets the lock go when it is collected, as a dead process would.
        self._file: IO[bytes] | None = os.fdopen(fd, "r+b", buffering=0)

    @staticmethod
    def lock_path(path: Path) -> Path:
        return path.with_name(path.name + _LOCK_SUFFIX)

    @classmethod
    def acquire(cls, path: Path, what: str, owner: Mapping[str, object] | None = None) -> OwnerLock:
        """Lock ``path`` (the file it guards) for this process, or raise
        :class:`LockHeldError` naming the holder. ``what`` names the file in the error."""
        lock_path = cls.lock_path(path)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = cls._read_holder(fd)
            os.close(fd)
            raise LockHeldError(path, what, holder) from None
        except BaseException:
            os.close(fd)
            raise
        me: dict[str, object] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            **(owner or {}),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me, sort_keys=True) + "\n").encode(), 0)
        return cls(path, fd)

    @staticmethod
    def holder(path: Path) -> dict[str, object] | None:
        """Who holds ``path``'s lock now (None: nobody)."""
        lock_path = OwnerLock.lock_path(path)
        try:
            fd = os.open(lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return OwnerLock._read_holder(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @staticmethod
    def _read_holder(fd: int) -> dict[str, object]:
        with contextlib.suppress(OSError, ValueError):
            data = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            holder = json.loads(data) if data else {}
            if isinstance(holder, dict):
                return holder
        return {}

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None
