"""Byte-level emulator of the open stepper syringe pump's firmware.

Bytes from the host go in (``feed``), reply bytes come out, exactly as the firmware would
produce them over its serial line; the plunger itself is a ``PumpMechanics`` object. Serial
faults (garbage, dropped and late replies) are injected on the reply path, where the bench
sees them. Time is always passed in (seconds, simulation time).

Firmware behaviour (documented in ``hardware/open_syringe_pump_protocol.md``):

* blank lines are ignored; any other bad line gets an ``ER`` reply (never silence), with
  SEQ ``-`` when the frame could not be trusted (checksum, framing, over-long line);
* noise glued in front of a frame is skipped (the frame starts at the last ``>``);
* a request equal to the previous one (same SEQ and bytes) within ``dedupe_window_s`` is not
  executed again: the previous reply is repeated. This makes host retries safe for every
  command, including a RUN whose run already ended at its volume limit;
* optional link watchdog: with ``watchdog_s`` set, a running pump is stopped when no valid
  request arrived for that long (flag ``WDOG`` until the next RUN). Off by default here so
  mocks that do not poll keep running; the protocol document recommends it on in firmware.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pump_rig.core.pump_types import Direction, PumpRunState
from pump_rig.core.serial_faults import (
    SERIAL_BYTE_FAULTS,
    EmulatesSerialFaults,
    ReplyFaults,
    SerialFaultConfig,
)
from pump_rig.core.stepper_protocol import (
    FLAG_EMPTY,
    FLAG_LIMIT,
    FLAG_PRESSURE_FAULT,
    FLAG_WATCHDOG,
    MAX_REQUEST_CHARS,
    REQUEST_START,
    AckReply,
    Command,
    DeviceIdentity,
    DeviceState,
    DeviceStatus,
    ErrorCode,
    ErrorReply,
    GetStatus,
    Identify,
    IdentityReply,
    ProtocolError,
    Reply,
    Request,
    Run,
    SetDiameter,
    SetDirection,
    SetRate,
    SetVolumeLimit,
    StatusReply,
    Stop,
    decode_request,
    encode_reply,
    sanitize_message,
    trim_to_frame_start,
)


class PumpSnapshotLike(Protocol):
    """The part of a pump snapshot the firmware reports."""

    @property
    def state(self) -> PumpRunState: ...
    @property
    def direction(self) -> Direction: ...
    @property
    def rate_ul_per_h(self) -> float: ...
    @property
    def flow_ul_per_h(self) -> float: ...
    @property
    def delivered_ul(self) -> float: ...
    @property
    def remaining_ul(self) -> float: ...
    @property
    def steps(self) -> int: ...
    @property
    def inner_diameter_mm(self) -> float: ...
    @property
    def volume_limit_ul(self) -> float: ...
    @property
    def limit_reached(self) -> bool: ...


class PumpMechanics(Protocol):
    """The plunger the firmware drives (``core.syringe_pump.SyringePump`` satisfies it)."""

    def set_diameter(self, t_s: float, inner_diameter_mm: float) -> None: ...
    def set_rate(self, t_s: float, rate_ul_per_h: float) -> None: ...
    def set_direction(self, t_s: float, direction: Direction) -> None: ...
    def set_volume_limit(self, t_s: float, volume_ul: float) -> None: ...
    def start(self, t_s: float) -> None: ...
    def stop(self, t_s: float) -> None: ...
    def snapshot(self, t_s: float) -> PumpSnapshotLike: ...


PressureSource = Callable[[float], float | None]

DEFAULT_IDENTITY = DeviceIdentity(model="OSP-1", firmware="1.0.0", serial="OSP-EMU-0001")


_STATE_BY_RUN_STATE = {
    PumpRunState.IDLE: DeviceState.IDLE,
    PumpRunState.RUNNING: DeviceState.RUNNING,
    PumpRunState.STALLED: DeviceState.STALLED,
}


@dataclass(frozen=True)
class _LastRequest:
    seq: int
    body: bytes  # the request bytes before '*', i.e. what the CRC covers
    reply: bytes
    t_s: float


class StepperEmulator(EmulatesSerialFaults):
    """The open syringe pump's firmware, one serial line, bytes in and bytes out."""

    def __init__(
        self,
        pump: PumpMechanics,
        *,
        pressure_source: PressureSource | None = None,
        identity: DeviceIdentity = DEFAULT_IDENTITY,
        seed: int = 0,
        fault_config: SerialFaultConfig | None = None,
        watchdog_s: float | None = None,
        dedupe_window_s: float = 2.0,
    ) -> None:
        if watchdog_s is not None and not (math.isfinite(watchdog_s) and watchdog_s > 0.0):
            raise ValueError(f"watchdog_s must be None or a positive number, got {watchdog_s!r}")
        if not (math.isfinite(dedupe_window_s) and dedupe_window_s >= 0.0):
            raise ValueError(f"dedupe_window_s must be >= 0, got {dedupe_window_s!r}")
        self._pump = pump
        self._pressure_source = pressure_source
        self._identity = identity
        self._faults = ReplyFaults(terminator=b"\n", seed=seed, config=fault_config)
        self._watchdog_s = watchdog_s
        self._dedupe_window_s = dedupe_window_s
        self._rx = bytearray()
        self._discarding = False  # inside an over-long line: drop bytes until its "\n"
        self._last: _LastRequest | None = None
        self._last_valid_rx_s: float | None = None  # None: watchdog not armed
        self._watchdog_tripped = False

    # ---- host side --------------------------------------------------------------------------
    def feed(self, data: bytes, t_s: float) -> bytes:
        """Take bytes from the host; return the bytes to send back now."""
        self._check_watchdog(t_s)
        out = bytearray()
        self._rx.extend(data)
        while True:
            newline = self._rx.find(b"\n")
            if newline < 0:
                # A request is at most MAX_REQUEST_CHARS plus "\r": more is an overflow.
                if len(self._rx) > MAX_REQUEST_CHARS + 1:
                    if not self._discarding:
                        message = f"line longer than {MAX_REQUEST_CHARS} chars discarded"
                        out += self._transmit(self._error(None, ErrorCode.TOO_LONG, message), t_s)
                    self._discarding = True
                    self._rx.clear()
                break
            line = bytes(self._rx[:newline])
            del self._rx[: newline + 1]
            if self._discarding:
                self._discarding = False  # the tail of an over-long line
                continue
            reply = self._handle_line(line, t_s)
            if reply is not None:
                out += self._transmit(reply, t_s)
        out += self._pop_due(t_s)
        return bytes(out)

    def due_output(self, t_s: float) -> bytes:
        """Delayed replies now due; also runs the link watchdog. Call every few ms."""
        self._check_watchdog(t_s)
        return self._pop_due(t_s)

    def reset_link(self) -> None:
        """The host (re)connected: drop the partial line and replies still in flight."""
        self._rx.clear()
        self._discarding = False
        self._faults.reset()

    # ---- faults -----------------------------------------------------------------------------
    @property
    def watchdog_tripped(self) -> bool:
        return self._watchdog_tripped

    # ---- firmware ---------------------------------------------------------------------------
    def _handle_line(self, line: bytes, t_s: float) -> bytes | None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip(b" \t\r"):
            return None  # blank line: terminal habit / keep-alive, not an error
        line = trim_to_frame_start(line, REQUEST_START)
        try:
            request = decode_request(line)
        except ProtocolError as exc:
            return self._error(exc.seq, exc.code, str(exc))
        self._last_valid_rx_s = t_s
        body = line.partition(b"*")[0]
        last = self._last
        if (
            last is not None
            and last.seq == request.seq
            and last.body == body
            and t_s - last.t_s <= self._dedupe_window_s
        ):
            return last.reply  # a host retry: answer again, do not act twice
        reply = self._encode(self._execute(request, t_s))
        self._last = _LastRequest(request.seq, body, reply, t_s)
        return reply

    def _execute(self, request: Request, t_s: float) -> Reply:
        seq = request.seq
        pump = self._pump
        match request:
            case Identify():
                return IdentityReply(seq, self._identity)
            case GetStatus():
                try:
                    return StatusReply(seq, self._status(t_s))
                except ValueError as exc:  # e.g. a non-finite number from the mechanics
                    return _reject(seq, ErrorCode.INTERNAL, f"cannot report status: {exc}")
            case SetDiameter(inner_diameter_mm=diameter_mm):
                if pump.snapshot(t_s).state is not PumpRunState.IDLE:
                    return _reject(
                        seq, ErrorCode.BUSY, "cannot change the syringe diameter while running"
                    )
                try:
                    pump.set_diameter(t_s, diameter_mm)
                except ValueError as exc:
                    return _reject(seq, ErrorCode.OUT_OF_RANGE, str(exc))
                applied: float = pump.snapshot(t_s).inner_diameter_mm
                return AckReply(seq, Command.SET_DIAMETER, applied)
            case SetRate(rate_ul_per_h=rate_ul_per_h):
                try:
                    pump.set_rate(t_s, rate_ul_per_h)
                except ValueError as exc:
                    return _reject(seq, ErrorCode.OUT_OF_RANGE, str(exc))
                return AckReply(seq, Command.SET_RATE, pump.snapshot(t_s).rate_ul_per_h)
            case SetDirection(direction=direction):
                snap = pump.snapshot(t_s)
                if snap.state is not PumpRunState.IDLE:
                    if snap.direction is direction:
                        return AckReply(seq, Command.SET_DIRECTION, direction)  # idempotent
                    return _reject(seq, ErrorCode.BUSY, "cannot change the direction while running")
                try:
                    pump.set_direction(t_s, direction)
                except ValueError as exc:
                    return _reject(seq, ErrorCode.OUT_OF_RANGE, str(exc))
                return AckReply(seq, Command.SET_DIRECTION, pump.snapshot(t_s).direction)
            case SetVolumeLimit(volume_ul=volume_ul):
                try:
                    pump.set_volume_limit(t_s, volume_ul)
                except ValueError as exc:
                    return _reject(seq, ErrorCode.OUT_OF_RANGE, str(exc))
                limit_ul: float = pump.snapshot(t_s).volume_limit_ul
                return AckReply(seq, Command.SET_VOLUME_LIMIT, limit_ul)
            case Run():
                if pump.snapshot(t_s).state is PumpRunState.IDLE:
                    try:
                        pump.start(t_s)
                    except ValueError as exc:
                        return _reject(seq, ErrorCode.REFUSED, str(exc))
                self._watchdog_tripped = False
                return AckReply(seq, Command.RUN)
            case Stop():
                if pump.snapshot(t_s).state is not PumpRunState.IDLE:
                    pump.stop(t_s)
                return AckReply(seq, Command.STOP)

    def _status(self, t_s: float) -> DeviceStatus:
        snap = self._pump.snapshot(t_s)
        flags: set[str] = set()
        if snap.limit_reached:
            flags.add(FLAG_LIMIT)
        if snap.remaining_ul <= 0.0:
            flags.add(FLAG_EMPTY)
        if self._watchdog_tripped:
            flags.add(FLAG_WATCHDOG)
        pressure_kpa = None if self._pressure_source is None else self._pressure_source(t_s)
        if pressure_kpa is not None and not math.isfinite(pressure_kpa):
            pressure_kpa = None  # the wire carries finite numbers only: say "invalid" instead
            flags.add(FLAG_PRESSURE_FAULT)
        return DeviceStatus(
            state=_STATE_BY_RUN_STATE[snap.state],
            direction=snap.direction,
            rate_ul_per_h=snap.rate_ul_per_h,
            delivered_ul=snap.delivered_ul,
            remaining_ul=snap.remaining_ul,
            steps=snap.steps,
            pressure_kpa=pressure_kpa,
            limit_reached=snap.limit_reached,
            flags=frozenset(flags),
            flow_ul_per_h=snap.flow_ul_per_h,
            inner_diameter_mm=snap.inner_diameter_mm,
            volume_limit_ul=snap.volume_limit_ul,
        )

    def _encode(self, reply: Reply) -> bytes:
        try:
            return encode_reply(reply)
        except ValueError as exc:  # e.g. a number the wire cannot carry
            return self._error(reply.seq, ErrorCode.INTERNAL, f"cannot encode reply: {exc}")

    def _error(self, seq: int | None, code: ErrorCode, message: str) -> bytes:
        return encode_reply(ErrorReply(seq, code, sanitize_message(message)))

    def _check_watchdog(self, t_s: float) -> None:
        if self._watchdog_s is None or self._last_valid_rx_s is None:
            return
        if t_s - self._last_valid_rx_s <= self._watchdog_s:
            return
        self._last_valid_rx_s = None  # disarmed until the next valid request
        if self._pump.snapshot(t_s).state is not PumpRunState.IDLE:
            self._pump.stop(t_s)
            self._watchdog_tripped = True

    # ---- reply path with faults -------------------------------------------------------------
    def _transmit(self, frame: bytes, t_s: float) -> bytes:
        return self._faults.transmit(frame, t_s)

    def _pop_due(self, t_s: float) -> bytes:
        return self._faults.due(t_s)


def _reject(seq: int, code: ErrorCode, message: str) -> ErrorReply:
    return ErrorReply(seq, code, sanitize_message(message))


__all__ = [
    "DEFAULT_IDENTITY",
    "SERIAL_BYTE_FAULTS",
    "PressureSource",
    "PumpMechanics",
    "PumpSnapshotLike",
    "SerialFaultConfig",
    "StepperEmulator",
]
