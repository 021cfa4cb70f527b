"""The driver seam: what the rig needs from a syringe pump, whatever protocol it speaks.

``motor_driver`` talks to every pump family through ``PumpDevice`` and nothing else; a backend
(``drivers.backends``) pairs a family's driver with its byte-level emulator. Every failure is
one of the typed ``DeviceError`` kinds below, so the node decides what to do from the kind,
never from a protocol's error text.

Volumes are µL, rates µL/h, diameters mm, pressures kPa. A device applies a set-point as it
can (a New Era pump keeps four significant digits, a stepper whole microsteps): every setter
returns the value the device *applied*, which is what expectations must be built on.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Protocol

from pump_rig.core.pump_types import Direction

# ---- typed errors ------------------------------------------------------------------------------


class DeviceError(Exception):
    """Anything that went wrong talking to a device."""


class DeviceTimeout(DeviceError):  # noqa: N818 - names fixed by the driver contract
    """No (valid) reply within the allowed time, after any retries."""


class DeviceProtocolError(DeviceError):
    """The device answered, but with frames that could not be trusted (corrupted, malformed,
    or an answer that does not fit the request)."""


class DeviceRejected(DeviceError):  # noqa: N818 - names fixed by the driver contract
    """The device understood the request and refused it with an error code."""

    def __init__(self, code: int | str, message: str, *, command: str | None = None) -> None:
        what = f"{command} " if command else ""
        super().__init__(f"device rejected {what}request: error {code}: {message}")
        self.code = code
        self.message = message
        self.command = command


class DeviceAlarm(DeviceError):  # noqa: N818 - names fixed by the driver contract
    """The device reports an alarm of its own (stall, power interrupted, ...): it has stopped
    pumping, or cannot be trusted to be pumping as set, until the alarm is cleared."""

    def __init__(self, alarm: DeviceAlarmKind, message: str) -> None:
        super().__init__(f"device alarm {alarm.value}: {message}")
        self.alarm = alarm
        self.message = message


class DeviceDisconnected(DeviceError):  # noqa: N818 - names fixed by the driver contract
    """The port is missing or vanished (unplugged, powered off, wrong path)."""


# ---- values ------------------------------------------------------------------------------------


class DeviceState(enum.StrEnum):
    """What the device says its motor is doing."""

    IDLE = "IDLE"
    RUNNING = "RUNNING"
    STALLED = "STALLED"
    FAULT = "FAULT"


class DeviceAlarmKind(enum.StrEnum):
    """Alarms a device can raise by itself, whatever its protocol calls them."""

    STALLED = "STALLED"  # the motor cannot move the plunger (occlusion, end stop, jam)
    POWER_RESET = "POWER_RESET"  # power was interrupted: set-points and counters may be lost
    COMM_TIMEOUT = "COMM_TIMEOUT"  # the device's own link watchdog stopped it
    PROGRAM_ERROR = "PROGRAM_ERROR"  # the device's stored program is invalid
    OTHER = "OTHER"


@dataclass(frozen=True)
class PumpIdentity:
    """Who answered on the port. ``serial`` is empty when the device does not tell one."""

    backend: str
    model: str
    firmware: str
    serial: str = ""

    def __str__(self) -> str:
        serial = f" sn {self.serial}" if self.serial else ""
        return f"{self.model} fw {self.firmware}{serial} ({self.backend})"


@dataclass(frozen=True)
class PumpStatus:
    """One reading of the device.

    ``delivered_ul`` is the net volume (infused minus withdrawn) the device has counted since
    the driver first connected. Drivers that clear a device counter to keep its resolution add
    what they cleared, so it only moves with the plunger; ``counter_lost_ul`` is non-zero when
    the device lost counted volume the driver had not yet read (a power interruption), which
    is then missing from ``delivered_ul`` by at most that much.
    ``resolution_ul``: the smallest volume the device counts or stops on at its diameter.
    """

    state: DeviceState
    direction: Direction
    rate_ul_per_h: float
    delivered_ul: float
    remaining_ul: float | None = None
    pressure_kpa: float | None = None
    limit_reached: bool = False
    alarm: DeviceAlarmKind | None = None
    detail: str = ""
    resolution_ul: float = 0.0
    counter_lost_ul: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", DeviceState(self.state))
        object.__setattr__(self, "direction", Direction(self.direction))
        for name in ("rate_ul_per_h", "delivered_ul", "resolution_ul", "counter_lost_ul"):
            _check_finite(name, getattr(self, name))
        for name in ("remaining_ul", "pressure_kpa"):
            value = getattr(self, name)
            if value is not None:
                _check_finite(name, value)

    @property
    def running(self) -> bool:
        return self.state is DeviceState.RUNNING


def _check_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class LinkStats:
    """Counters of a serial link since it was created (they survive reconnects)."""

    requests: int = 0  # request frames written (retries included)
    replies: int = 0  # reply frames accepted
    timeouts: int = 0  # transactions that ended without an accepted reply
    protocol_errors: int = 0  # corrupted / malformed / over-long frames skipped
    discarded_lines: int = 0  # well-formed frames that were not the awaited reply (stale)
    last_rtt_s: float | None = None
    mean_rtt_s: float | None = None


class PumpDevice(Protocol):
    """One syringe pump on one serial port. Implementations are thread-safe.

    Every method may raise ``DeviceError`` (a subclass says which kind); ``ValueError`` means
    the argument itself is impossible and nothing was sent. A timeout does not mean "not
    executed": callers re-read ``status()`` rather than assume either way.
    """

    @property
    def port(self) -> str: ...

    @property
    def stats(self) -> LinkStats: ...

    def identify(self) -> PumpIdentity:
        """Ask the device who it is (model, firmware, serial number if any)."""
        ...

    def configure_syringe(self, inner_diameter_mm: float) -> float:
        """Set the syringe inner diameter (pump stopped); return the diameter read back."""
        ...

    def set_rate(self, rate_ul_per_h: float) -> float:
        """Set the pumping rate (allowed while running); return the rate the device applied."""
        ...

    def set_direction(self, direction: Direction) -> Direction:
        """Infuse or withdraw (pump stopped, or unchanged while running)."""
        ...

    def set_volume_limit(self, volume_ul: float) -> float:
        """Stop after ``volume_ul`` from the next start (0 = no limit). The applied limit is
        never above the one asked for: a device that must round, rounds down."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> PumpStatus:
        """Read state and delivered volume. A device alarm is reported in ``alarm``, not raised;
        other commands raise ``DeviceAlarm`` when the device answers them with an alarm."""
        ...

    def clear_alarm(self) -> None:
        """Acknowledge a device alarm (after which the device is stopped and may run again)."""
        ...

    def reconnect(self) -> None:
        """Reopen the same port path (after a replug); ``DeviceDisconnected`` if still gone."""
        ...

    def close(self) -> None: ...
