"""Codec for the open stepper syringe pump's line protocol, version 1.

The wire format is specified in ``hardware/open_syringe_pump_protocol.md``; in short::

    request:  >SEQ CMD [ARG]*CRC\\n          e.g. >7 RAT 120.000000*xxxx
    reply:    <SEQ OK CMD [FIELDS]*CRC\\n    e.g. <7 OK RAT 120.000000*xxxx
              <SEQ ER CODE MESSAGE*CRC\\n    (SEQ is "-" when the request could not be trusted)

CRC is CRC-16/CCITT-FALSE over every byte before ``*``, as four upper-case hex digits.

Decoding is strict: anything that is not exactly a well-formed frame raises ``ProtocolError``
(and nothing else), so a value is either the one the sender encoded or it is not returned.
Encoders raise ``ValueError`` for values the wire cannot carry (non-finite, too large).
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from typing import ClassVar

from pump_rig.core.crc16 import crc16_ccitt_false
from pump_rig.core.pump_device import DeviceState as DeviceState  # re-exported: wire names
from pump_rig.core.pump_types import Direction

PROTOCOL_VERSION = 1
REQUEST_START = b">"
REPLY_START = b"<"
# Longest frame, not counting the "\n" / "\r\n" terminator (the firmware's line buffers).
MAX_REQUEST_CHARS = 96
MAX_REPLY_CHARS = 256
SEQ_MODULUS = 65536
DECIMALS = 6  # 1e-6 µL resolution: months of delivery still keep sub-nL precision
MAX_MESSAGE_CHARS = 120

FLAG_LIMIT = "LIMIT"  # the run ended because the volume limit was reached
FLAG_EMPTY = "EMPTY"  # syringe remaining volume is 0
FLAG_WATCHDOG = "WDOG"  # the link watchdog stopped the pump (cleared by the next RUN)
FLAG_PRESSURE_FAULT = "PFAULT"  # pressure channel fitted but its reading is invalid
KNOWN_FLAGS = frozenset({FLAG_LIMIT, FLAG_EMPTY, FLAG_WATCHDOG, FLAG_PRESSURE_FAULT})


class ErrorCode(enum.IntEnum):
    """Error codes of ``ER`` replies (see the protocol document)."""

    CHECKSUM = 10  # CRC mismatch: the request is ignored, SEQ is "-"
    FRAME = 11  # not a frame (bad start, characters, sequence number...): SEQ is "-"
    TOO_LONG = 12  # line longer than the firmware's buffer: discarded, SEQ is "-"
    UNKNOWN_COMMAND = 20
    BAD_ARGUMENT = 21  # wrong argument count or syntax
    OUT_OF_RANGE = 22  # well-formed but outside what the pump accepts
    BUSY = 23  # not allowed while the pump runs
    REFUSED = 24  # not possible in the current state (e.g. RUN at rate 0)
    INTERNAL = 30  # firmware could not build its reply


# Errors about the frame itself: the request cannot be trusted, so no SEQ is echoed.
UNSEQUENCED_ERRORS = frozenset({ErrorCode.CHECKSUM, ErrorCode.FRAME, ErrorCode.TOO_LONG})


class ProtocolError(Exception):
    """A frame that is not valid protocol; ``code``/``seq`` say how a device should answer."""

    def __init__(
        self, message: str, *, code: ErrorCode = ErrorCode.FRAME, seq: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.seq = seq


class Command(enum.StrEnum):
    IDENTIFY = "ID"
    SET_DIAMETER = "DIA"
    SET_RATE = "RAT"
    SET_DIRECTION = "DIR"
    SET_VOLUME_LIMIT = "VOL"
    RUN = "RUN"
    STOP = "STP"
    STATUS = "STA"


# ---- checksum ---------------------------------------------------------------------------------

# CRC-16/CCITT-FALSE lives in core.crc16 (shared with the New Era codec's XMODEM variant);
# ``crc16_ccitt`` stays importable from here under the name this protocol's document uses.
crc16_ccitt = crc16_ccitt_false


# ---- value types ------------------------------------------------------------------------------


def _check_seq(seq: int) -> None:
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < SEQ_MODULUS:
        raise ValueError(f"sequence number must be an int in 0..{SEQ_MODULUS - 1}, got {seq!r}")


def _check_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_setpoint(name: str, value: float) -> None:
    _check_finite(name, value)
    if value < 0.0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


_TOKEN_RE = re.compile(r"[A-Za-z0-9._+\-]{1,32}")
_FLAG_RE = re.compile(r"[A-Z][A-Z0-9_]{0,15}")


@dataclass(frozen=True)
class DeviceIdentity:
    """What ``ID`` reports. Text fields: 1-32 of ``A-Z a-z 0-9 . _ + -``."""

    model: str
    firmware: str
    serial: str
    protocol: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        for name in ("model", "firmware", "serial"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
                raise ValueError(f"identity {name} must match {_TOKEN_RE.pattern}, got {value!r}")
        if isinstance(self.protocol, bool) or not 0 <= self.protocol <= 999:
            raise ValueError(f"protocol version must be 0..999, got {self.protocol!r}")


@dataclass(frozen=True)
class DeviceStatus:
    """What ``STA`` reports. Volumes µL, rates µL/h, pressure kPa (None = not available).

    ``delivered_ul`` is the device's cumulative net counter (withdrawing counts down).
    ``flags`` holds every flag the device raised (including ones this host does not know);
    ``limit_reached`` and the ``LIMIT`` flag are kept consistent on construction.
    Optional fields are None when a device does not report them.
    """

    state: DeviceState
    direction: Direction
    rate_ul_per_h: float
    delivered_ul: float
    remaining_ul: float
    steps: int
    pressure_kpa: float | None
    limit_reached: bool = False
    flags: frozenset[str] = field(default_factory=frozenset)
    flow_ul_per_h: float | None = None
    inner_diameter_mm: float | None = None
    volume_limit_ul: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", DeviceState(self.state))
        object.__setattr__(self, "direction", Direction(self.direction))
        for name in ("rate_ul_per_h", "delivered_ul", "remaining_ul"):
            _check_finite(name, getattr(self, name))
        for name in ("pressure_kpa", "flow_ul_per_h", "inner_diameter_mm", "volume_limit_ul"):
            value = getattr(self, name)
            if value is not None:
                _check_finite(name, value)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int):
            raise ValueError(f"steps must be an int, got {self.steps!r}")
        flags = frozenset(self.flags)
        for flag in flags:
            if not isinstance(flag, str) or not _FLAG_RE.fullmatch(flag):
                raise ValueError(f"flag must match {_FLAG_RE.pattern}, got {flag!r}")
        # One truth for "limit reached": the flag and the field agree whichever was given.
        limit = bool(self.limit_reached) or FLAG_LIMIT in flags
        object.__setattr__(self, "limit_reached", limit)
        object.__setattr__(self, "flags", flags | {FLAG_LIMIT} if limit else flags)


# ---- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identify:
    command: ClassVar[Command] = Command.IDENTIFY
    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)


@dataclass(frozen=True)
class SetDiameter:
    command: ClassVar[Command] = Command.SET_DIAMETER
    seq: int
    inner_diameter_mm: float

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        _check_setpoint("inner_diameter_mm", self.inner_diameter_mm)


@dataclass(frozen=True)
class SetRate:
    command: ClassVar[Command] = Command.SET_RATE
    seq: int
    rate_ul_per_h: float

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        _check_setpoint("rate_ul_per_h", self.rate_ul_per_h)


@dataclass(frozen=True)
class SetDirection:
    command: ClassVar[Command] = Command.SET_DIRECTION
    seq: int
    direction: Direction

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        object.__setattr__(self, "direction", Direction(self.direction))


@dataclass(frozen=True)
class SetVolumeLimit:
    """0 µL = no limit; the limit counts from the next RUN."""

    command: ClassVar[Command] = Command.SET_VOLUME_LIMIT
    seq: int
    volume_ul: float

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        _check_setpoint("volume_ul", self.volume_ul)


@dataclass(frozen=True)
class Run:
    command: ClassVar[Command] = Command.RUN
    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)


@dataclass(frozen=True)
class Stop:
    command: ClassVar[Command] = Command.STOP
    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)


@dataclass(frozen=True)
class GetStatus:
    command: ClassVar[Command] = Command.STATUS
    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)


Request = Identify | SetDiameter | SetRate | SetDirection | SetVolumeLimit | Run | Stop | GetStatus

_VALUE_COMMANDS = frozenset(
    {Command.SET_DIAMETER, Command.SET_RATE, Command.SET_VOLUME_LIMIT, Command.SET_DIRECTION}
)
_ACK_COMMANDS = _VALUE_COMMANDS | {Command.RUN, Command.STOP}


# ---- replies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentityReply:
    seq: int
    identity: DeviceIdentity

    def __post_init__(self) -> None:
        _check_seq(self.seq)


@dataclass(frozen=True)
class AckReply:
    """Acknowledges a set-point or RUN/STP; set-points echo the value the device applied."""

    seq: int
    command: Command
    value: float | Direction | None = None

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        command = Command(self.command)
        object.__setattr__(self, "command", command)
        if command not in _ACK_COMMANDS:
            raise ValueError(f"{command} is not acknowledged with OK {command} (own reply type)")
        if command is Command.SET_DIRECTION:
            if not isinstance(self.value, Direction):
                raise ValueError(f"DIR ack needs a Direction, got {self.value!r}")
        elif command in _VALUE_COMMANDS:
            if isinstance(self.value, Direction) or self.value is None:
                raise ValueError(f"{command} ack needs a number, got {self.value!r}")
            _check_setpoint(f"{command} value", self.value)
        elif self.value is not None:
            raise ValueError(f"{command} ack carries no value, got {self.value!r}")


@dataclass(frozen=True)
class StatusReply:
    seq: int
    status: DeviceStatus

    def __post_init__(self) -> None:
        _check_seq(self.seq)


@dataclass(frozen=True)
class ErrorReply:
    """``seq`` is None when the device could not trust the request's sequence number."""

    seq: int | None
    code: ErrorCode
    message: str

    def __post_init__(self) -> None:
        if self.seq is not None:
            _check_seq(self.seq)
        object.__setattr__(self, "code", ErrorCode(self.code))
        if not self.message or sanitize_message(self.message) != self.message:
            raise ValueError(
                f"error message must be non-empty sanitized ASCII, got {self.message!r}"
            )


