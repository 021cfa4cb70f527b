"""Codec for the New Era NE-1000 family's RS-232 protocol (NE-1000, NE-300, NE-500/501, ...).

Source: New Era Pump Systems, "NE-1000 Multi-Phaser Programmable Syringe Pump User Manual",
Publication #1200-01 (08/01/14), section 10 "RS-232 Communications" (10.2.1 syntax legend,
10.2.2 Basic mode, 10.2.3 Safe mode, 10.2.4 common syntax, 10.3 errors and alarms, 10.4
command set); the NE-500/501 (#1200-02/03) and NE-1600 manuals carry the same protocol.
What is implemented, with exchanges, is in ``hardware/new_era_ne1000.md``.

Wire format::

    Basic request:  [<address>|*]<command>[<argument>] CR        e.g. b"0DIA14.43\\r"
    Basic reply:    STX <address:2 digits> <status> [<data>] ETX    e.g. b"\\x0200S\\x03"
    Safe request:   STX <length> <command data> <CRC hi> <CRC lo> ETX
    Safe reply:     STX <length> <response data> <CRC hi> <CRC lo> ETX

``<status>`` is a prompt letter (I W S P T U X) or an alarm ``A?<type>`` (R S T E O); an error
is ``?`` plus a code (``""`` = not recognised, NA, OOR, COM, IGN) after the prompt. ``<length>``
counts the bytes after STX (length byte, data, CRC, ETX); the CRC is CRC-16/XMODEM of the data
(``core.crc16``). Numbers are ``<float>``: at most 4 digits plus a decimal point, at most 3 of
them after it (``format_number`` / ``parse_number``).

Decoding is strict: anything that is not exactly a well-formed frame raises ``ProtocolError``
and nothing else. Encoders raise ``ValueError`` for values the wire cannot carry.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation

from pump_rig.core.crc16 import crc16_xmodem
from pump_rig.core.pump_types import Direction

STX = 0x02
ETX = 0x03
CR = 0x0D
MAX_ADDRESS = 99
SAFE_MIN_LENGTH = 4  # length byte + CRC (2) + ETX around an empty data field
MAX_DATA_BYTES = 250  # a Safe packet's length byte must fit in one byte
MAX_REPLY_CHARS = 64  # longest reply body accepted (address + status + data)
MAX_DIGITS = 4
MAX_DECIMALS = 3
MAX_SAFE_TIMEOUT_S = 255
# Volume units follow the syringe: "At or below 14.00 mm syringe diameter, volume units are
# µL. Above 14.00 mm syringe diameter, volume units are mL." (manual, quick start / VOL)
VOLUME_UNITS_THRESHOLD_MM = 14.0
MIN_DIAMETER_MM = 0.1
MAX_DIAMETER_MM = 50.0
# Plunger speed limits behind the manual's per-syringe rate table: the NE-1000 spans 0.73 µL/h
# with a B-D 1 mL syringe (4.699 mm) to 1699 mL/h with a B-D 60 mL syringe (26.59 mm); both
# rows give one speed range, so the limits scale with the syringe's cross-section.
_BD_1ML_AREA_MM2 = math.pi * 4.699**2 / 4.0
_BD_60ML_AREA_MM2 = math.pi * 26.59**2 / 4.0
MIN_PLUNGER_SPEED_MM_PER_H = 0.73 / _BD_1ML_AREA_MM2  # ≈ 0.0421 mm/h
MAX_PLUNGER_SPEED_MM_PER_H = 1_699_000.0 / _BD_60ML_AREA_MM2  # ≈ 3060 mm/h (5.1 cm/min)


class ProtocolError(Exception):
    """Bytes that are not a well-formed frame of this protocol."""


# ---- vocabulary -------------------------------------------------------------------------------


class Prompt(enum.StrEnum):
    """Operational state in a reply's status field."""

    INFUSING = "I"
    WITHDRAWING = "W"
    STOPPED = "S"  # pumping program stopped
    PAUSED = "P"  # pumping program paused
    PAUSE_PHASE = "T"  # timed pause phase
    USER_WAIT = "U"  # operational trigger wait
    PURGING = "X"

    @property
    def pumping(self) -> bool:
        return self in (Prompt.INFUSING, Prompt.WITHDRAWING, Prompt.PURGING)


