"""Driver for the open stepper syringe pump (protocol in hardware/open_syringe_pump_protocol.md).

Every call is one request with a fresh sequence number. A reply that is missing, late or
corrupted is retried up to ``retries`` times with the *same* frame: the firmware repeats its
previous reply for a repeated (SEQ, request) instead of acting twice, and set-points are
absolute, so a retry can never double a RUN or a dose. Only a well-formed reply carrying the
request's SEQ and command is taken; anything else (stale replies to earlier requests, junk,
frames failing their CRC) is skipped. A status is therefore never built from a corrupted or
stale frame: the caller gets the device's answer or a typed ``DeviceError``.

Note: a timeout does not mean "not executed" -- the request may have been carried out with
its reply lost. Callers re-read ``status()`` rather than assume either way.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable

from pump_rig.core.pump_device import (
    DeviceAlarmKind,
    DeviceDisconnected,
    DeviceError,
    DeviceProtocolError,
    DeviceRejected,
    DeviceTimeout,
    LinkStats,
    PumpIdentity,
    PumpStatus,
)
from pump_rig.core.pump_types import Direction
from pump_rig.core.stepper_protocol import (
    FLAG_WATCHDOG,
    REPLY_START,
    SEQ_MODULUS,
    UNSEQUENCED_ERRORS,
    AckReply,
    Command,
    DeviceIdentity,
    DeviceState,
    DeviceStatus,
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
    decode_reply,
    encode_request,
    next_seq,
    reply_command,
    trim_to_frame_start,
)
from pump_rig.core.syringe_pump import DEFAULT_MECHANICS, MechanicsSpec
from pump_rig.drivers.serial_link import DEFAULT_BAUD, DEFAULT_TIMEOUT_S, SerialLink

BACKEND = "stepper"

DEFAULT_RETRIES = 2


class _Retransmit(Exception):  # noqa: N818 - internal control flow, not an error
    """The device says it received a corrupted request: send ours again now."""


class StepperPumpDriver:
    """Talks to one open stepper syringe pump over a ``SerialLink``. Thread-safe."""

    def __init__(
        self,
        link: SerialLink,
        *,
        retries: int = DEFAULT_RETRIES,
        first_seq: int | None = None,
        mechanics: MechanicsSpec = DEFAULT_MECHANICS,
    ) -> None:
        """``mechanics``: the pump's drive train, for the volume of one microstep (the
        device's resolution); the firmware does not report it."""
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        self._link = link
        self._mechanics = mechanics
        self._retries = retries
        # A random start keeps a restarted host from repeating the previous session's SEQ,
        # which the firmware would take for a retry of the same request.
        if first_seq is not None and not (
            isinstance(first_seq, int) and 0 <= first_seq < SEQ_MODULUS
        ):
            raise ValueError(f"first_seq must be in 0..{SEQ_MODULUS - 1}, got {first_seq!r}")
        self._next_seq = random.randrange(SEQ_MODULUS) if first_seq is None else first_seq
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        port: str,
        *,
        baud: int = DEFAULT_BAUD,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        first_seq: int | None = None,
        mechanics: MechanicsSpec = DEFAULT_MECHANICS,
    ) -> StepperPumpDriver:
        return cls(
            SerialLink.open(port, baud=baud, timeout_s=timeout_s),
            retries=retries,
            first_seq=first_seq,
            mechanics=mechanics,
        )

    # ---- the seam (core.pump_device.PumpDevice) ----------------------------------------------
    def identify(self) -> PumpIdentity:
        identity = self.read_identity()
        return PumpIdentity(
            backend=BACKEND,
            model=identity.model,
            firmware=identity.firmware,
            serial=identity.serial,
        )

    def configure_syringe(self, inner_diameter_mm: float) -> float:
        """Set the syringe inner diameter; returns the value the device applied."""
        return self._set_value(lambda seq: SetDiameter(seq, inner_diameter_mm))

    def status(self) -> PumpStatus:
        return pump_status(self.read_status(), self._mechanics)

    def clear_alarm(self) -> None:
        """A stall or watchdog stop ends with the next command: a STP leaves the pump IDLE."""
        self.stop()

    def set_rate(self, rate_ul_per_h: float) -> float:
        """Set the pumping rate (allowed while running); returns the applied rate."""
        return self._set_value(lambda seq: SetRate(seq, rate_ul_per_h))

    def set_direction(self, direction: Direction) -> Direction:
        reply = self._call(lambda seq: SetDirection(seq, direction))
        if not (isinstance(reply, AckReply) and isinstance(reply.value, Direction)):
            raise _unexpected(reply)
        return reply.value

    def set_volume_limit(self, volume_ul: float) -> float:
        """Stop after ``volume_ul`` from the next start (0 = no limit); returns the applied."""
        return self._set_value(lambda seq: SetVolumeLimit(seq, volume_ul))

    def start(self) -> None:
        self._call(Run)

    def stop(self) -> None:
        self._call(Stop)

    # ---- the firmware's own view -------------------------------------------------------------
    def read_identity(self) -> DeviceIdentity:
        reply = self._call(Identify)
        if not isinstance(reply, IdentityReply):
            raise _unexpected(reply)
        return reply.identity

    def read_status(self) -> DeviceStatus:
        """The full STA reply (steps, flags, flow...), beyond what the seam carries."""
        reply = self._call(GetStatus)
        if not isinstance(reply, StatusReply):
            raise _unexpected(reply)
        return reply.status

    # ---- link ---------------------------------------------------------------------------------
    @property
    def port(self) -> str:
        return self._link.port

    @property
    def stats(self) -> LinkStats:
        return self._link.stats

    def reconnect(self) -> None:
        """Reopen the same port path (after a replug); ``DeviceDisconnected`` if still gone."""
        with self._lock:
            self._link.reopen()

    def close(self) -> None:
        with self._lock:
            self._link.close()

    # ---- internals ----------------------------------------------------------------------------
    def _set_value(self, make: Callable[[int], Request]) -> float:
        reply = self._call(make)
        if not (isinstance(reply, AckReply) and isinstance(reply.value, float)):
            raise _unexpected(reply)
        return reply.value

    def _call(self, make: Callable[[int], Request]) -> Reply:
        with self._lock:
            seq, self._next_seq = self._next_seq, next_seq(self._next_seq)
            request = make(seq)  # ValueError here for a bad argument: nothing sent
            frame = encode_request(request)
            corrupted_before = self._link.stats.protocol_errors
            attempts = self._retries + 1

            def accept(line: bytes) -> bool:
                return _is_reply_to(line, request.seq, request.command)

            for _attempt in range(attempts):
                try:
                    line = self._link.transact(frame, accept=accept)
                except DeviceTimeout:
                    continue
                except _Retransmit:
                    continue
                reply = decode_reply(trim_to_frame_start(line, REPLY_START))
                if isinstance(reply, ErrorReply):
                    raise DeviceRejected(
                        int(reply.code), reply.message, command=str(request.command)
                    )
                return reply
            corrupted = self._link.stats.protocol_errors - corrupted_before
            what = f"{request.command} to {self._link.port}"
            if corrupted:
                raise DeviceProtocolError(
                    f"no valid reply to {what} after {attempts} attempts "
                    f"({corrupted} corrupted line(s) received)"
                )
            raise DeviceTimeout(
                f"no reply to {what} after {attempts} attempts of "
                f"{self._link.timeout_s * 1000:.0f} ms"
            )


