"""Fault kinds the mock bench can be told to produce (``inject_fault`` / ``pumprig fault``)."""

from __future__ import annotations

import enum


class FaultKind(enum.StrEnum):
    """Everything that can go wrong on the bench, by where it happens."""

    # Fluid line
    OCCLUSION = "occlusion"  # catheter blocked: resistance up by orders of magnitude
    PARTIAL_OCCLUSION = "partial_occlusion"  # kinked catheter: resistance up by a factor
    LEAK = "leak"  # disconnection or tear: a parallel path to 0 kPa
    # Pump mechanics
    MOTOR_STALL = "motor_stall"  # plunger blocked while the motor is commanded
    # Pressure sensor
    SENSOR_DROPOUT = "sensor_dropout"  # no samples at all
    SENSOR_STUCK = "sensor_stuck"  # the last value repeated
    SENSOR_NAN = "sensor_nan"  # NaN readings
    SENSOR_DRIFT = "sensor_drift"  # slow offset growth
    SENSOR_SPIKES = "sensor_spikes"  # occasional large single-sample spikes
    # Serial device
    SERIAL_GARBAGE = "serial_garbage"  # random bytes mixed into replies
    SERIAL_DROP = "serial_drop"  # replies not sent
    SERIAL_DELAY = "serial_delay"  # replies sent late
    UNPLUG = "unplug"  # the serial port vanishes

    @classmethod
    def parse(cls, text: str) -> FaultKind:
        """Return the kind named by ``text`` or raise ValueError listing the known kinds."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            known = ", ".join(k.value for k in cls)
            raise ValueError(f"unknown fault kind {text!r}; known kinds: {known}") from None


LINE_FAULTS = frozenset({FaultKind.OCCLUSION, FaultKind.PARTIAL_OCCLUSION, FaultKind.LEAK})
SENSOR_FAULTS = frozenset(
    {
        FaultKind.SENSOR_DROPOUT,
        FaultKind.SENSOR_STUCK,
        FaultKind.SENSOR_NAN,
        FaultKind.SENSOR_DRIFT,
        FaultKind.SENSOR_SPIKES,
    }
)
SERIAL_FAULTS = frozenset(
    {FaultKind.SERIAL_GARBAGE, FaultKind.SERIAL_DROP, FaultKind.SERIAL_DELAY, FaultKind.UNPLUG}
)