class AlarmType(enum.StrEnum):
    """``A?<type>`` alarms."""

    RESET = "R"  # pump was reset (power was interrupted)
    STALLED = "S"  # pump motor stalled
    COMM_TIMEOUT = "T"  # Safe mode communications time out
    PROGRAM_ERROR = "E"  # pumping program error
    PHASE_OUT_OF_RANGE = "O"  # pumping program phase is out of range


class ErrorCode(enum.StrEnum):
    """``?<code>`` command errors."""

    UNRECOGNIZED = ""  # "?" alone: command is not recognised
    NOT_APPLICABLE = "NA"  # command is not currently applicable
    OUT_OF_RANGE = "OOR"  # command data is out of range
    COMMUNICATION = "COM"  # invalid communications packet received
    IGNORED = "IGN"  # command ignored due to a simultaneous new phase start


class Command(enum.StrEnum):
    STATUS = ""  # a packet without a command: status query
    DIAMETER = "DIA"
    RATE = "RAT"
    VOLUME = "VOL"
    DIRECTION = "DIR"
    RUN = "RUN"
    PURGE = "PUR"
    STOP = "STP"
    DISPENSED = "DIS"
    CLEAR_DISPENSED = "CLD"
    VERSION = "VER"
    ADDRESS = "ADR"
    SAFE_MODE = "SAF"


class RateUnits(enum.StrEnum):
    UL_PER_MIN = "UM"
    ML_PER_MIN = "MM"
    UL_PER_HOUR = "UH"
    ML_PER_HOUR = "MH"

    @property
    def ul_per_h(self) -> Decimal:
        """µL/h in one of these units."""
        return _RATE_FACTORS[self]


_RATE_FACTORS = {
    RateUnits.UL_PER_MIN: Decimal(60),
    RateUnits.ML_PER_MIN: Decimal(60_000),
    RateUnits.UL_PER_HOUR: Decimal(1),
    RateUnits.ML_PER_HOUR: Decimal(1_000),
}
# Preference among equally precise candidates: the smallest units first.
RATE_UNITS_ORDER = (
    RateUnits.UL_PER_HOUR,
    RateUnits.UL_PER_MIN,
    RateUnits.ML_PER_HOUR,
    RateUnits.ML_PER_MIN,
)


class VolumeUnits(enum.StrEnum):
    UL = "UL"
    ML = "ML"

    @property
    def ul(self) -> Decimal:
        """µL in one of these units."""
        return Decimal(1) if self is VolumeUnits.UL else Decimal(1000)


class Rounding(enum.Enum):
    """How a value is brought to what the device can hold."""

    DOWN = ROUND_DOWN  # never above the value asked for (volume limits)
    NEAREST = ROUND_HALF_UP
    UP = ROUND_CEILING


def volume_units_for_diameter(inner_diameter_mm: float) -> VolumeUnits:
    """The volume units a DIA setting selects (manual: <= 14.00 mm -> µL, above -> mL)."""
    return VolumeUnits.UL if inner_diameter_mm <= VOLUME_UNITS_THRESHOLD_MM else VolumeUnits.ML


def rate_limits_ul_per_h(inner_diameter_mm: float) -> tuple[float, float]:
    """(minimum, maximum) pumping rate the pump accepts for a syringe, µL/h."""
    area_mm2 = math.pi * inner_diameter_mm**2 / 4.0
    return area_mm2 * MIN_PLUNGER_SPEED_MM_PER_H, area_mm2 * MAX_PLUNGER_SPEED_MM_PER_H


# ---- numbers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceNumber:
    """A ``<float>`` as the device holds it: ``text`` on the wire, ``value`` it stands for."""

    text: str
    value: Decimal

    @property
    def decimals(self) -> int:
        _, _, fraction = self.text.partition(".")
        return len(fraction)

    @property
    def resolution(self) -> Decimal:
        """One unit of the last digit shown."""
        return Decimal(1).scaleb(-self.decimals)

    def __float__(self) -> float:
        return float(self.value)


_NUMBER_RE = re.compile(r"(?=\.?\d)(\d*)(?:\.(\d*))?")


