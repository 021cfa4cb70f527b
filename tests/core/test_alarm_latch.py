from __future__ import annotations

from pump_rig.core.alarm_latch import AlarmLatch, Severity


def test_alarm_latches_once_and_upgrades_but_never_downgrades() -> None:
    latch = AlarmLatch()
    first = latch.raise_alarm(1.0, "OCCLUSION", Severity.WARNING, "rising")
    assert first is not None and first.active and first.severity == Severity.WARNING
    assert latch.raise_alarm(2.0, "OCCLUSION", Severity.WARNING, "again") is None
    upgraded = latch.raise_alarm(3.0, "OCCLUSION", Severity.CRITICAL, "occluded")
    assert upgraded is not None and upgraded.severity == Severity.CRITICAL
    assert latch.raise_alarm(4.0, "OCCLUSION", Severity.WARNING, "lower") is None
    assert latch.has_critical()


def test_clear_returns_inactive_records_and_empties_the_latch() -> None:
    latch = AlarmLatch()
    latch.raise_alarm(1.0, "LEAK", Severity.CRITICAL, "pressure fell")
    latch.raise_alarm(1.0, "SENSOR_FAULT", Severity.CRITICAL, "nan")
    cleared = latch.clear(5.0, frozenset({"LEAK"}))
    assert [(r.code, r.active, r.t_s) for r in cleared] == [("LEAK", False, 5.0)]
    assert [r.code for r in latch.active] == ["SENSOR_FAULT"]
    assert [r.code for r in latch.clear(6.0)] == ["SENSOR_FAULT"]
    assert not latch.active and not latch.has_critical()
    # Raised again after a clear, it is new.
    assert latch.raise_alarm(7.0, "LEAK", Severity.CRITICAL, "again") is not None
