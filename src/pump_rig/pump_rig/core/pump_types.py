"""Small value types shared by the pump model, the device protocols and the controller."""

from __future__ import annotations

import enum


class PumpAction(enum.IntEnum):
    """What a PumpCommand asks for (values match pump_rig_interfaces/msg/PumpCommand)."""

    STOP = 0
    INFUSE = 1
    WITHDRAW = 2


class Direction(enum.Enum):
    INFUSE = "INF"
    WITHDRAW = "WDR"


class PumpRunState(enum.IntEnum):
    """What the pump mechanics are doing."""

    IDLE = 0
    RUNNING = 1
    STALLED = 2


SECONDS_PER_HOUR = 3600.0
SECONDS_PER_DAY = 86400.0
