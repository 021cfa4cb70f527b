"""What the motor driver lets the pump do, whatever it is told (DESIGN safety invariants 1, 2).

The driver is the last line of defence: it enforces its own rate and volume limits, stops the
pump when commands go stale or the emergency stop is engaged, and after any such stop it runs
again only on a *new* command (a higher sequence number), never on a repeat of the command that
was in force when it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pump_rig.core.pump_types import Direction, PumpAction


@dataclass(frozen=True)
class DriveLimits:
    max_rate_ul_per_h: float
    # Largest volume limit a single command may carry (a bolus, a prime); a command asking for
    # more is refused. Continuous basal commands carry no limit and are bounded by the rate.
    max_volume_per_command_ul: float
    # A RUN command older than this (ROS time) is stale: stop the pump.
    command_timeout_s: float
    # ...and older than this in wall time too. Staleness guards against a hung *process*; in an
    # accelerated simulation a few milliseconds of scheduling jitter are many simulated
    # seconds, so the ROS-time timeout alone would fire on a healthy controller. 0 = no minimum.
    command_timeout_wall_s: float = 0.0
    # The slowest the device can pump (its profile at the fitted syringe); a running command
    # below it is refused rather than left to the device to reject. 0 = no floor.
    min_rate_ul_per_h: float = 0.0

    def __post_init__(self) -> None:
        for name in ("max_rate_ul_per_h", "max_volume_per_command_ul", "command_timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: must be a finite number > 0 (got {value})")
        if not (0.0 <= self.min_rate_ul_per_h <= self.max_rate_ul_per_h):
            raise ValueError(
                f"min_rate_ul_per_h: must be within 0..max_rate_ul_per_h "
                f"(got {self.min_rate_ul_per_h})"
            )
        if not math.isfinite(self.command_timeout_wall_s) or self.command_timeout_wall_s < 0:
            raise ValueError(
                f"command_timeout_wall_s: must be a finite number >= 0 "
                f"(got {self.command_timeout_wall_s})"
            )


@dataclass(frozen=True)
class DriveTarget:
    """What the device should be doing now."""

    running: bool
    direction: Direction
    rate_ul_per_h: float
    volume_limit_ul: float
    sequence: int
    reason: str
    # Stop when the device counter reaches this (0 = none): see PumpCommand.stop_at_delivered_ul.
    stop_at_delivered_ul: float = 0.0


@dataclass(frozen=True)
class CommandVerdict:
    accepted: bool
    message: str


class DrivePolicy:
    """Turns PumpCommands, estop and the passage of time into a device target."""

    def __init__(self, limits: DriveLimits) -> None:
        self.limits = limits
        self._action = PumpAction.STOP
        self._rate_ul_per_h = 0.0
        self._volume_limit_ul = 0.0
        self._stop_at_ul = 0.0
        self._sequence = 0
        self._last_command_s: float | None = None
        self._last_command_wall_s: float | None = None
        # Engaged emergency stops, by the source that engaged each (only it releases it).
        self._estops: dict[str, str] = {}
        # Commands with a sequence <= this may not start the pump (set by every safety stop).
        self._rearm_after_sequence: int | None = None
        self._stop_reason = "no command yet"

    @property
    def estopped(self) -> bool:
        return bool(self._estops)

    @property
    def _estop_reason(self) -> str | None:
        if not self._estops:
            return None
        return "; ".join(
            f"{src}: {why}" if src else why for src, why in sorted(self._estops.items())
        )

    @property
    def last_sequence(self) -> int:
        return self._sequence

    def on_command(
        self,
        t_s: float,
        action: int,
        flow_rate_ul_per_h: float,
        volume_limit_ul: float,
        sequence: int,
        wall_s: float | None = None,
        stop_at_delivered_ul: float = 0.0,
    ) -> CommandVerdict:
        """Take a command (or heartbeat) received at ROS time ``t_s`` (and monotonic wall time
        ``wall_s``, when known). A command outside the limits stops the pump."""
        self._last_command_s = t_s
        self._last_command_wall_s = wall_s
        try:
            parsed = PumpAction(action)
        except ValueError:
            return self._refuse(sequence, f"unknown action {action}")
        if parsed != PumpAction.STOP:
            if not math.isfinite(flow_rate_ul_per_h) or flow_rate_ul_per_h < 0:
                return self._refuse(sequence, f"invalid rate {flow_rate_ul_per_h} µL/h")
            if flow_rate_ul_per_h > self.limits.max_rate_ul_per_h:
                return self._refuse(
                    sequence,
                    f"rate {flow_rate_ul_per_h:g} µL/h above the driver limit "
                    f"{self.limits.max_rate_ul_per_h:g} µL/h",
                )
            if 0.0 < flow_rate_ul_per_h < self.limits.min_rate_ul_per_h:
                return self._refuse(
                    sequence,
                    f"rate {flow_rate_ul_per_h:g} µL/h below the {self.limits.min_rate_ul_per_h:g} "
                    f"µL/h the pump can deliver with this syringe (fit a narrower one)",
                )
            if not math.isfinite(volume_limit_ul) or volume_limit_ul < 0:
                return self._refuse(sequence, f"invalid volume limit {volume_limit_ul} µL")
            if not math.isfinite(stop_at_delivered_ul) or stop_at_delivered_ul < 0:
                return self._refuse(sequence, f"invalid stop at {stop_at_delivered_ul} µL")
            if volume_limit_ul > self.limits.max_volume_per_command_ul:
                return self._refuse(
                    sequence,
                    f"volume limit {volume_limit_ul:g} µL above the driver limit "
                    f"{self.limits.max_volume_per_command_ul:g} µL",
                )
        self._action = parsed
        self._rate_ul_per_h = flow_rate_ul_per_h if parsed != PumpAction.STOP else 0.0
        self._volume_limit_ul = volume_limit_ul
        self._stop_at_ul = stop_at_delivered_ul if parsed != PumpAction.STOP else 0.0
        self._sequence = sequence
        if self._estop_reason is not None:
            # Sent by someone who may not know about the estop: it must not start the pump
            # when the estop is released.
            self._safety_stop()
        return CommandVerdict(True, "")

    def on_estop(self, engaged: bool, reason: str, source: str = "") -> str | None:
        """An estop engaged or released by ``source``. Only the source that engaged an
        estop releases it (an operator's clear goes through that source, the pressure
        monitor): a release from anyone else is refused, with the reason returned."""
        if engaged:
            self._estops[source] = reason or "emergency stop"
            self._safety_stop()
            return None
        if source in self._estops:
            del self._estops[source]
            return None
        if not self._estops:
            return None  # nothing engaged: nothing to release
        holders = ", ".join(sorted(s or "(unnamed)" for s in self._estops))
        return f"estop release from {source or '(unnamed)'} refused: engaged by {holders}"

    def on_device_fault(self) -> None:
        """The device misbehaved or vanished: whatever happens next needs a fresh command."""
        self._safety_stop()

    def is_stale(self, t_s: float, wall_s: float | None = None) -> bool:
        """True when a running command has not been refreshed within the timeout (in ROS time,
        and in wall time when both times are known)."""
        if self._action == PumpAction.STOP or self._last_command_s is None:
            return False
        if t_s - self._last_command_s <= self.limits.command_timeout_s:
            return False
        if wall_s is None or self._last_command_wall_s is None:
            return True
        return wall_s - self._last_command_wall_s > self.limits.command_timeout_wall_s

    def target(self, t_s: float, wall_s: float | None = None) -> DriveTarget:
        stop = self._stopped(t_s, wall_s)
        direction = Direction.WITHDRAW if self._action == PumpAction.WITHDRAW else Direction.INFUSE
        if stop is not None:
            return DriveTarget(False, direction, 0.0, 0.0, self._sequence, stop)
        return DriveTarget(
            True,
            direction,
            self._rate_ul_per_h,
            self._volume_limit_ul,
            self._sequence,
            "",
            self._stop_at_ul,
        )

    def _stopped(self, t_s: float, wall_s: float | None) -> str | None:
        if self._estop_reason is not None:
            return f"estop: {self._estop_reason}"
        if self.is_stale(t_s, wall_s):
            self._safety_stop()
            return "command stale"
        if self._action == PumpAction.STOP:
            return self._stop_reason
        if self._rearm_after_sequence is not None:
            if self._sequence <= self._rearm_after_sequence:
                return "stopped for safety: waiting for a new command"
            self._rearm_after_sequence = None
        if self._rate_ul_per_h == 0.0:
            return "rate 0"
        return None

    def _refuse(self, sequence: int, message: str) -> CommandVerdict:
        self._action = PumpAction.STOP
        self._rate_ul_per_h = 0.0
        self._sequence = sequence
        self._stop_reason = f"command refused: {message}"
        self._safety_stop()
        return CommandVerdict(False, message)

    def _safety_stop(self) -> None:
        self._rearm_after_sequence = max(self._sequence, self._rearm_after_sequence or 0)
        if self._action != PumpAction.STOP:
            self._stop_reason = "stopped for safety"
