"""Request/reply transport over pyserial, for line- or packet-framed protocols.

One request out, reply frames in until one is accepted. Frames the caller's ``accept``
refuses (stale replies) or marks as corrupted are skipped and counted, so a late or garbled
frame is never taken as the answer. OS-level failures (port vanished: EIO, SerialException)
become ``DeviceDisconnected``; the link then stays closed until ``reopen()``.

How received bytes split into frames is the link's ``Framing``:

* ``LineFraming`` (default): ``"\n"``-terminated lines, ``"\r"`` stripped, empty lines
  ignored (the open stepper pump). A frame is the line without its terminator.
* ``StxEtxFraming``: ``STX ... ETX`` packets whose body never holds STX/ETX (New Era Basic
  mode replies). Bytes outside packets and packets cut short by a new STX are skipped.
* ``LengthPrefixedFraming``: ``STX <length> ... <CRC hi> <CRC lo> ETX`` packets (New Era Safe
  mode). Length-aware, because CRC bytes may equal ETX or STX; a packet is only taken when its
  length, ETX and CRC all agree, so a corrupted length byte cannot swallow the frames after
  it.

Packet framings hand over the whole packet, STX to ETX, for the codec to check again.
Skipped bytes count as protocol errors (``LinkStats.protocol_errors``).

Timeouts here are real (wall-clock, ``time.monotonic``) time: they bound waiting on an OS
device, unlike the simulation time the core works in.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, Protocol

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
STX = 0x02
ETX = 0x03
MAX_PACKET_BYTES = 258  # STX + length byte (<= 255 bytes follow it) + slack


# ---- framing ------------------------------------------------------------------------------------


class Deframer(Protocol):
    """Splits a received byte stream into frames. One per link; not thread-safe."""

    def push(self, data: bytes) -> None:
        """Append received bytes."""
        ...

    def pop(self) -> bytes | None:
        """The next complete frame, or None until more bytes arrive."""
        ...

    def take_errors(self) -> int:
        """Junk runs / malformed or over-long frames skipped since the last call."""
        ...

    def reset(self) -> None:
        """Forget everything buffered (partial frame included)."""
        ...


class Framing(Protocol):
    """A way of cutting a byte stream into frames (makes one ``Deframer`` per link)."""

    @property
    def name(self) -> str: ...

    def deframer(self) -> Deframer: ...


class LineFraming:
    """``"\n"``-terminated lines (``"\r"`` stripped, blank lines ignored)."""

    name = "line"

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes

    def deframer(self) -> Deframer:
        return _LineDeframer(self.max_line_bytes)


class _LineDeframer:
    def __init__(self, max_line_bytes: int) -> None:
        self._max = max_line_bytes
        self._rx = bytearray()
        self._discarding = False  # inside an over-long line: drop bytes until its "\n"
        self._errors = 0

    def push(self, data: bytes) -> None:
        self._rx += data
        if b"\n" not in self._rx and len(self._rx) > self._max:
            # No device line is this long: drop it up to its terminator.
            self._errors += 1
            self._rx.clear()
            self._discarding = True

    def pop(self) -> bytes | None:
        while True:
            newline = self._rx.find(b"\n")
            if newline < 0:
                return None
            line = bytes(self._rx[:newline]).rstrip(b"\r")
            del self._rx[: newline + 1]
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > self._max:
                self._errors += 1
                continue
            if line.strip():
                return line  # empty lines are line noise, not replies

    def take_errors(self) -> int:
        errors, self._errors = self._errors, 0
        return errors

    def reset(self) -> None:
        self._rx.clear()
        self._discarding = False


class StxEtxFraming:
    """``STX body ETX`` packets; the body never contains STX or ETX."""

    name = "stx-etx"

    def __init__(self, max_packet_bytes: int = MAX_PACKET_BYTES) -> None:
        self.max_packet_bytes = max_packet_bytes

    def deframer(self) -> Deframer:
        return _StxEtxDeframer(self.max_packet_bytes)


class _PacketDeframer:
    def __init__(self, max_packet_bytes: int) -> None:
        self._max = max_packet_bytes
        self._rx = bytearray()
        self._errors = 0

    def push(self, data: bytes) -> None:
        self._rx += data

    def take_errors(self) -> int:
        errors, self._errors = self._errors, 0
        return errors

    def reset(self) -> None:
        self._rx.clear()

    def _skip_to_stx(self) -> bool:
        """Drop bytes before the first STX (counted once per junk run); False: no STX."""
        start = self._rx.find(STX)
        if start < 0:
            if self._rx:
                self._errors += 1
                self._rx.clear()
            return False
        if start > 0:
            self._errors += 1
            del self._rx[:start]
        return True


class _StxEtxDeframer(_PacketDeframer):
    def pop(self) -> bytes | None:
        while self._skip_to_stx():
            end = self._rx.find(ETX, 1)
            restart = self._rx.find(STX, 1)
            if restart > 0 and (end < 0 or restart < end):
                self._errors += 1  # a packet cut short: a new one starts before its ETX
                del self._rx[:restart]
                continue
            if end < 0:
                if len(self._rx) > self._max:
                    self._errors += 1
                    del self._rx[:1]
                    continue
                return None
            frame = bytes(self._rx[: end + 1])
            del self._rx[: end + 1]
            return frame
        return None


class LengthPrefixedFraming:
    """``STX <length> <data> <CRC hi> <CRC lo> ETX``; ``length`` counts the bytes after STX.

    ``crc(data)`` is the packet checksum (New Era: CRC-16/XMODEM over the data). A packet is
    taken only when its ETX sits where its length says and its CRC matches.
    """

    name = "length-prefixed"
    MIN_LENGTH = 4  # length byte + CRC (2) + ETX: an empty data field

    def __init__(self, crc: Callable[[bytes], int]) -> None:
        self.crc = crc

    def deframer(self) -> Deframer:
        return _LengthDeframer(self.crc)


class _LengthDeframer(_PacketDeframer):
    def __init__(self, crc: Callable[[bytes], int]) -> None:
        super().__init__(MAX_PACKET_BYTES)
        self._crc = crc

    def _valid_at(self, start: int) -> bool | None:
        """Is there a valid packet at ``start``? None: not enough bytes to tell yet."""
        rx = self._rx
        if len(rx) < start + 2:
            return None
        length = rx[start + 1]
        if length < LengthPrefixedFraming.MIN_LENGTH:
            return False
        end = start + length  # index of the ETX
        if len(rx) <= end:
            return None
        if rx[end] != ETX:
            return False
        data = bytes(rx[start + 2 : end - 2])
        return int.from_bytes(rx[end - 2 : end], "big") == self._crc(data)

    def pop(self) -> bytes | None:
        while self._skip_to_stx():
            valid = self._valid_at(0)
            if valid is True:
                end = self._rx[1]
                frame = bytes(self._rx[: end + 1])
                del self._rx[: end + 1]
                return frame
            if valid is False:
                self._errors += 1
                del self._rx[:1]  # not a packet start after all: look for the next STX
                continue
            # Incomplete. Its length byte may be corrupted (too long): a complete, valid
            # packet further on means this one was junk.
            later = self._rx.find(STX, 1)
            while later > 0:
                if self._valid_at(later) is True:
                    self._errors += 1
                    del self._rx[:later]
                    break
                later = self._rx.find(STX, later + 1)
            else:
                return None
        return None


class SerialLink:
    """A serial port carrying one-line requests and one-line replies."""

    def __init__(
        self,
        port: str,
        *,
        baud: int = DEFAULT_BAUD,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        exclusive: bool = True,
        framing: Framing | None = None,
    ) -> None:
        """Prefer ``SerialLink.open``; this constructor opens the port too."""
        _check_timeout(timeout_s)
        self._port = port
        self._baud = baud
        self._timeout_s = timeout_s
        self._exclusive = exclusive
        self._serial: Any = None
        self._framing: Framing = framing if framing is not None else LineFraming()
        self._deframer = self._framing.deframer()
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
        framing: Framing | None = None,
    ) -> SerialLink:
        """Open ``port`` (8N1). Missing port -> ``DeviceDisconnected`` saying so."""
        return cls(port, baud=baud, timeout_s=timeout_s, exclusive=exclusive, framing=framing)

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
    def framing(self) -> Framing:
        return self._framing

    def set_framing(self, framing: Framing) -> None:
        """Cut replies from now on with ``framing`` (bytes buffered so far are dropped)."""
        self._framing = framing
        self._deframer = framing.deframer()

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
            line = self._read_frame(deadline)
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
        """The next non-empty line (terminator removed) or ``DeviceTimeout``; with a packet
        framing, the next packet."""
        timeout = self._timeout_s if timeout_s is None else timeout_s
        _check_timeout(timeout)
        line = self._read_frame(time.monotonic() + timeout)
        if line is None:
            raise DeviceTimeout(f"no line from {self._port} within {timeout * 1000:.0f} ms")
        return line

    def poll_frame(self, timeout_s: float = 0.0) -> bytes | None:
        """The next frame if one arrives within ``timeout_s`` (0: only what is here), else
        None. Nothing is counted: the caller says what the frame was."""
        if not (math.isfinite(timeout_s) and timeout_s >= 0.0):
            raise ValueError(f"timeout_s must be a finite number >= 0, got {timeout_s!r}")
        return self._read_frame(time.monotonic() + timeout_s)

    def count_discarded(self, frames: int = 1) -> None:
        """Count frames the caller took off the link and set aside as not its answer."""
        self._discarded += frames

    def count_protocol_errors(self, frames: int = 1) -> None:
        """Count frames the caller took off the link and found corrupted."""
        self._protocol_errors += frames

    def reset_input(self) -> None:
        """Forget everything received so far (OS buffer and partial line)."""
        port = self._require_open()
        self._deframer.reset()
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
        self._deframer.reset()
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
        self._deframer.reset()
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

    def _read_frame(self, deadline: float) -> bytes | None:
        deframer = self._deframer
        while True:
            frame = deframer.pop()
            self._protocol_errors += deframer.take_errors()
            if frame is not None:
                return frame
            if time.monotonic() >= deadline:
                return None
            deframer.push(self._read_chunk())
            self._protocol_errors += deframer.take_errors()

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