def pump_status(status: DeviceStatus, mechanics: MechanicsSpec) -> PumpStatus:
    """The firmware's STA reply as the seam's ``PumpStatus``."""
    alarm: DeviceAlarmKind | None = None
    detail = ""
    if status.state is DeviceState.STALLED:
        alarm, detail = DeviceAlarmKind.STALLED, "plunger stalled while driven"
    elif status.state is DeviceState.FAULT:
        alarm, detail = DeviceAlarmKind.OTHER, "firmware stopped the motor (end of travel)"
    elif FLAG_WATCHDOG in status.flags:
        alarm, detail = DeviceAlarmKind.COMM_TIMEOUT, "the link watchdog stopped the pump"
    resolution_ul = 0.0
    if status.inner_diameter_mm is not None:
        area_mm2 = math.pi * status.inner_diameter_mm**2 / 4.0
        resolution_ul = area_mm2 * mechanics.mm_per_step  # 1 mm^3 = 1 µL
    return PumpStatus(
        state=status.state,
        direction=status.direction,
        rate_ul_per_h=status.rate_ul_per_h,
        delivered_ul=status.delivered_ul,
        remaining_ul=status.remaining_ul,
        pressure_kpa=status.pressure_kpa,
        limit_reached=status.limit_reached,
        alarm=alarm,
        detail=detail,
        resolution_ul=resolution_ul,
    )


def _unexpected(reply: Reply) -> DeviceProtocolError:
    # Unreachable while _is_reply_to matches commands; kept so a bug cannot pass silently.
    return DeviceProtocolError(f"unexpected reply {reply!r}")


def _is_reply_to(line: bytes, seq: int, command: Command) -> bool:
    """Is ``line`` the answer to request ``seq`` (``command``)? Corrupted -> protocol error."""
    try:
        reply = decode_reply(trim_to_frame_start(line, REPLY_START))
    except ProtocolError as exc:
        raise DeviceProtocolError(str(exc)) from exc
    if reply.seq is None:
        if isinstance(reply, ErrorReply) and reply.code in UNSEQUENCED_ERRORS:
            raise _Retransmit(reply.message)
        return False
    if reply.seq != seq:
        return False  # late reply to an earlier request
    if isinstance(reply, ErrorReply):
        return True
    # Same SEQ, other command: a reply from an earlier session, not ours.
    return reply_command(reply) is command


__all__ = [
    "DeviceDisconnected",
    "DeviceError",
    "DeviceIdentity",
    "DeviceProtocolError",
    "DeviceRejected",
    "DeviceState",
    "DeviceStatus",
    "DeviceTimeout",
    "StepperPumpDriver",
]
