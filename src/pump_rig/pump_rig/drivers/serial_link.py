"""Line-oriented request/reply transport over pyserial.

One request line out, reply lines in until one is accepted. Lines the caller's ``accept``
refuses (stale replies) or marks as corrupted are skipped and counted, so a late or garbled
line is never taken as the answer. OS-level failures (port vanished: EIO, SerialException)
become ``DeviceDisconnected``; the link then stays closed until ``reopen()``.

Timeouts here are real (wall-clock, ``time.monotonic``) time: they bound waiting on an OS
device, unlike the simulation time the core works in.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import serial

from pump_rig.core.pump_device import (
    DeviceDisconnected,
    DeviceProtocolError,
    DeviceTimeout,
    LinkStats,
)

DEFAULT_BAUD = 115200
DEFAULT_TIMEOUT_S = 0.2
MAX_LINE_BYTES = 1024
_READ_SLICE_S = 0.01  # pyserial read timeout per call; the deadline is checked between calls


Accept = Callable[[bytes], bool]


class SerialLink:
    """A serial port carrying one-line requests and one-line replies."""

    def __init__(
        self,
        port: str,
        *,
        baud: int = DEFAULT_BAUD,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        exclusive: bool = True,
    ) -> None:
        """Prefer ``SerialLink.open``; this constructor opens the port too."""
        _check_timeout(timeout_s)
        self._port = port
        self._baud = baud
        self._timeout_s = timeout_s
        self._exclusive = exclusive
        self._serial: Any = None
        self._rx = bytearray()
        self._discarding = False
        self._requests = 0
        self._replies = 0
        self._timeouts = 0
        self._protocol_errors = 0
        self._discarded = 0
        self._last_rtt_s: float | None = None
        self._rtt_sum_s = 0.0
        self._connect()

    @classmethod
    def open(
        cls,
        port: str,
        *,
        baud: int = DEFAULT_BAUD,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        exclusive: bool = True,
    ) -> SerialLink:
        """Open ``port`` (8N1). Missing port -> ``DeviceDisconnected`` saying so."""
        return cls(port, baud=baud, timeout_s=timeout_s, exclusive=exclusive)

    # ---- properties -------------------------------------------------------------------------
    @property
    def port(self) -> str:
        return self._port

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    @property
    def stats(self) -> LinkStats:
        return LinkStats(
            requests=self._requests,
            replies=self._replies,
            timeouts=self._timeouts,
            protocol_errors=self._protocol_errors,
            discarded_lines=self._discarded,
            last_rtt_s=self._last_rtt_s,
            mean_rtt_s=self._rtt_sum_s / self._replies if self._replies else None,
        )

    # ---- transactions -----------------------------------------------------------------------
    def transact(
        self,
        request: bytes,
        *,
        timeout_s: float | None = None,
        accept: Accept | None = None,
    ) -> bytes:
        """Write ``request``; return the first reply line ``accept`` takes (terminator removed).

        ``accept(line)`` returns True for the awaited reply, False for a valid line that is
        not it (counted as discarded), or raises ``DeviceProtocolError`` for a corrupted line
        (counted as a protocol error). Without ``accept`` the first non-empty line is taken.
        No accepted line before ``timeout_s`` (default: the link's) -> ``DeviceTimeout``.
        """
        timeout = self._timeout_s if timeout_s is None else timeout_s
        _check_timeout(timeout)
        started = time.monotonic()
        deadline = started + timeout
        self.write(request)
        self._requests += 1
        while True:
            line = self._read_line(deadline)
            if line is None:
                self._timeouts += 1
                raise DeviceTimeout(
                    f"no reply from {self._port} within {timeout * 1000:.0f} ms "
                    f"to {_summary(request)}"
                )
            if accept is not None:
                try:
                    accepted = accept(line)
                except DeviceProtocolError:
                    self._protocol_errors += 1
                    continue
                if not accepted:
                    self._discarded += 1
                    continue
            rtt_s = time.monotonic() - started
            self._replies += 1
            self._last_rtt_s = rtt_s
            self._rtt_sum_s += rtt_s
            return line

    def write(self, data: bytes) -> None:
        port = self._require_open()
        try:
            port.write(data)
        except serial.SerialTimeoutException as exc:
            raise DeviceTimeout(f"write to {self._port} timed out: {exc}") from exc
        except (serial.SerialException, OSError) as exc:
            self._lost(exc)

    def read_line(self, *, timeout_s: float | None = None) -> bytes:
        """The next non-empty line (terminator removed) or ``DeviceTimeout``."""
        timeout = self._timeout_s if timeout_s is None else timeout_s
        _check_timeout(timeout)
        line = self._read_line(time.monotonic() + timeout)
        if line is None:
            raise DeviceTimeout(f"no line from {self._port} within {timeout * 1000:.0f} ms")
        return line

    def reset_input(self) -> None:
        """Forget everything received so far (OS buffer and partial line)."""
        port = self._require_open()
        self._rx.clear()
        self._discarding = False
        try:
            port.reset_input_buffer()
        except (serial.SerialException, OSError) as exc:
            self._lost(exc)

    # ---- lifecycle ----------------------------------------------------------------------------
    def reopen(self) -> None:
        """Close and open the same port path again (e.g. after a replug)."""
        self.close()
        self._connect()

    def close(self) -> None:
        port, self._serial = self._serial, None
        self._rx.clear()
        self._discarding = False
        if port is not None:
            # Closing a vanished port may fail; it is closed either way.
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()

    def __enter__(self) -> SerialLink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- internals ----------------------------------------------------------------------------
    def _connect(self) -> None:
        if not Path(self._port).exists():
            raise DeviceDisconnected(
                f"serial port {self._port} not found (device unplugged or powered off, or "
                f"wrong path? see /dev/serial/by-id/)"
            )
        try:
            port = serial.Serial(
                self._port,
                baudrate=self._baud,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                timeout=_READ_SLICE_S,
                write_timeout=self._timeout_s,
                exclusive=self._exclusive,
            )
        except (serial.SerialException, OSError) as exc:
            hint = " (is the user in the dialout group?)" if "ermission" in str(exc) else ""
            raise DeviceDisconnected(f"cannot open serial port {self._port}: {exc}{hint}") from exc
        self._serial = port
        self._rx.clear()
        self._discarding = False
        try:
            port.reset_input_buffer()  # bytes from before we opened answer nobody
        except (serial.SerialException, OSError) as exc:
            self._lost(exc)

    def _require_open(self) -> Any:
        if self._serial is None:
            raise DeviceDisconnected(f"serial port {self._port} is not open (call reopen())")
        return self._serial

    def _lost(self, exc: BaseException) -> NoReturn:
        self.close()
        raise DeviceDisconnected(f"serial port {self._port} disconnected: {exc}") from exc

    def _read_line(self, deadline: float) -> bytes | None:
        while True:
            line = self._pop_line()
            if line is not None:
                return line
            if time.monotonic() >= deadline:
                return None
            self._rx += self._read_chunk()
            if b"\n" not in self._rx and len(self._rx) > MAX_LINE_BYTES:
                # No device line is this long: drop it up to its terminator.
                self._protocol_errors += 1
                self._rx.clear()
                self._discarding = True

    def _pop_line(self) -> bytes | None:
        while True:
            newline = self._rx.find(b"\n")
            if newline < 0:
                return None
            line = bytes(self._rx[:newline]).rstrip(b"\r")
            del self._rx[: newline + 1]
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > MAX_LINE_BYTES:
                self._protocol_errors += 1
                continue
            if line.strip():
                return line  # empty lines are line noise, not replies

    def _read_chunk(self) -> bytes:
        port = self._require_open()
        try:
            waiting = port.in_waiting
            data: bytes = port.read(max(1, waiting))
        except (serial.SerialException, OSError) as exc:
            self._lost(exc)
        return data


def _check_timeout(timeout_s: float) -> None:
    if not (math.isfinite(timeout_s) and timeout_s > 0.0):
        raise ValueError(f"timeout_s must be a positive finite number, got {timeout_s!r}")


def _summary(request: bytes) -> str:
    text = request.strip().decode("ascii", errors="replace")
    return repr(text if len(text) <= 40 else text[:37] + "...")