Reply = IdentityReply | AckReply | StatusReply | ErrorReply


def reply_command(reply: Reply) -> Command | None:
    """The command a reply answers (None for error replies, which carry only the SEQ)."""
    if isinstance(reply, IdentityReply):
        return Command.IDENTIFY
    if isinstance(reply, StatusReply):
        return Command.STATUS
    if isinstance(reply, AckReply):
        return reply.command
    return None


def sanitize_message(text: str) -> str:
    """Make ``text`` fit an ER reply: printable ASCII without ``*<>``, single spaces, bounded."""
    text = text.replace("µ", "u")
    chars = [" " if c.isspace() else c if " " <= c <= "~" and c not in "*<>" else "?" for c in text]
    cleaned = " ".join("".join(chars).split())[:MAX_MESSAGE_CHARS].rstrip()
    return cleaned or "error"


def next_seq(seq: int) -> int:
    return (seq + 1) % SEQ_MODULUS


# ---- encoding ---------------------------------------------------------------------------------

_UNSIGNED_RE = re.compile(r"\d{1,10}(?:\.\d{1,9})?")
_SIGNED_RE = re.compile(r"-?\d{1,10}(?:\.\d{1,9})?")
_INT_RE = re.compile(r"-?\d{1,15}")
_SEQ_RE = re.compile(r"0|[1-9]\d{0,4}")
_KEY_RE = re.compile(r"[a-z][a-z0-9_]{0,15}")
_NA = "NA"