def format_number(
    value: float | Decimal, rounding: Rounding, *, display: bool = False
) -> DeviceNumber:
    """``value`` brought to at most 4 digits (<= 3 decimals) in the direction ``rounding``.

    The most decimals that fit are kept (0.1234 -> "0.123", 12.345 -> "12.35" to nearest,
    "12.34" down). ``display`` writes whole numbers with a trailing point ("1234.") as the
    pump shows them; commands omit it. ValueError for negative, non-finite or >= 10000.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError(f"a device number must be a real number, got {value!r}")
    exact = value if isinstance(value, Decimal) else Decimal(repr(float(value)))
    if not exact.is_finite() or exact < 0:
        raise ValueError(f"a device number must be finite and >= 0, got {value!r}")
    for decimals in range(MAX_DECIMALS, -1, -1):
        quantum = Decimal(1).scaleb(-decimals)
        rounded = exact.quantize(quantum, rounding=rounding.value)
        if len(str(int(rounded))) + decimals <= MAX_DIGITS:
            text = f"{rounded:.{decimals}f}"
            if decimals == 0 and display:
                text += "."
            return DeviceNumber(text, Decimal(text.rstrip(".") or "0"))
    raise ValueError(f"{value!r} does not fit the device's 4 digits (max 9999)")


def parse_number(text: str) -> DeviceNumber:
    """A ``<float>`` field: digits and at most one point, 1-4 digits, <= 3 decimals."""
    match = _NUMBER_RE.fullmatch(text)
    if match is None:
        raise ProtocolError(f"not a device number: {text!r}")
    whole, fraction = match.group(1), match.group(2) or ""
    if len(whole) + len(fraction) > MAX_DIGITS or len(fraction) > MAX_DECIMALS:
        raise ProtocolError(f"device numbers have at most 4 digits, 3 decimals: {text!r}")
    try:
        value = Decimal((whole or "0") + ("." + fraction if fraction else ""))
    except InvalidOperation:  # pragma: no cover - the pattern admits digits only
        raise ProtocolError(f"not a device number: {text!r}") from None
    return DeviceNumber(text, value)


@dataclass(frozen=True)
class RateSetting:
    """A pumping rate as the device will hold it."""

    number: DeviceNumber
    units: RateUnits

    @property
    def ul_per_h(self) -> float:
        return float(self.number.value * self.units.ul_per_h)

    @property
    def argument(self) -> str:
        return self.number.text + self.units.value


def rate_setting(
    rate_ul_per_h: float,
    *,
    rounding: Rounding = Rounding.NEAREST,
    units: tuple[RateUnits, ...] = RATE_UNITS_ORDER,
) -> RateSetting:
    """The most precise way to hold ``rate_ul_per_h`` in one of ``units`` (ties: first in
    ``units``). ValueError when it is not a positive finite rate any candidate can carry."""
    if (
        isinstance(rate_ul_per_h, bool)
        or not isinstance(rate_ul_per_h, int | float)
        or not math.isfinite(rate_ul_per_h)
        or rate_ul_per_h <= 0.0
    ):
        raise ValueError(f"rate must be a positive finite number of µL/h, got {rate_ul_per_h!r}")
    exact = Decimal(repr(float(rate_ul_per_h)))
    best: tuple[Decimal, RateSetting] | None = None
    for unit in units:
        try:
            number = format_number(exact / unit.ul_per_h, rounding)
        except ValueError:
            continue  # too large in these units
        if number.value == 0:
            continue
        error = abs(number.value * unit.ul_per_h - exact)
        if best is None or error < best[0]:
            best = (error, RateSetting(number, unit))
    if best is None:
        names = ", ".join(u.value for u in units)
        raise ValueError(f"rate {rate_ul_per_h!r} µL/h cannot be written in {names}")
    return best[1]


@dataclass(frozen=True)
class VolumeSetting:
    number: DeviceNumber
    units: VolumeUnits

    @property
    def ul(self) -> float:
        return float(self.number.value * self.units.ul)


def volume_setting(
    volume_ul: float, units: VolumeUnits, *, rounding: Rounding = Rounding.DOWN
) -> VolumeSetting:
    """``volume_ul`` in ``units`` as the device holds it (a limit rounds down by default)."""
    if (
        isinstance(volume_ul, bool)
        or not isinstance(volume_ul, int | float)
        or not math.isfinite(volume_ul)
        or volume_ul < 0.0
    ):
        raise ValueError(f"volume must be a finite number >= 0 µL, got {volume_ul!r}")
    exact = Decimal(repr(float(volume_ul))) / units.ul
    return VolumeSetting(format_number(exact, rounding), units)


# ---- requests ---------------------------------------------------------------------------------

_ARGUMENT_RE = re.compile(r"[0-9A-Z.]*")


@dataclass(frozen=True)
class Request:
    """One command to one pump. ``address`` None: no address sent (the pump at 0 answers);
    ``system``: ``*`` instead of an address (every pump on the network obeys)."""

    command: Command
    argument: str = ""
    address: int | None = None
    system: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "command", Command(self.command))
        if self.address is not None and (
            isinstance(self.address, bool)
            or not isinstance(self.address, int)
            or not 0 <= self.address <= MAX_ADDRESS
        ):
            raise ValueError(f"address must be 0..{MAX_ADDRESS} or None, got {self.address!r}")
        if self.system and self.address is not None:
            raise ValueError("a system command (*) carries no address")
        if not _ARGUMENT_RE.fullmatch(self.argument):
            raise ValueError(f"argument must be upper-case letters, digits, '.': {self.argument!r}")
        if self.command is Command.STATUS and self.argument:
            raise ValueError("a status query carries no argument")

    @property
    def data(self) -> bytes:
        """``<command data>``: what Basic mode sends before CR and Safe mode checksums."""
        prefix = "*" if self.system else "" if self.address is None else str(self.address)
        return (prefix + self.command.value + self.argument).encode("ascii")


def encode_request(request: Request, *, safe: bool) -> bytes:
    """The bytes for ``request`` in Basic (``safe=False``) or Safe mode."""
    return encode_safe_packet(request.data) if safe else request.data + bytes([CR])


def encode_safe_packet(data: bytes) -> bytes:
    """``STX <length> data <CRC hi> <CRC lo> ETX``."""
    if len(data) > MAX_DATA_BYTES:
        raise ValueError(f"Safe mode data of {len(data)} bytes exceeds {MAX_DATA_BYTES}")
    crc = crc16_xmodem(data)
    return bytes([STX, len(data) + SAFE_MIN_LENGTH]) + data + crc.to_bytes(2, "big") + bytes([ETX])


def decode_safe_packet(frame: bytes) -> bytes:
    """The data of a Safe mode packet; ProtocolError if its framing, length or CRC is wrong."""
    if not isinstance(frame, bytes | bytearray):
        raise ProtocolError(f"a frame must be bytes, got {type(frame).__name__}")
    frame = bytes(frame)
    if len(frame) < 1 + SAFE_MIN_LENGTH:
        raise ProtocolError(f"Safe packet too short: {frame!r}")
    if frame[0] != STX:
        raise ProtocolError(f"Safe packet must start with STX, got {frame[:4]!r}")
    if frame[1] != len(frame) - 1:
        raise ProtocolError(f"Safe packet length byte {frame[1]} != {len(frame) - 1} bytes")
    if frame[-1] != ETX:
        raise ProtocolError(f"Safe packet must end with ETX, got {frame[-4:]!r}")
    data = frame[2:-3]
    sent, computed = int.from_bytes(frame[-3:-1], "big"), crc16_xmodem(data)
    if sent != computed:
        raise ProtocolError(f"Safe packet CRC mismatch: sent {sent:04X}, computed {computed:04X}")
    return data


@dataclass(frozen=True)
class CommandData:
    """A received ``<command data>`` split as the pump reads it (emulator side)."""

    address: int | None  # None: none given (the pump at 0 is meant)
    system: bool
    command: str  # three letters, or "" (status query / not a command)
    argument: str


_COMMAND_DATA_RE = re.compile(r"(\*|\d{1,2})?([A-Z]{3})?(.*)", re.DOTALL)


def parse_command_data(data: bytes) -> CommandData:
    """Split command data the way the pump does in Basic mode: spaces and control characters
    stripped, text upper-cased, then ``[address|*][command][argument]``."""
    text = "".join(chr(b) for b in data if 0x20 < b < 0x7F).upper()
    match = _COMMAND_DATA_RE.fullmatch(text)
    assert match is not None  # the pattern matches any text
    prefix, command, argument = match.group(1), match.group(2) or "", match.group(3)
    system = prefix == "*"
    address = int(prefix) if prefix is not None and not system else None
    return CommandData(address, system, command, argument)


# ---- replies ----------------------------------------------------------------------------------

_DATA_RE = re.compile(r"[0-9A-Z.]*")


@dataclass(frozen=True)
class Reply:
    """``<address> <status> [<data> | ?<error>]``: exactly one of ``prompt``/``alarm``; an
    alarm carries nothing else; an error carries no data."""

    address: int
    prompt: Prompt | None = None
    alarm: AlarmType | None = None
    error: ErrorCode | None = None
    data: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.address, bool) or not 0 <= self.address <= MAX_ADDRESS:
            raise ValueError(f"address must be 0..{MAX_ADDRESS}, got {self.address!r}")
        if (self.prompt is None) == (self.alarm is None):
            raise ValueError("a reply has either a prompt or an alarm")
        if self.prompt is not None:
            object.__setattr__(self, "prompt", Prompt(self.prompt))
        if self.alarm is not None:
            object.__setattr__(self, "alarm", AlarmType(self.alarm))
            if self.error is not None or self.data:
                raise ValueError("an alarm reply carries no data or error")
        if self.error is not None:
            object.__setattr__(self, "error", ErrorCode(self.error))
            if self.data:
                raise ValueError("an error reply carries no data")
        if not _DATA_RE.fullmatch(self.data):
            raise ValueError(f"reply data must be upper-case letters, digits, '.': {self.data!r}")

    @property
    def body(self) -> str:
        """``<response data>`` as text."""
        if self.alarm is not None:
            status = "A?" + self.alarm.value
        else:
            assert self.prompt is not None
            status = self.prompt.value
        tail = "?" + self.error.value if self.error is not None else self.data
        return f"{self.address:02d}{status}{tail}"


def encode_reply(reply: Reply, *, safe: bool) -> bytes:
    body = reply.body.encode("ascii")
    return encode_safe_packet(body) if safe else bytes([STX]) + body + bytes([ETX])


def decode_reply(frame: bytes, *, safe: bool) -> Reply:
    """Parse one reply frame (STX to ETX). Anything else raises ProtocolError."""
    if not isinstance(frame, bytes | bytearray):
        raise ProtocolError(f"a frame must be bytes, got {type(frame).__name__}")
    frame = bytes(frame)
    if safe:
        body = decode_safe_packet(frame)
    else:
        if len(frame) < 2 or frame[0] != STX or frame[-1] != ETX:
            raise ProtocolError(f"a Basic reply is STX ... ETX, got {frame[:12]!r}")
        body = frame[1:-1]
    return _parse_body(body)


_BODY_RE = re.compile(r"(\d\d)(?:A\?([A-Z])|([A-Z]))(?:\?([A-Z]*)|([0-9A-Z.]*))")


def _parse_body(body: bytes) -> Reply:
    if len(body) > MAX_REPLY_CHARS:
        raise ProtocolError(f"reply of {len(body)} bytes exceeds {MAX_REPLY_CHARS}")
    if any(not 0x20 <= b <= 0x7E for b in body):
        raise ProtocolError(f"non-printable byte in reply {body!r}")
    text = body.decode("ascii")
    match = _BODY_RE.fullmatch(text)
    if match is None:
        raise ProtocolError(f"malformed reply {text!r}")
    address = int(match.group(1))
    alarm_text, prompt_text, error_text, data = match.groups()[1:]
    try:
        if alarm_text is not None:
            if error_text is not None or data:
                raise ProtocolError(f"an alarm reply carries nothing else: {text!r}")
            return Reply(address, alarm=AlarmType(alarm_text))
        prompt = Prompt(prompt_text)
        if error_text is not None:
            return Reply(address, prompt, error=ErrorCode(error_text))
        return Reply(address, prompt, data=data or "")
    except ValueError as exc:  # unknown prompt, alarm or error letters
        raise ProtocolError(f"malformed reply {text!r}: {exc}") from None


# ---- query replies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RateReading:
    number: DeviceNumber
    units: RateUnits

    @property
    def ul_per_h(self) -> float:
        return float(self.number.value * self.units.ul_per_h)


@dataclass(frozen=True)
class VolumeReading:
    number: DeviceNumber
    units: VolumeUnits

    @property
    def ul(self) -> float:
        return float(self.number.value * self.units.ul)


@dataclass(frozen=True)
class Dispensed:
    """``DIS``: volume infused and withdrawn since they were last cleared, in ``units``."""

    infused: DeviceNumber
    withdrawn: DeviceNumber
    units: VolumeUnits

    @property
    def infused_ul(self) -> float:
        return float(self.infused.value * self.units.ul)

    @property
    def withdrawn_ul(self) -> float:
        return float(self.withdrawn.value * self.units.ul)

    @property
    def net_ul(self) -> float:
        return float((self.infused.value - self.withdrawn.value) * self.units.ul)

    @property
    def resolution_ul(self) -> float:
        """The coarser of the two counters' last digits, µL."""
        coarsest = max(self.infused.resolution, self.withdrawn.resolution)
        return float(coarsest * self.units.ul)


