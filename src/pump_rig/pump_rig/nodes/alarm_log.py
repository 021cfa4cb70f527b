"""Every alarm a node raises or clears goes to its log once, at a level matching its severity:
an operator watching a terminal (`pumprig up`, `ros2 launch`) learns what the rig did, not only
a subscriber of ``alarms``."""

from __future__ import annotations

from typing import Any

from pump_rig_interfaces.msg import Alarm

_NAMES = {Alarm.INFO: "INFO", Alarm.WARNING: "WARNING", Alarm.CRITICAL: "CRITICAL"}


def log_alarm(logger: Any, severity: int, code: str, active: bool, message: str) -> None:
    """One line: ``CRITICAL DOSE_LIMIT raised: ...`` (error), ``WARNING ... raised`` (warn),
    ``... cleared: ...`` (info)."""
    name = _NAMES.get(severity, str(severity))
    if not active:
        logger.info(f"{name} {code} cleared: {message}")
    elif severity >= Alarm.CRITICAL:
        logger.error(f"{name} {code} raised: {message}")
    elif severity >= Alarm.WARNING:
        logger.warning(f"{name} {code} raised: {message}")
    else:
        logger.info(f"{name} {code}: {message}")