def _fmt_number(value: float, *, unsigned: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"cannot encode non-finite number {value!r}")
    if unsigned:
        if value < 0.0:
            raise ValueError(f"cannot encode negative value {value!r} in an unsigned field")
        value = abs(value)  # -0.0 must not print as "-0.000000"
    text = f"{value:.{DECIMALS}f}"
    if not _SIGNED_RE.fullmatch(text):
        raise ValueError(f"number {value!r} is too large for the wire format (< 1e10)")
    return text


def _fmt_optional(value: float | None) -> str:
    return _NA if value is None else _fmt_number(value)


def _frame(body: str, max_chars: int) -> bytes:
    raw = body.encode("ascii")
    framed = raw + b"*" + f"{crc16_ccitt(raw):04X}".encode("ascii")
    if len(framed) > max_chars:
        raise ValueError(f"frame of {len(framed)} chars exceeds the {max_chars}-char limit")
    return framed + b"\n"


def encode_request(request: Request) -> bytes:
    """The frame for ``request``, ``\\n``-terminated."""
    parts = [f">{request.seq}", str(request.command)]
    match request:
        case SetDiameter(inner_diameter_mm=value):
            parts.append(_fmt_number(value, unsigned=True))
        case SetRate(rate_ul_per_h=value):
            parts.append(_fmt_number(value, unsigned=True))
        case SetVolumeLimit(volume_ul=value):
            parts.append(_fmt_number(value, unsigned=True))
        case SetDirection(direction=direction):
            parts.append(direction.value)
        case _:
            pass
    return _frame(" ".join(parts), MAX_REQUEST_CHARS)


