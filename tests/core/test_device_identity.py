"""The ledger counts volume on one device: another pump answering on the port (a second rig's
emulator, a pump swapped on the bench) is not counted and nothing is dosed until an operator
confirms the change with a reason, which is journaled."""

from __future__ import annotations

from pathlib import Path

import pytest

from pump_rig.core.pump_types import PumpAction
from pump_rig.core.therapy_engine import (
    DEVICE_CHANGED,
    TherapyEngine,
    TherapyError,
    TherapyState,
)
from tests.core.therapy_fixtures import LIBRARY, T0, continuous_doc, make_program

HOUR = 3600.0
OURS = "OSP-1 fw 1.0.0 sn OSP-EMU-1A2B3C4D (stepper)"
THEIRS = "OSP-1 fw 1.0.0 sn OSP-EMU-9F8E7D6C (stepper)"


def _running(path: Path) -> TherapyEngine:
    engine = TherapyEngine.open(
        t_s=T0,
        library=LIBRARY,
        journal_path=path,
        initial_program=make_program(continuous_doc(concentration=500.0, daily_dose=240.0)),
    )
    engine.on_device_identity(T0, OURS)
    engine.on_device_volume(T0, 0.0)
    engine.command(T0)
    engine.on_device_volume(T0 + HOUR, 20.0, command_applied=True)
    return engine


def test_another_device_on_the_port_is_not_counted_and_nothing_is_dosed(tmp_path: Path) -> None:
    engine = _running(tmp_path / "dose.journal")
    assert engine.snapshot(T0 + HOUR).delivered_volume_ul == pytest.approx(20.0)
    engine.on_device_identity(T0 + HOUR + 1, THEIRS)
    snap = engine.snapshot(T0 + HOUR + 1)
    assert snap.therapy_state is TherapyState.ALARM and DEVICE_CHANGED in snap.active_alarms
    assert THEIRS in snap.detail and OURS in snap.detail
    assert engine.command(T0 + HOUR + 1).action is PumpAction.STOP
    # Its counter (another rig's: 207 mL) books nothing, raises no counter reset.
    engine.on_device_volume(T0 + HOUR + 2, 207_000.0, command_applied=True)
    snap = engine.snapshot(T0 + HOUR + 2)
    assert snap.delivered_volume_ul == pytest.approx(20.0)
    assert "VOLUME_COUNTER_RESET" not in snap.active_alarms
    assert not engine.request_bolus(T0 + HOUR + 2).granted
    # The ledger's own device back (the link re-pointed): counting goes on from its counter.
    engine.on_device_identity(T0 + HOUR + 3, OURS)
    engine.on_device_volume(T0 + 2 * HOUR, 40.0, command_applied=True)
    snap = engine.snapshot(T0 + 2 * HOUR)
    assert DEVICE_CHANGED not in snap.active_alarms
    assert snap.therapy_state is TherapyState.RUNNING
    assert snap.delivered_volume_ul == pytest.approx(40.0)
    engine.close()


def test_a_restarted_controller_knows_its_device_from_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "dose.journal"
    _running(path).close()
    again = TherapyEngine.open(t_s=T0 + 2 * HOUR, library=LIBRARY, journal_path=path)
    again.on_device_identity(T0 + 2 * HOUR, OURS)
    assert again.command(T0 + 2 * HOUR).action is PumpAction.INFUSE
    assert again.snapshot(T0 + 2 * HOUR).therapy_state is TherapyState.RUNNING
    again.on_device_identity(T0 + 2 * HOUR + 1, THEIRS)
    assert again.snapshot(T0 + 2 * HOUR + 1).therapy_state is TherapyState.ALARM
    again.close()


def test_a_swap_counts_only_once_an_operator_confirms_it_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "dose.journal"
    engine = _running(path)
    with pytest.raises(TherapyError, match="nothing to confirm"):
        engine.confirm_device_change(T0 + HOUR, "swapped")
    engine.on_device_identity(T0 + HOUR + 1, THEIRS)
    with pytest.raises(TherapyError, match="reason"):
        engine.confirm_device_change(T0 + HOUR + 1, "  ")
    why = engine.confirm_device_change(T0 + HOUR + 1, "pump 2 replaces pump 1 (motor fault)")
    assert "resume" in why
    snap = engine.snapshot(T0 + HOUR + 1)
    assert snap.therapy_state is TherapyState.SUSPENDED and DEVICE_CHANGED not in snap.active_alarms
    # The new device's counter is a new baseline: its 5 mL so far are not this patient's.
    engine.on_device_volume(T0 + HOUR + 2, 5000.0, command_applied=True)
    engine.resume(T0 + HOUR + 3)
    engine.command(T0 + HOUR + 3)
    engine.on_device_volume(T0 + 2 * HOUR + 3, 5020.0, command_applied=True)
    assert engine.snapshot(T0 + 2 * HOUR + 3).delivered_volume_ul == pytest.approx(40.0)
    engine.close()
    assert "pump 2 replaces pump 1 (motor fault)" in path.read_text(encoding="utf-8")
    reopened = TherapyEngine.open(t_s=T0 + 3 * HOUR, library=LIBRARY, journal_path=path)
    reopened.on_device_identity(T0 + 3 * HOUR, THEIRS)  # the confirmed one is now the ledger's
    assert DEVICE_CHANGED not in reopened.snapshot(T0 + 3 * HOUR).active_alarms
    reopened.close()