@dataclass(frozen=True)
class Version:
    """``VER``: e.g. ``NE1000V3.928`` (model number, optional ``X`` upgrade, firmware)."""

    model_number: int
    upgrade: str  # "" or "X" plus digits
    firmware: str  # "3.928"

    @property
    def model(self) -> str:
        return f"NE-{self.model_number}{self.upgrade}"

    @property
    def text(self) -> str:
        return f"NE{self.model_number}{self.upgrade}V{self.firmware}"


_UNITS_SUFFIX_RE = re.compile(r"([0-9.]+)([A-Z]{2})")
_DIS_RE = re.compile(r"I([0-9.]+)W([0-9.]+)([A-Z]{2})")
_VERSION_RE = re.compile(r"NE(\d{2,4})(X\d{0,4})?V(\d{1,2}\.\d{1,4})")
_MODEL_RE = re.compile(r"NE-(\d{2,4})(X\d{0,4})?")


def parse_diameter(data: str) -> DeviceNumber:
    return parse_number(data)


def parse_rate(data: str) -> RateReading:
    match = _UNITS_SUFFIX_RE.fullmatch(data)
    if match is None:
        raise ProtocolError(f"not a rate reply: {data!r}")
    try:
        units = RateUnits(match.group(2))
    except ValueError:
        raise ProtocolError(f"unknown rate units in {data!r}") from None
    return RateReading(parse_number(match.group(1)), units)