def _status_fields(status: DeviceStatus) -> list[str]:
    flags = ",".join(sorted(status.flags)) or "-"
    return [
        f"st={status.state.value}",
        f"dir={status.direction.value}",
        f"rate={_fmt_number(status.rate_ul_per_h)}",
        f"flow={_fmt_optional(status.flow_ul_per_h)}",
        f"dlv={_fmt_number(status.delivered_ul)}",
        f"rem={_fmt_number(status.remaining_ul)}",
        f"steps={status.steps}",
        f"p={_fmt_optional(status.pressure_kpa)}",
        f"dia={_fmt_optional(status.inner_diameter_mm)}",
        f"vlim={_fmt_optional(status.volume_limit_ul)}",
        f"flags={flags}",
    ]


def encode_reply(reply: Reply) -> bytes:
    """The frame for ``reply``, ``\\n``-terminated."""
    seq = "-" if reply.seq is None else str(reply.seq)
    match reply:
        case ErrorReply(code=code, message=message):
            parts = [f"<{seq}", "ER", str(int(code)), message]
        case IdentityReply(identity=ident):
            parts = [f"<{seq}", "OK", str(Command.IDENTIFY)]
            parts += [f"model={ident.model}", f"fw={ident.firmware}", f"sn={ident.serial}"]
            parts.append(f"proto={ident.protocol}")
        case StatusReply(status=status):
            parts = [f"<{seq}", "OK", str(Command.STATUS), *_status_fields(status)]
        case AckReply(command=command, value=value):
            parts = [f"<{seq}", "OK", str(command)]
            if isinstance(value, Direction):
                parts.append(value.value)
            elif value is not None:
                parts.append(_fmt_number(value, unsigned=True))
    return _frame(" ".join(parts), MAX_REPLY_CHARS)


# ---- decoding ---------------------------------------------------------------------------------


def trim_to_frame_start(line: bytes, start: bytes) -> bytes:
    """Drop line noise glued in front of a frame: keep from the last ``start`` byte on.

    Frame bodies never contain ``<`` or ``>``, so the last start byte is the real one.
    """
    index = line.rfind(start)
    return line[index:] if index > 0 else line


def _unframe(line: bytes, start: bytes, max_chars: int) -> str:
    """Check framing and CRC; return the body (start char included, ``*CRC`` excluded)."""
    if not isinstance(line, bytes | bytearray):
        raise ProtocolError(f"a frame must be bytes, got {type(line).__name__}")
    core = bytes(line)
    if core.endswith(b"\r\n"):
        core = core[:-2]
    elif core.endswith(b"\n"):
        core = core[:-1]
    if not core:
        raise ProtocolError("empty line")
    if len(core) > max_chars:
        raise ProtocolError(
            f"line of {len(core)} chars exceeds the {max_chars}-char limit",
            code=ErrorCode.TOO_LONG,
        )
    for index, byte in enumerate(core):
        if not 0x20 <= byte <= 0x7E:
            raise ProtocolError(f"non-printable byte 0x{byte:02X} at position {index}")
    if core[:1] != start:
        raise ProtocolError(f"frame must start with {start.decode()!r}, got {core[:8]!r}")
    if core.count(b"*") != 1:
        raise ProtocolError("frame must contain exactly one '*' before its checksum")
    raw, _, crc_text = core.partition(b"*")
    if not re.fullmatch(rb"[0-9A-F]{4}", crc_text):
        raise ProtocolError(
            f"checksum must be 4 upper-case hex digits, got {crc_text!r}", code=ErrorCode.CHECKSUM
        )
    computed = crc16_ccitt(raw)
    if int(crc_text, 16) != computed:
        raise ProtocolError(
            f"checksum mismatch: frame says {crc_text.decode()}, computed {computed:04X}",
            code=ErrorCode.CHECKSUM,
        )
    body = raw.decode("ascii")
    if "<" in body[1:] or ">" in body[1:]:
        raise ProtocolError("'<' and '>' are only allowed as the frame start")
    return body


