"""Host a byte-level device emulator on a pseudo-terminal, so clients use real pyserial.

The client opens ``port`` (the pty's slave side, or a stable symlink to it) exactly like a
USB serial adapter. A daemon thread reads the master side, feeds the emulator and writes its
replies; it also polls ``due_output`` every ``poll_interval_s`` for delayed replies and the
firmware watchdog. ``unplug()`` makes the port vanish (clients get I/O errors, the symlink
disappears); ``replug()`` brings up a new pty and re-points the symlink, like re-plugging a
USB device that comes back under a new /dev node.

``clock`` (seconds, simulation time) is read while ``lock`` is held, so times reach the pump
in order with other users of the lock; the clock therefore must not take ``lock`` itself.

All file-descriptor work happens on the I/O thread once it runs, so an unplug cannot close a
descriptor under a pending read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import threading
import tty
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Protocol

from pump_rig.core.faults import FaultKind
from pump_rig.core.rig_files import LockHeldError, OwnerLock

_LOG = logging.getLogger(__name__)
_READ_CHUNK = 4096
_ACTION_TIMEOUT_S = 2.0


class ByteDevice(Protocol):
    """An emulator speaking bytes; ``StepperEmulator`` and ``NE1000Emulator`` are two."""

    def feed(self, data: bytes, t_s: float) -> bytes: ...
    def due_output(self, t_s: float) -> bytes: ...
    def set_fault(self, kind: FaultKind, active: bool) -> None: ...
    def clear_faults(self) -> None: ...
    def reset_link(self) -> None:
        """The host (re)connected: forget partial input and replies still in flight."""
        ...


class ByteDeviceTap:
    """A ``ByteDevice`` in front of another, seeing the bytes both ways: requests through
    ``inbound`` on their way in, replies through ``outbound`` on their way out. Faults and
    link resets go straight to the device behind it."""

    def __init__(self, inner: ByteDevice) -> None:
        self.inner = inner

    def inbound(self, data: bytes, t_s: float) -> bytes:
        return data

    def outbound(self, out: bytes, t_s: float) -> bytes:
        return out

    def feed(self, data: bytes, t_s: float) -> bytes:
        return self.outbound(self.inner.feed(self.inbound(data, t_s), t_s), t_s)

    def due_output(self, t_s: float) -> bytes:
        return self.outbound(self.inner.due_output(t_s), t_s)

    def set_fault(self, kind: FaultKind, active: bool) -> None:
        self.inner.set_fault(kind, active)

    def clear_faults(self) -> None:
        self.inner.clear_faults()

    def reset_link(self) -> None:
        self.inner.reset_link()


class PtySerialDevice:
    """A device emulator exposed as a serial port on a pseudo-terminal."""

    def __init__(
        self,
        emulator: ByteDevice,
        clock: Callable[[], float],
        *,
        lock: threading.Lock | None = None,
        link_path: Path | None = None,
        link_owner: Mapping[str, object] | None = None,
        poll_interval_s: float = 0.005,
    ) -> None:
        if not poll_interval_s > 0.0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s!r}")
        # The link is this device's while it lives: another emulator (another rig) asking for
        # the same path is refused instead of re-pointing a running rig's port at itself.
        self._link_lock: OwnerLock | None = None
        if link_path is not None:
            try:
                self._link_lock = OwnerLock.acquire(link_path, f"port link {link_path}", link_owner)
            except LockHeldError as exc:
                raise ValueError(str(exc)) from None
        self._emulator = emulator
        self._clock = clock
        self._lock = lock if lock is not None else threading.Lock()
        self._link_path = link_path
        self._poll_interval_s = poll_interval_s
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_path = ""
        self._actions: queue.Queue[tuple[Callable[[], None], _Done]] = queue.Queue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.errors = 0  # emulator exceptions caught on the I/O thread (logged)
        try:
            self._open_pty()
        except BaseException:
            if self._link_lock is not None:
                self._link_lock.release()
            raise

    # ---- public -----------------------------------------------------------------------------
    @property
    def port(self) -> str:
        """What a client opens: the symlink when one was asked for, else the slave device."""
        return str(self._link_path) if self._link_path is not None else self._slave_path

    @property
    def slave_path(self) -> str:
        """The current /dev/pts/N (changes on every replug)."""
        return self._slave_path

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def start(self) -> None:
        if self._closed:
            raise RuntimeError("PtySerialDevice is closed")
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="pty-device", daemon=True)
        self._thread.start()

    def unplug(self) -> None:
        """The port vanishes: master closed, symlink removed; clients see I/O errors."""
        self._in_io_thread(self._do_unplug)

    def replug(self) -> None:
        """A new pty comes up (new /dev/pts/N); the symlink, if any, points to it."""
        if self._closed:
            raise RuntimeError("PtySerialDevice is closed")
        self._in_io_thread(self._do_replug)

    def set_fault(self, kind: FaultKind, active: bool) -> None:
        """UNPLUG is handled here (unplug/replug); serial byte faults go to the emulator."""
        if kind is FaultKind.UNPLUG:
            if active:
                self.unplug()
            else:
                self.replug()
            return
        with self._lock:
            self._emulator.set_fault(kind, active)

    def clear_faults(self) -> None:
        with self._lock:
            self._emulator.clear_faults()
        if not self.plugged and not self._closed:
            self.replug()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=_ACTION_TIMEOUT_S)
            self._thread = None
        self._do_unplug()
        if self._link_lock is not None:
            self._link_lock.release()
            self._link_lock = None

    def __enter__(self) -> PtySerialDevice:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- pty management (I/O thread once started) ---------------------------------------------
    def _open_pty(self) -> None:
        master, slave = os.openpty()
        # Raw: no echo, no CR/NL translation, no line buffering -- bytes pass untouched.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._slave_path = os.ttyname(slave)
        if self._link_path is not None:
            # Atomic re-point: a client never sees a half-made link.
            tmp = self._link_path.with_name(self._link_path.name + ".tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self._slave_path)
            tmp.replace(self._link_path)

    def _do_unplug(self) -> None:
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        if self._link_path is not None:
            self._remove_own_link()

    def _remove_own_link(self) -> None:
        """Remove the link only while it still points at this device's pty: a link something
        else made since (another rig, a user) is not ours to delete."""
        link = self._link_path
        assert link is not None
        with contextlib.suppress(OSError):
            if str(link.readlink()) == self._slave_path:
                link.unlink()

    def _do_replug(self) -> None:
        if self._master is not None:
            return
        self._open_pty()
        with self._lock:
            self._emulator.reset_link()  # a fresh connection: the line buffer starts empty

    def _in_io_thread(self, action: Callable[[], None]) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive():
            action()
            return
        done = _Done()
        self._actions.put((action, done))
        if not done.event.wait(_ACTION_TIMEOUT_S):
            raise RuntimeError("pty I/O thread did not respond")
        if done.error is not None:
            raise done.error

    # ---- I/O thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            self._run_actions()
            master = self._master
            if master is None:
                self._stopping.wait(self._poll_interval_s)
                continue
            data = self._read(master)
            try:
                with self._lock:
                    # Read under the lock: whoever else advances the pump under it sees
                    # ordered times (the pump model refuses time going backwards).
                    now_s = self._clock()
                    if data:
                        out = self._emulator.feed(data, now_s)
                    else:
                        out = self._emulator.due_output(now_s)
            except Exception:
                # A model bug must not silently kill the device thread: log, count, go on.
                self.errors += 1
                _LOG.exception("device emulator raised; reply dropped")
                continue
            if out:
                self._write(master, out)

    def _run_actions(self) -> None:
        while True:
            try:
                action, done = self._actions.get_nowait()
            except queue.Empty:
                return
            try:
                action()
            except Exception as exc:
                done.error = exc
            done.event.set()

    def _read(self, master: int) -> bytes:
        try:
            ready, _, _ = select.select([master], [], [], self._poll_interval_s)
            if ready:
                return os.read(master, _READ_CHUNK)
        except BlockingIOError:
            pass
        except OSError:
            # EIO: no client side open right now; behave like an idle line.
            self._stopping.wait(self._poll_interval_s)
        return b""

    def _write(self, master: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(master, view)
            except BlockingIOError:
                return  # nobody reads the port: bytes are lost, as on a real UART
            except OSError:
                return
            view = view[written:]


class _Done:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.error: Exception | None = None
