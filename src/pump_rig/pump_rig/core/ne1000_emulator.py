"""Byte-level emulator of a New Era NE-1000 family pump's RS-232 firmware.

Bytes from the host go in (``feed``), reply bytes come out, as the pump's firmware produces them
(New Era "NE-1000 Multi-Phaser" user manual, Publication #1200-01, section 10; details and the
list of what is and is not modelled in ``hardware/new_era_ne1000.md``). The plunger is a
``PumpMechanics`` (``core.syringe_pump.SyringePump``: whole microsteps). Serial faults are
injected on the reply path (``core.serial_faults``). Time is passed in (seconds).

Modelled firmware behaviour, in brief:

* Basic mode: ``[address|*]command[argument] CR``, spaces and control characters stripped and
  text upper-cased; replies ``STX addr status [data] ETX``. Safe mode: length- and CRC-16
  checked packets, a bad packet answered ``?COM``, a 0.5 s inter-byte timeout, the
  communications time-out alarm (``SAF<n>``: n seconds, 0 = Basic mode; armed from the first
  valid packet) and auto-alarm packets. A Safe packet is understood in Basic mode too (that is
  how ``SAF`` switches modes); the reply uses the mode in force after the command.
* Addressing: a command without an address is for address 0; other pumps stay silent; ``*``
  (system command) is obeyed whatever the address.
* Alarms stop the pump; the next valid command addressed to the pump is answered with
  ``A?<type>`` instead of being executed, which acknowledges the alarm. A Safe mode auto-alarm
  packet does not acknowledge it.
* ``STP`` pauses a running program (prompt P) and stops a paused one (S); ``RUN`` from P resumes
  the rest of the volume to be dispensed, from S starts it afresh; the run stops by itself at
  the ``VOL`` target (prompt S). ``RUN`` while pumping changes nothing.
* ``RAT`` is accepted while pumping (units unchanged, not kept over a power loss); ``DIA`` and
  ``VOL`` are NA while pumping or paused; ``DIR`` while pumping only with ``VOL`` 0.
* Rates outside the syringe's range (``ne1000_protocol.rate_limits_ul_per_h``) are OOR.
* ``DIA`` selects volume units (<= 14.00 mm µL, else mL). ``DIS`` shows the infused and
  withdrawn counters in the volume units with 4 digits, cut (never rounded) up, held at 9999.
* A stall (mechanics STALLED, or the plunger reaching a syringe end) stops the motor and raises
  alarm S. ``power_interrupt`` stops the pump, forgets a rate changed while pumping and the
  volume counters, and raises alarm R.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from pump_rig.core.ne1000_protocol import (
    CR,
    ETX,
    MAX_ADDRESS,
    MAX_DIAMETER_MM,
    MAX_SAFE_TIMEOUT_S,
    MIN_DIAMETER_MM,
    SAFE_MIN_LENGTH,
    STX,
    AlarmType,
    Command,
    DeviceNumber,
    ErrorCode,
    Prompt,
    ProtocolError,
    RateSetting,
    RateUnits,
    Reply,
    Rounding,
    VolumeUnits,
    decode_safe_packet,
    encode_reply,
    format_number,
    parse_command_data,
    parse_number,
    rate_limits_ul_per_h,
    rate_setting,
    version_for_model,
    volume_units_for_diameter,
)
from pump_rig.core.pump_types import Direction, PumpRunState
from pump_rig.core.serial_faults import EmulatesSerialFaults, ReplyFaults, SerialFaultConfig
from pump_rig.core.stepper_emulator import PumpMechanics
from pump_rig.core.syringe_pump import MechanicsSpec

DEFAULT_MODEL = "NE-1000"
DEFAULT_FIRMWARE = "3.928"
DEFAULT_SAFE_TIMEOUT_S = 10
INTER_BYTE_TIMEOUT_S = 0.5  # Safe mode: an incomplete packet is dropped after this silence
MAX_LINE_BYTES = 128  # Basic mode line buffer
BAUD_RATES = (300, 1200, 2400, 9600, 19200)
DEFAULT_BAUD = 19200
# Drive train used with the NE-1000 emulator: 1/16-microstepped 200-step motor on a 48 TPI
# (0.529 mm) lead screw, 0.165 µm per microstep. NOT a published New Era figure (the manual
# excerpts at hand give none): a plausible stand-in; the protocol never exposes steps.
NE1000_MECHANICS = MechanicsSpec(lead_screw_pitch_mm=25.4 / 48.0, steps_per_rev=200, microsteps=16)
# What the default emulator sends to garble, drop or delay while a serial fault is active.
DEFAULT_FAULT_CONFIG = SerialFaultConfig(partial_probability=0.25)

_DISPLAY_MAX = Decimal("9999")


@dataclass
class _Program:
    """The single-phase pumping program the RS-232 commands drive."""

    state: Prompt = Prompt.STOPPED  # STOPPED, PAUSED, INFUSING/WITHDRAWING (running), PURGING
    moved_ul: float = 0.0  # plunger travel in this phase (both directions), µL


class NE1000Emulator(EmulatesSerialFaults):
    """A New Era NE-1000 family pump's RS-232 firmware, one serial line, bytes in and out."""

    def __init__(
        self,
        pump: PumpMechanics,
        *,
        address: int = 0,
        model: str = DEFAULT_MODEL,
        firmware: str = DEFAULT_FIRMWARE,
        seed: int = 0,
        fault_config: SerialFaultConfig | None = None,
        safe_mode: bool = False,
        safe_timeout_s: int = DEFAULT_SAFE_TIMEOUT_S,
        t0_s: float = 0.0,
    ) -> None:
        if isinstance(address, bool) or not 0 <= address <= MAX_ADDRESS:
            raise ValueError(f"address must be 0..{MAX_ADDRESS}, got {address!r}")
        if not 1 <= safe_timeout_s <= MAX_SAFE_TIMEOUT_S:
            raise ValueError(f"safe_timeout_s must be 1..{MAX_SAFE_TIMEOUT_S}")
        self._pump = pump
        self._address = address
        self._version = version_for_model(model, firmware)
        self._faults = ReplyFaults(
            terminator=bytes([ETX]), seed=seed, config=fault_config or DEFAULT_FAULT_CONFIG
        )
        self._safe_timeout_s = safe_timeout_s if safe_mode else 0
        self._timer_from_s: float | None = None  # Safe mode time-out armed since (None: off)
        self._baud = DEFAULT_BAUD
        self._rx = bytearray()
        self._last_rx_s = t0_s
        self._discarding = False
        self._alarm: AlarmType | None = None
        self._unsolicited = bytearray()  # auto-alarm packets not yet sent
        self._program = _Program()
        snap = pump.snapshot(t0_s)
        self._diameter = format_number(snap.inner_diameter_mm, Rounding.NEAREST)
        self._volume_units = volume_units_for_diameter(float(self._diameter.value))
        self._target_ul = 0.0  # "volume to be dispensed" (0: pump continuously)
        self._rate: RateSetting | None = None
        self._stored_rate: RateSetting | None = None  # what survives a power loss
        if snap.rate_ul_per_h > 0.0:
            self._rate = self._stored_rate = rate_setting(snap.rate_ul_per_h)
        self._direction = snap.direction
        self._last_delivered_ul = snap.delivered_ul
        self._infused_ul = 0.0
        self._withdrawn_ul = 0.0

    # ---- host side --------------------------------------------------------------------------
    def feed(self, data: bytes, t_s: float) -> bytes:
        """Take bytes from the host; return the bytes to send back now."""
        self._tick(t_s)
        if self._rx and self._rx[0] == STX and t_s - self._last_rx_s > INTER_BYTE_TIMEOUT_S:
            self._rx.clear()  # an incomplete Safe packet timed out between bytes
        if data:
            self._last_rx_s = t_s
        self._rx.extend(data)
        out = bytearray(self._flush_unsolicited(t_s))
        while self._rx:
            reply = self._next_input(t_s)
            if reply is None:
                break
            if reply:
                out += self._faults.transmit(reply, t_s)
        out += self._faults.due(t_s)
        return bytes(out)

    def due_output(self, t_s: float) -> bytes:
        """Delayed replies and auto-alarm packets now due; runs the firmware's timers."""
        self._tick(t_s)
        return self._flush_unsolicited(t_s) + self._faults.due(t_s)

    def reset_link(self) -> None:
        """The host (re)connected: drop the partial input and replies still in flight."""
        self._rx.clear()
        self._discarding = False
        self._faults.reset()

    # ---- bench events -----------------------------------------------------------------------
    def power_interrupt(self, t_s: float) -> None:
        """Power lost and back at ``t_s``: the pump stops, a rate changed while pumping and the
        dispensed counters are lost (settings otherwise kept in non-volatile memory), the
        Safe mode time-out waits for a first valid packet, and alarm R is raised."""
        self._tick(t_s)
        self._stop_motor(t_s)
        self._program = _Program()
        if self._stored_rate is not None and self._rate != self._stored_rate:
            self._rate = self._stored_rate
            self._pump.set_rate(t_s, self._stored_rate.ul_per_h)
        self._infused_ul = self._withdrawn_ul = 0.0
        self._rx.clear()
        self._discarding = False
        self._faults.reset()
        self._unsolicited.clear()
        self._timer_from_s = None
        self._raise_alarm(AlarmType.RESET)

    # ---- faults -----------------------------------------------------------------------------
    # ---- state for tests and the bench ------------------------------------------------------
    @property
    def address(self) -> int:
        return self._address

    @property
    def safe_mode(self) -> bool:
        return self._safe_timeout_s > 0

    @property
    def alarm(self) -> AlarmType | None:
        return self._alarm

    @property
    def prompt(self) -> Prompt:
        return self._prompt()

    @property
    def volume_units(self) -> VolumeUnits:
        return self._volume_units

    @property
    def dispensed_ul(self) -> tuple[float, float]:
        """(infused, withdrawn) counters, µL, at full precision (DIS shows 4 digits)."""
        return self._infused_ul, self._withdrawn_ul

    # ---- input ------------------------------------------------------------------------------
    def _next_input(self, t_s: float) -> bytes | None:
        """Handle the next complete input unit: the reply (b"" for none), None: need more."""
        rx = self._rx
        if rx[0] == STX and not self._discarding:
            if len(rx) < 2:
                return None
            length = rx[1]
            if length < SAFE_MIN_LENGTH:
                del rx[:1]  # not a packet: drop the STX
                return b""
            if len(rx) < 1 + length:
                return None
            packet = bytes(rx[: 1 + length])
            del rx[: 1 + length]
            return self._handle_packet(packet, t_s)
        if self.safe_mode:
            start = rx.find(STX)  # outside a packet: junk until the next STX
            if start < 0:
                rx.clear()
            else:
                del rx[:start]
            return b""
        end = rx.find(CR)
        if end < 0:
            if len(rx) > MAX_LINE_BYTES:
                rx.clear()
                self._discarding = True
            return None
        line = bytes(rx[:end])
        del rx[: end + 1]
        if self._discarding:
            self._discarding = False  # the tail of an over-long line
            return b""
        return self._handle_data(line, t_s, safe_packet=False)

    def _handle_packet(self, packet: bytes, t_s: float) -> bytes:
        try:
            data = decode_safe_packet(packet)
        except ProtocolError:
            # The packet cannot be trusted (nor its address): answer COM, do nothing else.
            reply = Reply(self._address, self._prompt(), error=ErrorCode.COMMUNICATION)
            return encode_reply(reply, safe=self.safe_mode)
        return self._handle_data(data, t_s, safe_packet=True)

    def _handle_data(self, data: bytes, t_s: float, *, safe_packet: bool) -> bytes:
        if safe_packet and self.safe_mode:
            self._timer_from_s = t_s  # a valid packet (re)starts the communications time-out
        parsed = parse_command_data(data)
        addressed = parsed.system or (parsed.address or 0) == self._address
        if not addressed:
            return b""  # another pump's command: stay silent
        if self._alarm is not None:
            reply = Reply(self._address, alarm=self._alarm)
            self._alarm = None  # answered with the alarm: acknowledged, command not executed
            return encode_reply(reply, safe=self.safe_mode)
        reply = self._execute(parsed.command, parsed.argument, t_s)
        return encode_reply(reply, safe=self.safe_mode)

    # ---- commands ---------------------------------------------------------------------------
    def _execute(self, command: str, argument: str, t_s: float) -> Reply:
        try:
            name = Command(command)
        except ValueError:
            return self._error(ErrorCode.UNRECOGNIZED)
        if name is Command.STATUS:
            return self._ok() if not argument else self._error(ErrorCode.UNRECOGNIZED)
        handler = {
            Command.DIAMETER: self._dia,
            Command.RATE: self._rat,
            Command.VOLUME: self._vol,
            Command.DIRECTION: self._dir,
            Command.RUN: self._run,
            Command.PURGE: self._pur,
            Command.STOP: self._stp,
            Command.DISPENSED: self._dis,
            Command.CLEAR_DISPENSED: self._cld,
            Command.VERSION: self._ver,
            Command.ADDRESS: self._adr,
            Command.SAFE_MODE: self._saf,
        }[name]
        return handler(argument, t_s)

    def _dia(self, argument: str, t_s: float) -> Reply:
        if not argument:
            return self._ok(_display(self._diameter.value))
        number = _number(argument)
        if number is None:
            return self._error(ErrorCode.OUT_OF_RANGE)
        if self._program.state is not Prompt.STOPPED:
            return self._error(ErrorCode.NOT_APPLICABLE)
        if not MIN_DIAMETER_MM <= number.value <= MAX_DIAMETER_MM:
            return self._error(ErrorCode.OUT_OF_RANGE)
        try:
            self._pump.set_diameter(t_s, float(number.value))
        except ValueError:
            return self._error(ErrorCode.OUT_OF_RANGE)
        self._diameter = number
        self._volume_units = volume_units_for_diameter(float(number.value))
        rate = self._rate
        if rate is not None and not self._rate_in_range(rate.ul_per_h):
            self._rate = self._stored_rate = None  # the old rate is out of this syringe's range
            self._pump.set_rate(t_s, 0.0)
        return self._ok()

    def _rat(self, argument: str, t_s: float) -> Reply:
        if not argument:
            rate = self._rate
            if rate is None:
                return self._ok("0.000" + RateUnits.ML_PER_HOUR.value)
            return self._ok(_display(rate.number.value) + rate.units.value)
        units: RateUnits | None = None
        text = argument
        if len(argument) >= 2 and argument[-2:].isalpha():
            try:
                units = RateUnits(argument[-2:])
            except ValueError:
                return self._error(ErrorCode.UNRECOGNIZED)
            text = argument[:-2]
        number = _number(text)
        if number is None:
            return self._error(ErrorCode.OUT_OF_RANGE)
        running = self._program.state.pumping
        current = self._rate.units if self._rate is not None else RateUnits.ML_PER_HOUR
        if units is None:
            units = current
        elif running and units is not current:
            return self._error(ErrorCode.NOT_APPLICABLE)  # units cannot change while pumping
        setting = RateSetting(number, units)
        if not self._rate_in_range(setting.ul_per_h):
            return self._error(ErrorCode.OUT_OF_RANGE)
        if self._program.state is not Prompt.PURGING:
            try:
                self._pump.set_rate(t_s, setting.ul_per_h)
            except ValueError:
                return self._error(ErrorCode.OUT_OF_RANGE)
        self._rate = setting
        if not running:
            self._stored_rate = setting  # kept in non-volatile memory
        return self._ok()

    def _vol(self, argument: str, t_s: float) -> Reply:
        if not argument:
            shown = _cut(Decimal(repr(self._target_ul)) / self._volume_units.ul)
            return self._ok(_display(shown) + self._volume_units.value)
        if self._program.state is not Prompt.STOPPED:
            return self._error(ErrorCode.NOT_APPLICABLE)
        if argument in (VolumeUnits.UL.value, VolumeUnits.ML.value):
            self._volume_units = VolumeUnits(argument)
            return self._ok()
        number = _number(argument)
        if number is None:
            return self._error(ErrorCode.OUT_OF_RANGE)
        self._target_ul = float(number.value * self._volume_units.ul)
        return self._ok()

    def _dir(self, argument: str, t_s: float) -> Reply:
        if not argument:
            return self._ok(self._direction.value)
        if argument == "REV":
            wanted = Direction.WITHDRAW if self._direction is Direction.INFUSE else Direction.INFUSE
        elif argument in (Direction.INFUSE.value, Direction.WITHDRAW.value):
            wanted = Direction(argument)
        elif argument == "STK":
            return self._error(ErrorCode.NOT_APPLICABLE)  # sticky direction: programs only
        else:
            return self._error(ErrorCode.UNRECOGNIZED)
        state = self._program.state
        if wanted is not self._direction and state.pumping:
            if self._target_ul > 0.0 or state is Prompt.PURGING:
                return self._error(ErrorCode.NOT_APPLICABLE)
            self._stop_motor(t_s)  # the motor reverses at once (continuous pumping only)
            self._pump.set_direction(t_s, wanted)
            self._direction = wanted
            self._start_motor(t_s, limit_ul=0.0)
            self._program.state = self._running_prompt()
            return self._ok()
        if wanted is not self._direction:
            self._pump.set_direction(t_s, wanted)
            self._direction = wanted
        return self._ok()

    def _run(self, argument: str, t_s: float) -> Reply:
        if argument not in ("", "1"):
            phase = _number(argument)
            if phase is not None and phase.value == phase.value.to_integral_value():
                if 2 <= phase.value <= 41:
                    return self._error(ErrorCode.NOT_APPLICABLE)  # no multi-phase program
                return self._error(ErrorCode.OUT_OF_RANGE)
            return self._error(ErrorCode.UNRECOGNIZED)
        program = self._program
        if program.state.pumping:
            return self._ok()  # already running: nothing changes
        rate = self._rate
        if rate is None:
            return self._error(ErrorCode.NOT_APPLICABLE)
        if program.state is Prompt.PAUSED:
            limit_ul = 0.0
            if self._target_ul > 0.0:
                limit_ul = self._remaining_target_ul(program.moved_ul)
        else:
            program.moved_ul = 0.0
            limit_ul = self._target_ul
        self._start_motor(t_s, limit_ul=limit_ul)
        program.state = self._running_prompt()
        self._sync(t_s)  # nothing to move: the run ends at once
        return self._ok()

    def _pur(self, argument: str, t_s: float) -> Reply:
        if argument:
            return self._error(ErrorCode.UNRECOGNIZED)
        if self._program.state.pumping:
            return self._error(ErrorCode.NOT_APPLICABLE)
        _, max_rate = rate_limits_ul_per_h(float(self._diameter.value))
        try:
            self._pump.set_rate(t_s, max_rate)
        except ValueError:
            # The model's own ceiling is lower: purge as fast as it goes.
            self._pump.set_rate(t_s, getattr(self._pump, "max_rate_ul_per_h", max_rate / 10))
        self._program = _Program(state=Prompt.PURGING)
        self._start_motor(t_s, limit_ul=0.0)
        self._sync(t_s)
        return self._ok()

    def _stp(self, argument: str, t_s: float) -> Reply:
        if argument:
            return self._error(ErrorCode.UNRECOGNIZED)
        state = self._program.state
        if state.pumping:
            self._stop_motor(t_s)
            if state is Prompt.PURGING:
                self._program = _Program()
                self._restore_rate(t_s)
            else:
                self._program.state = Prompt.PAUSED
        elif state is Prompt.PAUSED:
            self._program = _Program()
        return self._ok()

    def _dis(self, argument: str, t_s: float) -> Reply:
        if argument:
            return self._error(ErrorCode.UNRECOGNIZED)
        units = self._volume_units
        infused = _cut(Decimal(repr(self._infused_ul)) / units.ul)
        withdrawn = _cut(Decimal(repr(self._withdrawn_ul)) / units.ul)
        return self._ok(f"I{_display(infused)}W{_display(withdrawn)}{units.value}")

    def _cld(self, argument: str, t_s: float) -> Reply:
        if argument == Direction.INFUSE.value:
            self._infused_ul = 0.0
        elif argument == Direction.WITHDRAW.value:
            self._withdrawn_ul = 0.0
        else:
            return self._error(ErrorCode.UNRECOGNIZED)
        return self._ok()

    def _ver(self, argument: str, t_s: float) -> Reply:
        if argument:
            return self._error(ErrorCode.UNRECOGNIZED)
        return self._ok(self._version.text)

    def _adr(self, argument: str, t_s: float) -> Reply:
        if not argument:
            return self._ok(f"{self._address:02d}")
        address_text, _, baud_text = argument.partition("B")
        if not address_text.isdigit() or (baud_text and not baud_text.isdigit()):
            return self._error(ErrorCode.UNRECOGNIZED)
        if int(address_text) > MAX_ADDRESS or (baud_text and int(baud_text) not in BAUD_RATES):
            return self._error(ErrorCode.OUT_OF_RANGE)
        self._address = int(address_text)
        if baud_text:
            self._baud = int(baud_text)  # irrelevant on a pty; kept for the query
            self._timer_from_s = None  # manual: a baud change disables the time-out timer
        return self._ok()

    def _saf(self, argument: str, t_s: float) -> Reply:
        if not argument:
            return self._ok(str(self._safe_timeout_s))
        if not argument.isdigit():
            return self._error(ErrorCode.UNRECOGNIZED)
        timeout = int(argument)
        if timeout > MAX_SAFE_TIMEOUT_S:
            return self._error(ErrorCode.OUT_OF_RANGE)
        self._safe_timeout_s = timeout
        self._timer_from_s = t_s if timeout else None
        return self._ok()

    # ---- firmware state ---------------------------------------------------------------------
    def _tick(self, t_s: float) -> None:
        self._sync(t_s)
        start = self._timer_from_s
        if start is not None and self.safe_mode and t_s - start > self._safe_timeout_s:
            self._timer_from_s = None  # restarts only with the next valid packet
            self._stop_motor(t_s)
            self._program = _Program()
            self._restore_rate(t_s)
            self._raise_alarm(AlarmType.COMM_TIMEOUT)

    def _sync(self, t_s: float, *, watch: bool = True) -> None:
        """Fold plunger motion into the counters; with ``watch``, notice the run ending by
        itself (volume to be dispensed reached) or the motor stalling."""
        snap = self._pump.snapshot(t_s)
        delta = snap.delivered_ul - self._last_delivered_ul
        self._last_delivered_ul = snap.delivered_ul
        if delta > 0.0:
            self._infused_ul += delta
        elif delta < 0.0:
            self._withdrawn_ul -= delta
        self._program.moved_ul += abs(delta)
        if not watch or not self._program.state.pumping:
            return
        if snap.state is PumpRunState.STALLED:
            self._stall(t_s)
        elif snap.state is PumpRunState.IDLE:
            if snap.limit_reached:
                self._program = _Program()  # volume to be dispensed reached: program ends
            else:
                self._stall(t_s)  # the plunger hit a syringe end: the motor stalls there

    def _stall(self, t_s: float) -> None:
        was_purging = self._program.state is Prompt.PURGING
        self._stop_motor(t_s)
        self._program = _Program()
        if was_purging:
            self._restore_rate(t_s)
        self._raise_alarm(AlarmType.STALLED)

    def _raise_alarm(self, alarm: AlarmType) -> None:
        self._alarm = alarm
        if self.safe_mode:  # auto-alarm: tell the host now (does not acknowledge the alarm)
            reply = Reply(self._address, alarm=alarm)
            self._unsolicited += encode_reply(reply, safe=True)

    def _flush_unsolicited(self, t_s: float) -> bytes:
        if not self._unsolicited:
            return b""
        packet, self._unsolicited = bytes(self._unsolicited), bytearray()
        return self._faults.transmit(packet, t_s)

    def _start_motor(self, t_s: float, *, limit_ul: float) -> None:
        self._pump.set_volume_limit(t_s, limit_ul)
        self._pump.start(t_s)

    def _stop_motor(self, t_s: float) -> None:
        self._sync(t_s, watch=False)
        if self._pump.snapshot(t_s).state is not PumpRunState.IDLE:
            self._pump.stop(t_s)
        self._sync(t_s, watch=False)

    def _restore_rate(self, t_s: float) -> None:
        rate = self._rate
        self._pump.set_rate(t_s, rate.ul_per_h if rate is not None else 0.0)

    def _remaining_target_ul(self, moved_ul: float) -> float:
        """The volume to be dispensed left after ``moved_ul`` (a resumed run). Never 0, which
        the mechanics read as "no limit": less than a step left ends the run at once."""
        return max(self._target_ul - moved_ul, 1e-12)

    def _rate_in_range(self, rate_ul_per_h: float) -> bool:
        low, high = rate_limits_ul_per_h(float(self._diameter.value))
        return low * (1 - 1e-9) <= rate_ul_per_h <= high * (1 + 1e-9)

    def _running_prompt(self) -> Prompt:
        return Prompt.INFUSING if self._direction is Direction.INFUSE else Prompt.WITHDRAWING

    def _prompt(self) -> Prompt:
        return self._program.state

    def _ok(self, data: str = "") -> Reply:
        return Reply(self._address, self._prompt(), data=data)

    def _error(self, code: ErrorCode) -> Reply:
        return Reply(self._address, self._prompt(), error=code)


def _number(text: str) -> DeviceNumber | None:
    try:
        return parse_number(text)
    except ProtocolError:
        return None


def _cut(value: Decimal) -> Decimal:
    """A counter as the 4-digit display shows it: cut, never rounded up; held at 9999."""
    if value >= _DISPLAY_MAX:
        return _DISPLAY_MAX
    return format_number(value.quantize(Decimal("1e-12"), rounding=ROUND_DOWN), Rounding.DOWN).value


def _display(value: Decimal) -> str:
    return format_number(value, Rounding.DOWN, display=True).text


__all__ = [
    "DEFAULT_FAULT_CONFIG",
    "DEFAULT_FIRMWARE",
    "DEFAULT_MODEL",
    "NE1000_MECHANICS",
    "NE1000Emulator",
]
