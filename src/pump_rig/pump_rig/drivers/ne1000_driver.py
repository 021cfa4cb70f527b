"""Host driver for New Era NE-1000 family pumps (RS-232, Basic or Safe mode): a ``PumpDevice``.

Protocol: ``core.ne1000_protocol`` (New Era NE-1000 user manual, Publication #1200-01,
section 10); what the driver relies on and why is in ``hardware/new_era_ne1000.md``.

The protocol has no sequence numbers and Basic mode has no checksum, so trust is built here:

* **Every set-point is verified by reading it back.** A value is rounded to what the device
  holds (4 digits; rates to nearest in the most precise units, volume limits *down* so the
  pump never pumps more than asked), sent, queried, and returned only when the device reports
  exactly that value. An acknowledgement alone is never trusted: it carries no data and could
  be a late reply to an earlier command.
* **Replies are matched by address and shape.** A reply for another address, one whose data
  does not fit the query (a late DIS reply while reading RAT), garbage and partial frames are
  skipped and counted (``LinkStats``). Before each request, frames already received are
  drained; after an unanswered request the driver waits (up to ``stale_horizon_s``) for its
  late reply and drains it too, so late replies are rarely even seen.
* **Delivered volume (Basic mode) needs two agreeing reads.** A corrupted digit can look valid,
  so the ``DIS`` counters are read until two consecutive reads agree: identical while the pump
  is stopped; while it pumps, never decreasing, moving only in the prompt's direction and by no
  more than the set rate allows in the time between the reads. Each accepted reading must
  also be plausible against the previous one (monotone, within the rate allowed by the time
  elapsed). Otherwise: more reads, then ``DeviceProtocolError``, never a value. In Safe mode
  the CRC guards the reply and one read (with the same plausibility check) is used.
* **Counters stay small and precise.** Whenever the driver itself has stopped the pump it reads
  the counters into a host base and clears them (``CLD``): ``delivered_ul`` = base + net
  device counter, continuous across ``reconnect()``. Clearing drops the part of the count
  below the display's last digit (``clear_residual_ul`` sums that bound). Volume units are set
  deliberately: µL (finer) unless a run may exceed 9999 µL.
* **A counter that goes backwards** (power interruption) keeps everything read so far and adds
  the most that could have moved since the last read to ``counter_lost_ul``.
* **RUN is never blindly resent.** After a lost RUN reply the driver reads the prompt and
  counters: pumping, or counters moved, means the RUN was executed; only an unmoved, stopped
  pump gets RUN again. STP is resent freely (its goal, stopped, is idempotent) and repeated
  until the prompt says stopped (a first STP only pauses a running program).
* Alarms (``A?x``) acknowledge themselves at the device when reported; the driver latches them
  (``status().alarm``) until ``clear_alarm()``.

Safe mode: the pump stops with alarm T when no valid packet arrives for ``safe_timeout_s``;
callers must poll (``status()``) more often than that. Timeouts are wall-clock.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

from pump_rig.core.crc16 import crc16_xmodem
from pump_rig.core.ne1000_protocol import (
    MAX_ADDRESS,
    MAX_SAFE_TIMEOUT_S,
    AlarmType,
    Command,
    DeviceNumber,
    Dispensed,
    ErrorCode,
    Prompt,
    ProtocolError,
    RateReading,
    RateSetting,
    Reply,
    Request,
    Rounding,
    VolumeUnits,
    decode_reply,
    encode_request,
    format_number,
    parse_diameter,
    parse_direction,
    parse_dispensed,
    parse_rate,
    parse_version,
    parse_volume,
    rate_limits_ul_per_h,
    rate_setting,
    volume_setting,
    volume_units_for_diameter,
)
from pump_rig.core.pump_device import (
    DeviceAlarm,
    DeviceAlarmKind,
    DeviceDisconnected,
    DeviceError,
    DeviceProtocolError,
    DeviceRejected,
    DeviceState,
    DeviceTimeout,
    LinkStats,
    PumpIdentity,
    PumpStatus,
)
from pump_rig.core.pump_types import Direction
from pump_rig.drivers.serial_link import (
    Framing,
    LengthPrefixedFraming,
    SerialLink,
    StxEtxFraming,
)

BACKEND = "ne1000"
DEFAULT_BAUD = 19200
DEFAULT_TIMEOUT_S = 0.2
DEFAULT_RETRIES = 2
DEFAULT_SAFE_TIMEOUT_S = 10
MAX_AGREEMENT_READS = 5  # Basic mode: reads to get two agreeing DIS/value replies
DISPLAY_LIMIT = Decimal(9999)  # a counter showing this may have stopped counting
RATE_MARGIN = 1.05  # allowance over the set rate when bounding counter motion
MIN_STALE_HORIZON_S = 0.2

_ALARM_KINDS = {
    AlarmType.STALLED: DeviceAlarmKind.STALLED,
    AlarmType.RESET: DeviceAlarmKind.POWER_RESET,
    AlarmType.COMM_TIMEOUT: DeviceAlarmKind.COMM_TIMEOUT,
    AlarmType.PROGRAM_ERROR: DeviceAlarmKind.PROGRAM_ERROR,
    AlarmType.PHASE_OUT_OF_RANGE: DeviceAlarmKind.PROGRAM_ERROR,
}
_ERROR_TEXT = {
    ErrorCode.UNRECOGNIZED: "command not recognized",
    ErrorCode.NOT_APPLICABLE: "command not currently applicable",
    ErrorCode.OUT_OF_RANGE: "command data out of range",
    ErrorCode.COMMUNICATION: "invalid communications packet received",
    ErrorCode.IGNORED: "command ignored (simultaneous new phase start)",
}

T = TypeVar("T")


def framing_for(safe_mode: bool) -> Framing:
    """How the pump's replies are framed in the given mode."""
    return LengthPrefixedFraming(crc16_xmodem) if safe_mode else StxEtxFraming()