def _tokens(body: str) -> list[str]:
    tokens = body[1:].split(" ")
    if any(not t for t in tokens):
        raise ProtocolError("fields must be separated by single spaces")
    return tokens


def _parse_seq(text: str) -> int:
    if not _SEQ_RE.fullmatch(text) or int(text) >= SEQ_MODULUS:
        raise ProtocolError(f"bad sequence number {text!r} (0..{SEQ_MODULUS - 1})")
    return int(text)


def _parse_number(
    text: str, what: str, *, unsigned: bool, code: ErrorCode, seq: int | None
) -> float:
    pattern = _UNSIGNED_RE if unsigned else _SIGNED_RE
    if not pattern.fullmatch(text):
        kind = "an unsigned decimal" if unsigned else "a decimal"
        raise ProtocolError(f"{what} must be {kind} number, got {text!r}", code=code, seq=seq)
    return float(text)


def _parse_direction(text: str, *, code: ErrorCode, seq: int | None) -> Direction:
    try:
        return Direction(text)
    except ValueError:
        raise ProtocolError(
            f"direction must be INF or WDR, got {text!r}", code=code, seq=seq
        ) from None


def decode_request(line: bytes) -> Request:
    """Parse one request line (terminator optional). Raises ProtocolError with the ER code
    a device should answer with, and ``seq`` set when the frame itself was intact."""
    try:
        return _decode_request(line)
    except ValueError as exc:  # a value type refused what the grammar let through
        raise ProtocolError(f"invalid request: {exc}") from None


def _decode_request(line: bytes) -> Request:
    body = _unframe(line, REQUEST_START, MAX_REQUEST_CHARS)
    tokens = _tokens(body)
    seq = _parse_seq(tokens[0])
    if len(tokens) < 2:
        raise ProtocolError("missing command", code=ErrorCode.UNKNOWN_COMMAND, seq=seq)
    try:
        command = Command(tokens[1])
    except ValueError:
        raise ProtocolError(
            f"unknown command {tokens[1]!r}", code=ErrorCode.UNKNOWN_COMMAND, seq=seq
        ) from None
    args = tokens[2:]
    wanted = 1 if command in _VALUE_COMMANDS else 0
    if len(args) != wanted:
        raise ProtocolError(
            f"{command} takes {wanted} argument(s), got {len(args)}",
            code=ErrorCode.BAD_ARGUMENT,
            seq=seq,
        )
    bad = ErrorCode.BAD_ARGUMENT
    match command:
        case Command.IDENTIFY:
            return Identify(seq)
        case Command.RUN:
            return Run(seq)
        case Command.STOP:
            return Stop(seq)
        case Command.STATUS:
            return GetStatus(seq)
        case Command.SET_DIRECTION:
            return SetDirection(seq, _parse_direction(args[0], code=bad, seq=seq))
        case Command.SET_DIAMETER:
            return SetDiameter(seq, _parse_number(args[0], "DIA", unsigned=True, code=bad, seq=seq))
        case Command.SET_RATE:
            return SetRate(seq, _parse_number(args[0], "RAT", unsigned=True, code=bad, seq=seq))
        case Command.SET_VOLUME_LIMIT:
            return SetVolumeLimit(
                seq, _parse_number(args[0], "VOL", unsigned=True, code=bad, seq=seq)
            )


def _key_values(tokens: list[str], required: tuple[str, ...]) -> dict[str, str]:
    values: dict[str, str] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not _KEY_RE.fullmatch(key) or not value:
            raise ProtocolError(f"expected key=value, got {token!r}")
        if key in values:
            raise ProtocolError(f"duplicate field {key!r}")
        values[key] = value  # unknown keys are allowed: later protocol minor additions
    missing = [k for k in required if k not in values]
    if missing:
        raise ProtocolError(f"missing field(s) {', '.join(missing)}")
    return values


def _reply_number(text: str, what: str) -> float:
    return _parse_number(text, what, unsigned=False, code=ErrorCode.FRAME, seq=None)


def _reply_optional(text: str, what: str) -> float | None:
    return None if text == _NA else _reply_number(text, what)


def _parse_flags(text: str) -> frozenset[str]:
    if text == "-":
        return frozenset()
    flags = text.split(",")
    for flag in flags:
        if not _FLAG_RE.fullmatch(flag):
            raise ProtocolError(f"bad flag {flag!r}")
    if len(set(flags)) != len(flags):
        raise ProtocolError(f"duplicate flag in {text!r}")
    return frozenset(flags)


