from __future__ import annotations

import pytest

from pump_rig.core.sim_clock import SimClock


class FakeMonotonic:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_sim_time_runs_at_speed_from_its_start() -> None:
    wall = FakeMonotonic()
    clock = SimClock(600.0, 1_000.0, monotonic=wall)
    assert clock.now_s() == 1_000.0
    wall.t += 2.0
    assert clock.now_s() == pytest.approx(2_200.0)


def test_sim_time_never_goes_back_even_if_the_wall_clock_does() -> None:
    wall = FakeMonotonic()
    clock = SimClock(10.0, 0.0, monotonic=wall)
    wall.t += 1.0
    assert clock.now_s() == pytest.approx(10.0)
    wall.t -= 0.5
    assert clock.now_s() == pytest.approx(10.0)


@pytest.mark.parametrize("speed", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_speed_is_refused(speed: float) -> None:
    with pytest.raises(ValueError, match="speed"):
        SimClock(speed, 0.0)