def parse_volume(data: str) -> VolumeReading:
    match = _UNITS_SUFFIX_RE.fullmatch(data)
    if match is None:
        raise ProtocolError(f"not a volume reply: {data!r}")
    try:
        units = VolumeUnits(match.group(2))
    except ValueError:
        raise ProtocolError(f"unknown volume units in {data!r}") from None
    return VolumeReading(parse_number(match.group(1)), units)


def parse_direction(data: str) -> Direction:
    if data == "INF":
        return Direction.INFUSE
    if data == "WDR":
        return Direction.WITHDRAW
    raise ProtocolError(f"not a direction reply: {data!r}")


def parse_dispensed(data: str) -> Dispensed:
    match = _DIS_RE.fullmatch(data)
    if match is None:
        raise ProtocolError(f"not a DIS reply: {data!r}")
    try:
        units = VolumeUnits(match.group(3))
    except ValueError:
        raise ProtocolError(f"unknown volume units in {data!r}") from None
    return Dispensed(parse_number(match.group(1)), parse_number(match.group(2)), units)


def parse_version(data: str) -> Version:
    match = _VERSION_RE.fullmatch(data)
    if match is None:
        raise ProtocolError(f"not a VER reply: {data!r}")
    return Version(int(match.group(1)), match.group(2) or "", match.group(3))