_STATUS_KEYS = ("st", "dir", "rate", "flow", "dlv", "rem", "steps", "p", "dia", "vlim", "flags")


def _parse_status(tokens: list[str]) -> DeviceStatus:
    kv = _key_values(tokens, _STATUS_KEYS)
    try:
        state = DeviceState(kv["st"])
    except ValueError:
        raise ProtocolError(f"unknown state {kv['st']!r}") from None
    if not _INT_RE.fullmatch(kv["steps"]):
        raise ProtocolError(f"steps must be an integer, got {kv['steps']!r}")
    flags = _parse_flags(kv["flags"])
    return DeviceStatus(
        state=state,
        direction=_parse_direction(kv["dir"], code=ErrorCode.FRAME, seq=None),
        rate_ul_per_h=_reply_number(kv["rate"], "rate"),
        delivered_ul=_reply_number(kv["dlv"], "dlv"),
        remaining_ul=_reply_number(kv["rem"], "rem"),
        steps=int(kv["steps"]),
        pressure_kpa=_reply_optional(kv["p"], "p"),
        limit_reached=FLAG_LIMIT in flags,
        flags=flags,
        flow_ul_per_h=_reply_optional(kv["flow"], "flow"),
        inner_diameter_mm=_reply_optional(kv["dia"], "dia"),
        volume_limit_ul=_reply_optional(kv["vlim"], "vlim"),
    )


def _parse_identity(tokens: list[str]) -> DeviceIdentity:
    kv = _key_values(tokens, ("model", "fw", "sn", "proto"))
    if not re.fullmatch(r"\d{1,3}", kv["proto"]):
        raise ProtocolError(f"protocol version must be 1-3 digits, got {kv['proto']!r}")
    try:
        return DeviceIdentity(kv["model"], kv["fw"], kv["sn"], int(kv["proto"]))
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None


def _parse_error(seq: int | None, tokens: list[str]) -> ErrorReply:
    if len(tokens) < 2:
        raise ProtocolError("ER reply needs a code and a message")
    if not re.fullmatch(r"\d{2,3}", tokens[0]):
        raise ProtocolError(f"bad error code {tokens[0]!r}")
    try:
        code = ErrorCode(int(tokens[0]))
    except ValueError:
        raise ProtocolError(f"unknown error code {tokens[0]}") from None
    return ErrorReply(seq, code, " ".join(tokens[1:]))


def _parse_ack(seq: int, command: Command, args: list[str]) -> AckReply:
    wanted = 1 if command in _VALUE_COMMANDS else 0
    if len(args) != wanted:
        raise ProtocolError(f"OK {command} carries {wanted} value(s), got {len(args)}")
    if command is Command.SET_DIRECTION:
        return AckReply(seq, command, _parse_direction(args[0], code=ErrorCode.FRAME, seq=None))
    if wanted:
        value = _parse_number(args[0], str(command), unsigned=True, code=ErrorCode.FRAME, seq=None)
        return AckReply(seq, command, value)
    return AckReply(seq, command)


def decode_reply(line: bytes) -> Reply:
    """Parse one reply line (terminator optional); malformed input raises ProtocolError."""
    try:
        return _decode_reply(line)
    except ValueError as exc:  # a value type refused what the grammar let through
        raise ProtocolError(f"invalid reply: {exc}") from None


def _decode_reply(line: bytes) -> Reply:
    body = _unframe(line, REPLY_START, MAX_REPLY_CHARS)
    tokens = _tokens(body)
    if len(tokens) < 2:
        raise ProtocolError("reply needs a sequence number and OK/ER")
    seq = None if tokens[0] == "-" else _parse_seq(tokens[0])
    if tokens[1] == "ER":
        return _parse_error(seq, tokens[2:])
    if tokens[1] != "OK":
        raise ProtocolError(f"reply kind must be OK or ER, got {tokens[1]!r}")
    if seq is None:
        raise ProtocolError("an OK reply must echo a sequence number")
    if len(tokens) < 3:
        raise ProtocolError("OK reply without a command")
    try:
        command = Command(tokens[2])
    except ValueError:
        raise ProtocolError(f"OK reply for unknown command {tokens[2]!r}") from None
    if command is Command.IDENTIFY:
        return IdentityReply(seq, _parse_identity(tokens[3:]))
    if command is Command.STATUS:
        return StatusReply(seq, _parse_status(tokens[3:]))
    return _parse_ack(seq, command, tokens[3:])
