"""The motor driver's own cap on infused volume per rolling hour."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pump_rig.core.hourly_volume import HourlyVolumeGuard


def test_volume_counts_infusion_in_the_last_hour_only() -> None:
    guard = HourlyVolumeGuard(100.0)
    guard.record(0.0, 1000.0)  # the first reading is the base, whatever the counter says
    guard.record(1800.0, 1030.0)
    guard.record(3600.0, 1060.0)
    assert guard.volume_ul(3600.0) == pytest.approx(60.0)
    guard.record(5400.0, 1070.0)
    # The window (1800, 5400] starts at the 1800 s reading: 1070 - 1030.
    assert guard.volume_ul(5400.0) == pytest.approx(40.0)
    assert guard.budget_ul(5400.0) == pytest.approx(60.0)


def test_between_readings_the_window_is_over_never_under_estimated() -> None:
    guard = HourlyVolumeGuard(100.0)
    guard.record(0.0, 0.0)
    guard.record(1000.0, 50.0)
    guard.record(4000.0, 60.0)
    # At 4500 s the window starts at 900 s: the last reading at or before it is at 0 s.
    assert guard.volume_ul(4500.0) == pytest.approx(60.0)


def test_withdrawal_earns_no_budget_back() -> None:
    guard = HourlyVolumeGuard(100.0)
    guard.record(0.0, 0.0)
    guard.record(60.0, 80.0)
    guard.record(120.0, 20.0)  # withdrew 60
    guard.record(180.0, 40.0)  # infused 20 more
    assert guard.volume_ul(180.0) == pytest.approx(100.0)
    assert guard.budget_ul(180.0) == 0.0


def test_a_counter_restart_is_a_new_base_not_a_delivery() -> None:
    guard = HourlyVolumeGuard(100.0)
    guard.record(0.0, 500.0)
    guard.record(60.0, 510.0)
    guard.restart_counter()
    guard.record(120.0, 3.0)
    guard.record(180.0, 8.0)
    assert guard.volume_ul(180.0) == pytest.approx(15.0)


def test_device_limit_binds_only_when_the_hour_could_pass_the_cap() -> None:
    guard = HourlyVolumeGuard(100.0)
    guard.record(0.0, 0.0)
    guard.record(600.0, 30.0)
    # 70 µL left: a 50 µL/h basal cannot pass it within the hour and keeps "no limit".
    assert guard.device_limit_ul(600.0, 50.0, 0.0) == 0.0
    # A 500 µL/h run could: the device itself is limited to the budget...
    assert guard.device_limit_ul(600.0, 500.0, 0.0) == pytest.approx(70.0)
    # ...or to the command's own limit when that is smaller.
    assert guard.device_limit_ul(600.0, 500.0, 25.0) == pytest.approx(25.0)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_the_cap_must_be_a_positive_number(bad: float) -> None:
    with pytest.raises(ValueError, match="max volume per hour"):
        HourlyVolumeGuard(bad)


@given(st.lists(st.tuples(st.floats(0.0, 600.0), st.floats(-5.0, 50.0)), min_size=1, max_size=60))
def test_window_volume_is_at_least_the_true_infusion_in_any_hour(
    steps: list[tuple[float, float]],
) -> None:
    """Against a brute-force count over the readings: never under the true hourly infusion."""
    guard = HourlyVolumeGuard(1e9)
    t, counter = 0.0, 0.0
    readings = [(t, counter)]
    guard.record(t, counter)
    for dt, delta in steps:
        t += dt
        counter += delta
        readings.append((t, counter))
        guard.record(t, counter)
    # Infusion between readings inside (t - 3600, t], counted from the true counter.
    true_ul = sum(
        max(0.0, b[1] - a[1]) for a, b in itertools.pairwise(readings) if a[0] >= t - 3600.0
    )
    assert guard.volume_ul(t) >= true_ul - 1e-6
