"""Pressure samples and pump commands reach the physics in time order."""

from __future__ import annotations

import pytest

from pump_rig.core.bench_model import BenchModel, BenchParams
from pump_rig.core.bench_session import BenchSession


def session(period_s: float = 10.0) -> BenchSession:
    return BenchSession(
        BenchModel(BenchParams(seed=3), t0_s=100.0), sample_period_s=period_s, t0_s=100.0
    )


def test_samples_fall_on_the_schedule_and_are_collected_once() -> None:
    s2 = session()
    first = s2.collect(135.0)
    assert [t for t, _ in first] == [110.0, 120.0, 130.0]
    assert s2.collect(135.0) == []
    assert [t for t, _ in s2.collect(150.0)] == [140.0, 150.0]


def test_a_command_first_takes_the_samples_due_before_it() -> None:
    s = session()
    s.set_rate(105.0, 3600.0)
    s.start(105.0)
    s.stop(145.0)  # samples at 110..140 are taken while the pump ran
    samples = s.collect(200.0)
    assert [t for t, _ in samples] == [
        110.0,
        120.0,
        130.0,
        140.0,
        150.0,
        160.0,
        170.0,
        180.0,
        190.0,
        200.0,
    ]
    assert s.snapshot(200.0).delivered_ul == pytest.approx(40.0, abs=0.05)


def test_times_slightly_out_of_order_never_move_the_model_backwards() -> None:
    s = session()
    s.set_rate(150.0, 100.0)
    s.start(150.0)
    # Another thread presents an older time: it is served at the newest time instead.
    snap = s.snapshot(149.999)
    assert snap.t_s == 150.0


def test_invalid_sample_period() -> None:
    with pytest.raises(ValueError, match="sample_period_s"):
        session(0.0)