@dataclass(frozen=True)
class _Reading:
    """An accepted DIS reading and when it was taken (monotonic seconds)."""

    prompt: Prompt
    dispensed: Dispensed
    t_s: float
    rate_ul_per_h: float = 0.0  # the rate set when it was read (bounds later motion)
    runs: int = 0  # RUN commands the driver had sent when it was read


class _Unmatched(Exception):  # noqa: N818 - internal control flow
    """A frame that decodes but is not the reply awaited."""


class NE1000Driver:
    """One New Era NE-1000 family pump on one serial port. Thread-safe; a ``PumpDevice``."""

    def __init__(
        self,
        link: SerialLink,
        *,
        address: int = 0,
        safe_mode: bool = False,
        retries: int = DEFAULT_RETRIES,
        safe_timeout_s: int = DEFAULT_SAFE_TIMEOUT_S,
    ) -> None:
        if isinstance(address, bool) or not isinstance(address, int):
            raise ValueError(f"address must be an int, got {address!r}")
        if not 0 <= address <= MAX_ADDRESS:
            raise ValueError(f"address must be 0..{MAX_ADDRESS}, got {address!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        if not 1 <= safe_timeout_s <= MAX_SAFE_TIMEOUT_S:
            raise ValueError(f"safe_timeout_s must be 1..{MAX_SAFE_TIMEOUT_S} s")
        self._link = link
        self._address = address
        self._safe = safe_mode
        self._retries = retries
        self._safe_timeout_s = safe_timeout_s
        self._stale_horizon_s = max(4.0 * link.timeout_s, MIN_STALE_HORIZON_S)
        self._lock = threading.RLock()
        self._unanswered: list[float] = []  # send times of requests whose reply is not in
        # What the driver knows of the device (refreshed at every session start).
        self._identity: PumpIdentity | None = None
        self._diameter_mm = 0.0
        self._direction = Direction.INFUSE
        self._rate: RateReading | None = None
        self._volume_units = VolumeUnits.ML
        self._limit_ul = 0.0
        # Delivered volume: base (host) + device net counter - offset.
        self._base_ul = 0.0
        self._offset_ul = 0.0
        self._last: _Reading | None = None
        self._lost_ul = 0.0
        self._clear_residual_ul = 0.0
        # Alarm latched until clear_alarm(); run bookkeeping for limit_reached.
        self._alarm: DeviceAlarmKind | None = None
        self._run_active = False
        self._limit_reached = False
        self._runs = 0
        self._start_session(first=True)

    @classmethod
    def open(
        cls,
        port: str,
        *,
        baud: int = DEFAULT_BAUD,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        address: int = 0,
        safe_mode: bool = False,
        retries: int = DEFAULT_RETRIES,
        safe_timeout_s: int = DEFAULT_SAFE_TIMEOUT_S,
    ) -> NE1000Driver:
        """Open ``port`` (8N1), put the pump in the asked mode and take stock of it."""
        link = SerialLink.open(port, baud=baud, timeout_s=timeout_s, framing=framing_for(safe_mode))
        try:
            return cls(
                link,
                address=address,
                safe_mode=safe_mode,
                retries=retries,
                safe_timeout_s=safe_timeout_s,
            )
        except BaseException:
            link.close()
            raise

    # ---- PumpDevice ---------------------------------------------------------------------------
    @property
    def port(self) -> str:
        return self._link.port

    @property
    def stats(self) -> LinkStats:
        return self._link.stats

    @property
    def address(self) -> int:
        return self._address

    @property
    def safe_mode(self) -> bool:
        return self._safe

    @property
    def clear_residual_ul(self) -> float:
        """Upper bound of the volume dropped by clearing counters below their last digit."""
        return self._clear_residual_ul

    def identify(self) -> PumpIdentity:
        with self._lock:
            version = self._query_agreed(Command.VERSION, parse_version)
            self._identity = PumpIdentity(BACKEND, version.model, version.firmware, "")
            return self._identity

    def configure_syringe(self, inner_diameter_mm: float) -> float:
        number = _device_number("inner_diameter_mm", inner_diameter_mm, Rounding.NEAREST)
        with self._lock:
            self._fold_and_clear()
            self._set(Command.DIAMETER, number.text)
            applied = self._query_agreed(Command.DIAMETER, parse_diameter)
            if applied.value != number.value:
                raise DeviceProtocolError(f"DIA read back {applied.text} mm, sent {number.text} mm")
            self._diameter_mm = float(applied.value)
            self._limit_ul = 0.0
            # Volume units on purpose (the manufacturer's rule, which DIA also applies).
            self._ensure_volume_units(volume_units_for_diameter(self._diameter_mm))
            self._rate = self._query_agreed(Command.RATE, parse_rate)  # may now be out of range
            self._rebase()
            return float(applied.value)

    def set_rate(self, rate_ul_per_h: float) -> float:
        if (
            isinstance(rate_ul_per_h, bool)
            or not isinstance(rate_ul_per_h, int | float)
            or not math.isfinite(rate_ul_per_h)
            or rate_ul_per_h <= 0.0
        ):
            raise ValueError(
                f"rate must be a positive finite number of µL/h (an NE-1000 cannot hold "
                f"rate 0: stop() instead), got {rate_ul_per_h!r}"
            )
        with self._lock:
            prompt, current = self._query(Command.RATE, parse_rate)
            if prompt.pumping:
                # Rate units cannot change while pumping: stay in the current ones.
                setting = rate_setting(rate_ul_per_h, units=(current.units,))
                self._set(Command.RATE, setting.number.text)
            else:
                setting = rate_setting(rate_ul_per_h)
                self._set(Command.RATE, setting.argument)
            applied = self._query_agreed(Command.RATE, parse_rate)
            if applied.number.value != setting.number.value or applied.units != setting.units:
                raise DeviceProtocolError(
                    f"RAT read back {applied.number.text}{applied.units.value}, "
                    f"sent {setting.argument}"
                )
            self._rate = applied
            return applied.ul_per_h

    def set_direction(self, direction: Direction) -> Direction:
        direction = Direction(direction)
        with self._lock:
            if self._query_agreed(Command.DIRECTION, parse_direction) is not direction:
                self._set(Command.DIRECTION, direction.value)
                applied = self._query_agreed(Command.DIRECTION, parse_direction)
                if applied is not direction:
                    raise DeviceProtocolError(f"DIR read back {applied.value}, sent {direction}")
            self._direction = direction
            return direction

    def set_volume_limit(self, volume_ul: float) -> float:
        if (
            isinstance(volume_ul, bool)
            or not isinstance(volume_ul, int | float)
            or not math.isfinite(volume_ul)
            or volume_ul < 0.0
        ):
            raise ValueError(f"volume limit must be a finite number >= 0 µL, got {volume_ul!r}")
        units = self._units_for_limit(volume_ul)
        setting = volume_setting(volume_ul, units, rounding=Rounding.DOWN)
        if volume_ul > 0.0 and setting.number.value == 0:
            # VOL 0 means "pump continuously": never let rounding turn a limit into none.
            raise ValueError(
                f"volume limit {volume_ul!r} µL is below the device's smallest "
                f"({units.value}, 3 decimals)"
            )
        with self._lock:
            self._ensure_volume_units(units)
            self._set(Command.VOLUME, setting.number.text)
            applied = self._query_agreed(Command.VOLUME, parse_volume)
            if applied.number.value != setting.number.value or applied.units != units:
                raise DeviceProtocolError(
                    f"VOL read back {applied.number.text}{applied.units.value}, "
                    f"sent {setting.number.text}{units.value}"
                )
            self._limit_ul = applied.ul
            self._limit_reached = False
            return applied.ul

    def start(self) -> None:
        with self._lock:
            before = self._read_counters()
            if self._alarm is not None:
                # An alarm stops delivery until it is acknowledged: no RUN before clear_alarm().
                raise DeviceAlarm(self._alarm, "RUN not sent: clear_alarm() first")
            if before.prompt.pumping:
                self._run_active = True
                return
            if before.prompt is not Prompt.STOPPED:
                self._stop_program()  # paused: RUN would resume the old target, not start
                before = self._read_counters()
            self._limit_reached = False
            request = self._request(Command.RUN)
            failure: DeviceError | None = None
            for _attempt in range(self._retries + 1):
                self._runs += 1
                try:
                    reply = self._transact(request, expect=_no_data, resend=False)
                except (DeviceTimeout, DeviceProtocolError) as exc:
                    failure = exc
                    if self._run_was_executed(before):
                        break
                    continue  # not executed: the pump is stopped and unmoved
                self._check_command_reply(reply, Command.RUN)
                failure = None
                break
            else:
                assert failure is not None
                raise failure
            self._run_active = True

    def stop(self) -> None:
        with self._lock:
            alarm_before = self._alarm
            self._stop_program()
            self._run_active = False
            self._fold_and_clear()
            if self._alarm is not None and self._alarm is not alarm_before:
                raise DeviceAlarm(self._alarm, "the pump reported an alarm while stopping")

    def status(self) -> PumpStatus:
        with self._lock:
            reading = self._read_counters()
            rate = self._query_agreed(Command.RATE, parse_rate)
            known = self._rate
            if known is not None and (rate.number.value, rate.units) != (
                known.number.value,
                known.units,
            ):
                # Not the rate this driver set and verified: a pair of identically corrupted
                # replies, or a change at the pump's keypad. Neither may pass as a reading.
                raise DeviceProtocolError(
                    f"RAT reads {rate.number.text}{rate.units.value}, but "
                    f"{known.number.text}{known.units.value} was set and verified"
                )
            self._rate = rate
            prompt = reading.prompt
            if self._run_active and not prompt.pumping:
                # The run ended without our STP: an alarm, or the volume to be dispensed reached.
                self._run_active = False
                self._limit_reached = self._alarm is None and self._limit_ul > 0.0
            if self._alarm is DeviceAlarmKind.STALLED:
                state = DeviceState.STALLED
            elif self._alarm is DeviceAlarmKind.PROGRAM_ERROR:
                state = DeviceState.FAULT
            elif prompt.pumping:
                state = DeviceState.RUNNING
            else:
                state = DeviceState.IDLE
            if prompt is Prompt.INFUSING:
                direction = Direction.INFUSE
            elif prompt is Prompt.WITHDRAWING:
                direction = Direction.WITHDRAW
            else:
                direction = self._direction
            dispensed = reading.dispensed
            detail = f"prompt {prompt.value}, DIS {_dis_text(dispensed)}"
            if self._alarm is not None:
                detail += f", alarm {self._alarm.value} (clear_alarm() to acknowledge)"
            return PumpStatus(
                state=state,
                direction=direction,
                rate_ul_per_h=self._rate.ul_per_h,
                delivered_ul=self._delivered_ul(dispensed),
                remaining_ul=None,  # the pump does not know how full the syringe is
                limit_reached=self._limit_reached,
                alarm=self._alarm,
                detail=detail,
                resolution_ul=dispensed.resolution_ul,
                counter_lost_ul=self._lost_ul,
            )

    def clear_alarm(self) -> None:
        """Acknowledge the alarm the way the manual says: a valid command, answered with the
        alarm. Any pending device alarm is acknowledged by the status query; the pump is left
        stopped and the latched alarm is cleared."""
        with self._lock:
            self._query(Command.STATUS, _empty)
            self._stop_program()
            self._alarm = None

    def reconnect(self) -> None:
        with self._lock:
            self._link.reopen()
            self._unanswered.clear()
            self._start_session(first=False)

    def close(self) -> None:
        with self._lock:
            self._link.close()

    # ---- session ------------------------------------------------------------------------------
    def _start_session(self, *, first: bool) -> None:
        # SAF in a Safe packet is understood in either mode; the reply comes in the new mode.
        self._link.set_framing(framing_for(self._safe))
        timeout = str(self._safe_timeout_s if self._safe else 0)
        request = self._request(Command.SAFE_MODE, timeout)
        self._command(request, safe_packet=True, ignore_reset=first)
        version = self._query_agreed(Command.VERSION, parse_version, ignore_reset=first)
        self._identity = PumpIdentity(BACKEND, version.model, version.firmware, "")
        self._diameter_mm = float(self._query_agreed(Command.DIAMETER, parse_diameter).value)
        self._direction = self._query_agreed(Command.DIRECTION, parse_direction)
        self._rate = self._query_agreed(Command.RATE, parse_rate)
        volume = self._query_agreed(Command.VOLUME, parse_volume)
        self._volume_units = volume.units
        self._limit_ul = volume.ul
        if first:
            prompt, dispensed = self._read_dis_agreed()
            self._last = self._reading(prompt, dispensed)
            self._offset_ul = dispensed.net_ul  # delivered counts from now
            if not prompt.pumping:
                self._fold_and_clear()
        else:
            self._read_counters()  # continuity; a counter gone backwards is a lost count

    # ---- counters -----------------------------------------------------------------------------
    def _delivered_ul(self, dispensed: Dispensed) -> float:
        return self._base_ul + dispensed.net_ul - self._offset_ul

    def _read_counters(self) -> _Reading:
        """A trusted DIS reading (see the module notes), with lost-count bookkeeping."""
        last = self._last
        current = self._reading(*self._read_dis_agreed())
        if last is not None and not self._plausible(last, current):
            # Late replies, a corrupted pair, or a real change: drain and look again.
            self._drain(wait_s=self._stale_horizon_s)
            current = self._reading(*self._read_dis_agreed())
            moved_alone = not self._plausible(last, current) and not _decreased(
                last.dispensed, current.dispensed
            )
            if moved_alone and not self._within_motion(last, current):
                raise DeviceProtocolError(
                    f"DIS {_dis_text(current.dispensed)} is not reachable from "
                    f"{_dis_text(last.dispensed)} at the rate set"
                )
            # (Stopped and moved within reach without our RUN: run from its keypad; taken.)
            if _decreased(last.dispensed, current.dispensed):
                # The device lost its counts: keep what was read, bound what was not.
                self._lost_ul += (
                    self._motion_bound_ul(last, current.t_s) + last.dispensed.resolution_ul
                )
                self._base_ul += last.dispensed.net_ul - self._offset_ul
                self._offset_ul = 0.0
        self._last = current
        return current

    def _read_dis_agreed(self) -> tuple[Prompt, Dispensed]:
        """Basic mode: two consecutive reads that agree; Safe mode: one CRC-checked read."""
        reads = 1 if self._safe else MAX_AGREEMENT_READS
        previous: _Reading | None = None
        for _ in range(reads):
            prompt, dispensed = self._query(Command.DISPENSED, parse_dispensed)
            if max(dispensed.infused.value, dispensed.withdrawn.value) >= DISPLAY_LIMIT:
                raise DeviceProtocolError(
                    f"DIS {_dis_text(dispensed)}: a counter is at the display limit, the "
                    f"delivered volume cannot be read (clear it with the pump stopped)"
                )
            current = self._reading(prompt, dispensed)
            if self._safe or (previous is not None and self._consistent(previous, current)):
                return prompt, dispensed
            previous = current
        raise DeviceProtocolError(
            f"no two consistent DIS readings in {reads} reads from {self._link.port}"
        )

    def _reading(self, prompt: Prompt, dispensed: Dispensed) -> _Reading:
        rate = self._rate.ul_per_h if self._rate is not None else 0.0
        return _Reading(prompt, dispensed, time.monotonic(), rate, self._runs)

    def _plausible(self, last: _Reading, current: _Reading) -> bool:
        """Can the counters have gone from ``last`` to ``current``? Never backwards; not at
        all while stopped unless a RUN went out since; within the rate's reach."""
        a, b = last.dispensed, current.dispensed
        if a.units is not b.units or _decreased(a, b):
            return False
        if not last.prompt.pumping and current.runs == last.runs:
            return (a.infused.value, a.withdrawn.value) == (b.infused.value, b.withdrawn.value)
        return self._within_motion(last, current)

    def _within_motion(self, last: _Reading, current: _Reading) -> bool:
        a, b = last.dispensed, current.dispensed
        moved = (b.infused.value - a.infused.value) + (b.withdrawn.value - a.withdrawn.value)
        allowed = self._motion_bound_ul(last, current.t_s) + a.resolution_ul + b.resolution_ul
        return a.units is b.units and moved * b.units.ul <= Decimal(repr(allowed))

    def _consistent(self, earlier: _Reading, later: _Reading) -> bool:
        """Do two back-to-back reads agree (Basic mode's stand-in for a checksum)?"""
        a, b = earlier.dispensed, later.dispensed
        if a.units is not b.units:
            return False
        d_inf = b.infused.value - a.infused.value
        d_wdr = b.withdrawn.value - a.withdrawn.value
        if d_inf < 0 or d_wdr < 0:
            return False
        if not earlier.prompt.pumping and later.prompt.pumping:
            return False  # nothing here starts the pump between two reads
        if not earlier.prompt.pumping and (d_inf or d_wdr or earlier.prompt != later.prompt):
            return False
        if earlier.prompt is Prompt.INFUSING and d_wdr:
            return False
        if earlier.prompt is Prompt.WITHDRAWING and d_inf:
            return False
        allowed = self._motion_bound_ul(earlier, later.t_s) + a.resolution_ul + b.resolution_ul
        return (d_inf + d_wdr) * b.units.ul <= Decimal(repr(allowed))

    def _motion_bound_ul(self, since: _Reading, now_s: float) -> float:
        """Most the plunger can have moved between ``since`` and ``now_s``."""
        rate = max(since.rate_ul_per_h, self._rate.ul_per_h if self._rate is not None else 0.0)
        if since.prompt is Prompt.PURGING or rate <= 0.0:
            rate = rate_limits_ul_per_h(max(self._diameter_mm, 0.1))[1]
        elapsed_s = max(now_s - since.t_s, 0.0) + self._link.timeout_s
        return rate * RATE_MARGIN * elapsed_s / 3600.0

    def _fold_and_clear(self) -> None:
        """With the pump stopped: move the counters into the host base and clear them."""
        reading = self._read_counters()
        if reading.prompt.pumping:
            return
        dispensed = reading.dispensed
        self._base_ul += dispensed.net_ul - self._offset_ul
        self._offset_ul = dispensed.net_ul
        if dispensed.infused.value == 0 and dispensed.withdrawn.value == 0:
            return
        self._clear_residual_ul += dispensed.resolution_ul
        for counter in (Direction.INFUSE, Direction.WITHDRAW):
            # Whatever the counters hold afterwards is read back below either way.
            with contextlib.suppress(DeviceTimeout, DeviceProtocolError, DeviceRejected):
                self._set(Command.CLEAR_DISPENSED, counter.value)
        self._rebase()

    def _rebase(self) -> None:
        """The counters changed by our own command (CLD, units): take them as they are."""
        prompt, dispensed = self._read_dis_agreed()
        if prompt.pumping:
            raise DeviceProtocolError("the pump started pumping while its counters were reset")
        self._offset_ul = dispensed.net_ul
        self._last = self._reading(prompt, dispensed)

    def _units_for_limit(self, volume_ul: float) -> VolumeUnits:
        if volume_ul > 0.0:
            # The run cannot move more than its limit: µL while that fits 4 digits.
            return VolumeUnits.UL if volume_ul < 9999.0 else VolumeUnits.ML
        return volume_units_for_diameter(self._diameter_mm)

    def _ensure_volume_units(self, units: VolumeUnits) -> None:
        current = self._query_agreed(Command.VOLUME, parse_volume)
        if current.units is not units:
            self._fold_and_clear()
            self._set(Command.VOLUME, units.value)
            current = self._query_agreed(Command.VOLUME, parse_volume)
            if current.units is not units:
                raise DeviceProtocolError(f"VOL units read back {current.units}, set {units}")
            self._rebase()
        self._volume_units = units

    # ---- run control --------------------------------------------------------------------------
    def _stop_program(self) -> None:
        """STP until the prompt says stopped (running -> paused -> stopped)."""
        request = self._request(Command.STOP)
        for _ in range(3):
            reply = self._transact(request, expect=_no_data, resend=True)
            if reply.alarm is not None:
                self._latch(reply.alarm)
                continue
            if reply.error is not None:
                raise _rejected(reply.error, Command.STOP)
            prompt = self._prompt_agreed()
            if not prompt.pumping and prompt is not Prompt.PAUSED:
                return
        raise DeviceProtocolError(f"{self._link.port}: the pump did not stop after 3 STP")

    def _prompt_agreed(self) -> Prompt:
        """The prompt from a status query (Basic mode: two agreeing replies)."""
        prompt, _ = self._query(Command.STATUS, _empty)
        if self._safe:
            return prompt
        for _ in range(MAX_AGREEMENT_READS - 1):
            again, _ = self._query(Command.STATUS, _empty)
            if again is prompt:
                return prompt
            prompt = again
        raise DeviceProtocolError(f"no two agreeing status replies in {MAX_AGREEMENT_READS}")

    def _run_was_executed(self, before: _Reading) -> bool:
        """After a RUN without a trusted reply: did the pump act on it?"""
        after = self._read_counters()
        if after.prompt.pumping:
            return True
        a, b = before.dispensed, after.dispensed
        return (b.infused.value, b.withdrawn.value) != (a.infused.value, a.withdrawn.value)

    # ---- transactions -------------------------------------------------------------------------
    def _request(self, command: Command, argument: str = "") -> Request:
        return Request(command, argument, address=self._address)

    def _set(self, command: Command, argument: str) -> None:
        """An idempotent set command (resent on a lost reply); its value is checked by the
        caller's read-back, never by the acknowledgement."""
        self._command(self._request(command, argument))

    def _command(
        self, request: Request, *, safe_packet: bool | None = None, ignore_reset: bool = False
    ) -> None:
        for _ in range(3):
            reply = self._transact(request, expect=_no_data, resend=True, safe_packet=safe_packet)
            if reply.alarm is not None:
                if not (ignore_reset and reply.alarm is AlarmType.RESET):
                    self._latch(reply.alarm)
                    raise DeviceAlarm(
                        _ALARM_KINDS[reply.alarm],
                        f"{request.command.value} not executed: pump alarm {reply.alarm.value}",
                    )
                continue  # acknowledged by that reply: send the command again
            if reply.error is not None:
                raise _rejected(reply.error, request.command)
            return
        raise DeviceProtocolError(f"{request.command.value}: the pump kept answering alarms")

    def _check_command_reply(self, reply: Reply, command: Command) -> None:
        if reply.alarm is not None:
            self._latch(reply.alarm)
            raise DeviceAlarm(
                _ALARM_KINDS[reply.alarm],
                f"{command.value} not executed: pump alarm {reply.alarm.value}",
            )
        if reply.error is not None:
            raise _rejected(reply.error, command)

    def _query(
        self, command: Command, parse: Callable[[str], T], *, ignore_reset: bool = False
    ) -> tuple[Prompt, T]:
        """An idempotent query. An alarm reply is latched (it acknowledged the alarm at the
        device) and the query asked again."""
        request = self._request(command)

        def expect(reply: Reply) -> bool:
            try:
                parse(reply.data)
            except ProtocolError:
                return False
            return True

        for _ in range(3):
            reply = self._transact(request, expect=expect, resend=True)
            if reply.alarm is not None:
                if not (ignore_reset and reply.alarm is AlarmType.RESET):
                    self._latch(reply.alarm)
                continue
            if reply.error is not None:
                raise _rejected(reply.error, command)
            assert reply.prompt is not None
            return reply.prompt, parse(reply.data)
        raise DeviceProtocolError(f"{command.value}: the pump kept answering alarms")

    def _query_agreed(
        self, command: Command, parse: Callable[[str], T], *, ignore_reset: bool = False
    ) -> T:
        """A query value trusted in Basic mode only when two consecutive reads agree."""
        _, value = self._query(command, parse, ignore_reset=ignore_reset)
        if self._safe:
            return value
        for _ in range(MAX_AGREEMENT_READS - 1):
            _, again = self._query(command, parse, ignore_reset=ignore_reset)
            if again == value:
                return value
            value = again
        raise DeviceProtocolError(
            f"{command.value}: no two agreeing replies in {MAX_AGREEMENT_READS} reads"
        )

    def _transact(
        self,
        request: Request,
        *,
        expect: Callable[[Reply], bool],
        resend: bool,
        safe_packet: bool | None = None,
    ) -> Reply:
        """Send ``request``; return the first reply from our address that ``expect`` takes (or
        an error or alarm reply, which answer anything). ``resend``: send again after a lost
        or corrupted reply (idempotent requests only); COM (the pump saw a corrupted packet
        and did nothing) is always answered by sending again."""
        safe_out = self._safe if safe_packet is None else safe_packet
        frame = encode_request(request, safe=safe_out)
        attempts = self._retries + 1
        corrupted_before = self._link.stats.protocol_errors

        def accept(raw: bytes) -> bool:
            try:
                reply = decode_reply(raw, safe=self._safe)
            except ProtocolError as exc:
                raise DeviceProtocolError(str(exc)) from exc
            if reply.address != self._address:
                return False
            if reply.alarm is not None or reply.error is not None:
                return True
            return expect(reply)

        self._drain()
        sent: list[float] = []  # attempts whose reply has not been taken yet
        for attempt in range(attempts):
            sent.append(time.monotonic())
            corrupted_attempt = self._link.stats.protocol_errors
            try:
                raw = self._link.transact(frame, accept=accept)
            except DeviceTimeout:
                if self._link.stats.protocol_errors > corrupted_attempt:
                    sent.pop()  # its reply came, corrupted: nothing late to wait for
                if not resend:
                    break
                continue  # a late reply to this attempt still answers the next one
            sent.pop(0)  # replies come in order: this one answers the oldest attempt
            reply = decode_reply(raw, safe=self._safe)
            if reply.error is ErrorCode.COMMUNICATION and attempt + 1 < attempts:
                continue  # the pump discarded a corrupted packet: nothing was executed
            self._unanswered.extend(sent)
            return reply
        self._unanswered.extend(sent)
        corrupted = self._link.stats.protocol_errors - corrupted_before
        what = f"{request.command.value or 'status'} to {self._link.port}"
        if corrupted:
            raise DeviceProtocolError(
                f"no valid reply to {what} ({corrupted} corrupted frame(s) received)"
            )
        raise DeviceTimeout(
            f"no reply to {what} within {self._link.timeout_s * 1000:.0f} ms"
            + (f" ({attempts} attempts)" if resend else " (not resent)")
        )

    def _drain(self, wait_s: float = 0.0) -> None:
        """Take stale frames off the link before a request: those already here, and late
        replies to unanswered requests (waiting for them up to the stale horizon)."""
        link = self._link
        now = time.monotonic()
        self._unanswered = [t for t in self._unanswered if now - t < self._stale_horizon_s]
        deadline = now + wait_s
        if self._unanswered:
            deadline = max(deadline, self._unanswered[-1] + self._stale_horizon_s)
        while True:
            remaining = deadline - time.monotonic()
            waiting = bool(self._unanswered) or wait_s > 0.0
            raw = link.poll_frame(max(remaining, 0.0) if waiting and remaining > 0 else 0.0)
            if raw is None:
                return
            self._discard(raw)
            if self._unanswered:
                self._unanswered.pop(0)

    def _discard(self, raw: bytes) -> None:
        try:
            reply = decode_reply(raw, safe=self._safe)
        except ProtocolError:
            self._link.count_protocol_errors()
            return
        self._link.count_discarded()
        if reply.address == self._address and reply.alarm is not None:
            self._latch(reply.alarm)  # stale or auto-alarm: the alarm itself is real

    def _latch(self, alarm: AlarmType) -> None:
        kind = _ALARM_KINDS[alarm]
        if self._alarm is None or kind is DeviceAlarmKind.STALLED:
            self._alarm = kind
        if alarm is AlarmType.STALLED or alarm is AlarmType.COMM_TIMEOUT:
            self._run_active = False  # the run ended on the alarm, not on its limit


def _no_data(reply: Reply) -> bool:
    return reply.data == ""


def _empty(data: str) -> None:
    if data:
        raise ProtocolError(f"expected no data, got {data!r}")


def _decreased(before: Dispensed, after: Dispensed) -> bool:
    return after.infused_ul < before.infused_ul or after.withdrawn_ul < before.withdrawn_ul


def _dis_text(dispensed: Dispensed) -> str:
    return f"I{dispensed.infused.text}W{dispensed.withdrawn.text}{dispensed.units.value}"


def _rejected(code: ErrorCode, command: Command) -> DeviceRejected:
    return DeviceRejected(
        code.value or "?", _ERROR_TEXT[code], command=command.value or "status query"
    )


def _device_number(name: str, value: float, rounding: Rounding) -> DeviceNumber:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    number = format_number(value, rounding)
    if number.value == 0:
        raise ValueError(f"{name} {value!r} is below the device's 0.001")
    return number


__all__ = [
    "BACKEND",
    "DEFAULT_BAUD",
    "DEFAULT_RETRIES",
    "DEFAULT_SAFE_TIMEOUT_S",
    "DEFAULT_TIMEOUT_S",
    "DeviceDisconnected",
    "NE1000Driver",
    "RateSetting",
    "framing_for",
]
