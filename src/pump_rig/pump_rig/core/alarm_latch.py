"""Latched alarms: raised once, kept until an explicit clear, whatever the condition does.

A clinician must see that an occlusion happened even if the pressure came back down by itself,
so alarms latch; ``clear`` removes them only when asked (the ``clear_alarms`` service).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(enum.IntEnum):
    """Values match pump_rig_interfaces/msg/Alarm."""

    INFO = 0
    WARNING = 1
    CRITICAL = 2


@dataclass(frozen=True)
class AlarmRecord:
    code: str
    severity: Severity
    active: bool
    message: str
    t_s: float


class AlarmLatch:
    def __init__(self) -> None:
        self._active: dict[str, AlarmRecord] = {}

    def raise_alarm(
        self, t_s: float, code: str, severity: Severity, message: str
    ) -> AlarmRecord | None:
        """Latch ``code``. Returns the record to publish, or None if it was already latched at
        this severity or higher (no repeated alarm storms)."""
        current = self._active.get(code)
        if current is not None and current.severity >= severity:
            return None
        record = AlarmRecord(code, severity, True, message, t_s)
        self._active[code] = record
        return record

    def clear(self, t_s: float, codes: frozenset[str] | None = None) -> list[AlarmRecord]:
        """Clear the latched alarms (all, or the given codes); returns the inactive records."""
        cleared = [
            AlarmRecord(rec.code, rec.severity, False, f"cleared: {rec.message}", t_s)
            for code, rec in sorted(self._active.items())
            if codes is None or code in codes
        ]
        for rec in cleared:
            del self._active[rec.code]
        return cleared

    @property
    def active(self) -> tuple[AlarmRecord, ...]:
        return tuple(self._active.values())

    def has_critical(self) -> bool:
        return any(rec.severity == Severity.CRITICAL for rec in self._active.values())