def version_for_model(model: str, firmware: str) -> Version:
    """The VER a pump of ``model`` ("NE-1000", "NE-500", ...) with ``firmware`` reports."""
    match = _MODEL_RE.fullmatch(model)
    if match is None:
        raise ValueError(f"model must look like 'NE-1000', got {model!r}")
    version = Version(int(match.group(1)), match.group(2) or "", firmware)
    parse_version(version.text)  # firmware text checked by the reply grammar
    return version


def parse_safe_timeout(data: str) -> int:
    if not re.fullmatch(r"\d{1,3}", data) or int(data) > MAX_SAFE_TIMEOUT_S:
        raise ProtocolError(f"not a SAF reply: {data!r}")
    return int(data)


__all__ = [
    "CR",
    "ETX",
    "MAX_ADDRESS",
    "STX",
    "AlarmType",
    "Command",
    "CommandData",
    "DeviceNumber",
    "Dispensed",
    "ErrorCode",
    "Prompt",
    "ProtocolError",
    "RateReading",
    "RateSetting",
    "RateUnits",
    "Reply",
    "Request",
    "Rounding",
    "Version",
    "VolumeReading",
    "VolumeSetting",
    "VolumeUnits",
    "decode_reply",
    "decode_safe_packet",
    "encode_reply",
    "encode_request",
    "encode_safe_packet",
    "format_number",
    "parse_command_data",
    "parse_diameter",
    "parse_direction",
    "parse_dispensed",
    "parse_number",
    "parse_rate",
    "parse_safe_timeout",
    "parse_version",
    "rate_limits_ul_per_h",
    "rate_setting",
    "version_for_model",
    "volume_setting",
    "volume_units_for_diameter",
]
