from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pump_rig.core.bench_model import BenchModel, BenchParams
from pump_rig.core.bench_session import BenchSession
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


# ---- slow windows around events ----------------------------------------------------------------


def slow_clock(wall: FakeMonotonic, speed: float = 1_000.0) -> SimClock:
    # Binary fractions of a wall second below, so that the expected times are exact.
    return SimClock(speed, 0.0, monotonic=wall, event_speed=8.0, event_window_s=4.0)


def test_an_event_is_returned_exactly_when_crossed() -> None:
    wall = FakeMonotonic()
    clock = slow_clock(wall)
    clock.slow_at(1_234.5)
    wall.t += 1.0  # full speed would be at 1000 s
    assert clock.now_s() == pytest.approx(1_000.0)
    wall.t += 1.0  # ...and at 2000 s: the clock stops at the event instead
    assert clock.now_s() == 1_234.5
    assert clock.pending_events == 0


def test_the_window_runs_at_event_speed_then_full_speed_resumes() -> None:
    wall = FakeMonotonic()
    clock = slow_clock(wall)
    clock.slow_at(125.0)
    wall.t += 0.125  # lands on the event exactly: no wall time dropped
    assert clock.now_s() == 125.0
    assert clock.in_event_window()
    wall.t += 0.25
    assert clock.now_s() == pytest.approx(127.0)  # event speed (8 sim s per wall s)
    wall.t += 0.375  # the window (4 s) ends 0.25 wall s in, then 0.125 s at full speed
    assert clock.now_s() == pytest.approx(129.0 + 125.0)
    assert not clock.in_event_window()
    wall.t += 1.0
    assert clock.now_s() == pytest.approx(1_254.0)


def test_each_event_costs_window_over_event_speed_of_wall_time() -> None:
    wall = FakeMonotonic()
    clock = slow_clock(wall)
    clock.slow_at(1_000.0)
    clock.slow_at(3_000.0)
    step = 1.0 / 1024  # the update period
    seen = []
    while (now := clock.now_s()) < 4_000.0:
        seen.append(now)
        wall.t += step
    assert {1_000.0, 3_000.0} <= set(seen)
    # Each event: its window (4 s) at event speed, 4 / 8 = 0.5 wall s; the rest at full
    # speed. Each crossing drops less than one update period of wall time, and the loop
    # overshoots by less than one.
    ideal = (4_000.0 - 2 * 4.0) / 1_000.0 + 2 * 0.5
    spent = wall.t - 100.0
    assert ideal <= spent < ideal + 3 * step


def test_overlapping_events_extend_the_window_and_each_is_hit_exactly() -> None:
    wall = FakeMonotonic()
    clock = slow_clock(wall)
    for t in (125.0, 127.0, 500.0):
        clock.slow_at(t)
    wall.t += 0.125
    assert clock.now_s() == 125.0
    wall.t += 0.375  # would be 128 at event speed: stops at 127, the rest is dropped
    assert clock.now_s() == 127.0
    wall.t += 0.375  # the window now ends at 131 (127 + 4), not 129
    assert clock.now_s() == pytest.approx(130.0)
    assert clock.in_event_window()
    wall.t += 0.125 + 0.125  # 131 after 0.125 wall s, then 0.125 wall s at full speed
    assert clock.now_s() == pytest.approx(256.0)
    wall.t += 1.0
    assert clock.now_s() == 500.0


def test_past_and_reported_events_are_ignored() -> None:
    wall = FakeMonotonic()
    clock = slow_clock(wall)
    wall.t += 1.0
    assert clock.now_s() == pytest.approx(1_000.0)
    clock.slow_at(500.0)
    clock.slow_at(clock.now_s())
    clock.slow_at(float("nan"))
    clock.slow_at(float("inf"))
    assert clock.pending_events == 0
    wall.t += 1.0
    assert clock.now_s() == pytest.approx(2_000.0)


def test_registering_the_same_event_twice_is_harmless() -> None:
    wall = FakeMonotonic()
    clock = slow_clock(wall)
    clock.slow_at(125.0)
    clock.slow_at(125.0)
    clock.slow_at(125.0 + 1e-7)  # the same time computed another way
    assert clock.pending_events == 1
    wall.t += 0.125
    assert clock.now_s() == 125.0
    wall.t += 0.5  # one window, not two
    assert clock.now_s() == pytest.approx(129.0)
    wall.t += 0.125
    assert clock.now_s() == pytest.approx(254.0)


def test_an_event_registered_late_is_still_not_jumped_over() -> None:
    wall = FakeMonotonic()
    clock = slow_clock(wall)
    wall.t += 0.5  # the mapping is already at 500 s, but nobody has read it
    clock.slow_at(300.0)
    assert clock.now_s() == 300.0
    wall.t += 0.125
    assert clock.now_s() == pytest.approx(301.0)


def test_events_change_nothing_when_the_clock_is_not_faster_than_event_speed() -> None:
    wall = FakeMonotonic()
    clock = SimClock(10.0, 0.0, monotonic=wall, event_speed=50.0, event_window_s=5.0)
    assert not clock.slows_for_events
    clock.slow_at(5.0)
    assert clock.pending_events == 0
    wall.t += 1.0
    assert clock.now_s() == pytest.approx(10.0)


def test_pending_events_are_bounded_keeping_the_earliest() -> None:
    wall = FakeMonotonic()
    clock = slow_clock(wall)
    n = SimClock.MAX_PENDING_EVENTS
    for i in range(n + 10, 0, -1):
        clock.slow_at(float(i))
    assert clock.pending_events == n
    wall.t += 0.001
    assert clock.now_s() == 1.0


@pytest.mark.parametrize(
    ("event_speed", "event_window_s"),
    [(0.0, 5.0), (float("nan"), 5.0), (50.0, -1.0), (50.0, float("inf"))],
)
def test_bad_event_settings_are_refused(event_speed: float, event_window_s: float) -> None:
    with pytest.raises(ValueError, match="event"):
        SimClock(100.0, 0.0, event_speed=event_speed, event_window_s=event_window_s)


def test_with_a_time_source_an_event_is_held_until_its_tick() -> None:
    wall = FakeMonotonic()
    clock = SimClock(
        1_000.0, 0.0, monotonic=wall, event_speed=8.0, event_window_s=4.0, hold_until_tick=True
    )
    clock.slow_at(100.0)
    wall.t += 0.25
    assert clock.now_s() == 100.0  # another reader crosses the event first...
    wall.t += 0.125
    assert clock.now_s() == 100.0  # ...and the clock holds there
    assert clock.tick_s() == 100.0  # so the time source publishes it
    wall.t += 0.125
    assert clock.now_s() == pytest.approx(101.0)  # then event speed from the tick on
    assert clock.tick_s() == pytest.approx(101.0)


def test_a_tick_crossing_the_event_itself_does_not_hold() -> None:
    wall = FakeMonotonic()
    clock = SimClock(
        1_000.0, 0.0, monotonic=wall, event_speed=8.0, event_window_s=4.0, hold_until_tick=True
    )
    clock.slow_at(100.0)
    wall.t += 0.25
    assert clock.tick_s() == 100.0
    wall.t += 0.125
    assert clock.now_s() == pytest.approx(101.0)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(-0.05, 0.5),  # wall step (sometimes backwards)
            st.one_of(st.none(), st.floats(-100.0, 2_000.0)),  # event offset from the last reading
            st.booleans(),  # read by the time source (tick_s) or by another reader (now_s)
        ),
        max_size=60,
    ),
    st.floats(0.0, 20.0),
    st.booleans(),
)
def test_time_is_monotonic_and_events_are_never_jumped_over(
    steps: list[tuple[float, float | None, bool]], window_s: float, hold: bool
) -> None:
    wall = FakeMonotonic()
    clock = SimClock(
        1_000.0,
        0.0,
        monotonic=wall,
        event_speed=8.0,
        event_window_s=window_s,
        hold_until_tick=hold,
    )
    last = clock.now_s()
    last_tick = last
    pending: set[float] = set()  # not yet read by anyone
    unticked: set[float] = set()  # not yet read by the time source
    for wall_step, offset, tick in steps:
        if offset is not None:
            t_event = last + offset
            if t_event > last and all(abs(t - t_event) >= SimClock.MERGE_S for t in pending):
                pending.add(t_event)
                unticked.add(t_event)
            clock.slow_at(t_event)
        wall.t += wall_step
        now = clock.tick_s() if tick else clock.now_s()
        assert now >= last
        jumped = [t for t in pending if last < t < now]
        assert not jumped, f"jumped over {jumped} from {last} to {now}"
        pending = {t for t in pending if t > now}
        if tick:
            if hold:  # the published sequence contains every event too
                missed = [t for t in unticked if last_tick < t < now]
                assert not missed, f"ticks skipped {missed} from {last_tick} to {now}"
            unticked = {t for t in unticked if t > now}
            last_tick = now
        last = now


def test_the_clock_lands_on_the_pumps_own_stop() -> None:
    """What mock_hardware does: after each exchange, register the pump's next self-stop."""
    wall = FakeMonotonic()
    clock = SimClock(50_000.0, 1_000.0, monotonic=wall)
    session = BenchSession(
        BenchModel(BenchParams(seed=1), t0_s=1_000.0), sample_period_s=60.0, t0_s=1_000.0
    )
    assert session.next_pump_event_s() is None  # idle
    t_s = clock.now_s()
    session.set_volume_limit(t_s, 100.0)  # a bolus: 100 µL at 1000 µL/h is 360 s
    session.set_rate(t_s, 1_000.0)
    session.start(t_s)
    t_stop = session.next_pump_event_s()
    assert t_stop == pytest.approx(t_s + 360.0, abs=1.0)
    assert t_stop is not None
    clock.slow_at(t_stop)
    wall.t += 0.02  # one /clock update: 1000 s at full speed
    assert clock.now_s() == t_stop
    snap = session.snapshot(clock.now_s())
    assert snap.limit_reached
    assert snap.delivered_ul == pytest.approx(100.0, abs=session.bench.pump.ul_per_step)
    assert session.next_pump_event_s() is None


# ---- holding slow until a reaction --------------------------------------------------------------


def test_hold_slow_runs_at_event_speed_until_released() -> None:
    wall = FakeMonotonic()
    clock = slow_clock(wall)  # x1000, x8 when slow
    wall.t += 0.5
    assert clock.now_s() == pytest.approx(500.0)
    clock.hold_slow(2.0)
    assert clock.in_event_window()
    wall.t += 0.25
    assert clock.now_s() == pytest.approx(502.0)  # x8 from the hold
    clock.release_slow()
    assert not clock.in_event_window()
    wall.t += 0.25
    assert clock.now_s() == pytest.approx(752.0)  # full speed again


def test_hold_slow_ends_by_itself_after_its_wall_time() -> None:
    wall = FakeMonotonic()
    clock = slow_clock(wall)
    clock.hold_slow(0.5)
    wall.t += 1.5  # 0.5 s at x8, then 1 s at x1000
    assert clock.now_s() == pytest.approx(4.0 + 1_000.0)
    assert not clock.in_event_window()


def test_an_event_inside_a_hold_is_still_landed_on_exactly() -> None:
    wall = FakeMonotonic()
    clock = slow_clock(wall)
    clock.hold_slow(10.0)
    clock.slow_at(3.0)
    wall.t += 1.0  # x8 would pass 3 s: the clock stops there
    assert clock.now_s() == 3.0
    wall.t += 0.5
    assert clock.now_s() == pytest.approx(7.0)  # still slow: the hold and the event's window


def test_a_hold_outlasting_an_event_window_keeps_the_clock_slow() -> None:
    wall = FakeMonotonic()
    clock = slow_clock(wall)
    clock.slow_at(1.0)
    wall.t += 0.01
    assert clock.now_s() == 1.0  # the event: a 4 s window from here (0.5 s of wall at x8)
    clock.hold_slow(2.0)
    wall.t += 1.0  # past the window's end, within the hold
    assert clock.now_s() == pytest.approx(1.0 + 8.0 * 1.0)
    wall.t += 2.0  # 1 s more of hold, then 1 s at full speed
    assert clock.now_s() == pytest.approx(9.0 + 8.0 + 1_000.0)


def test_hold_slow_changes_nothing_when_events_would_not() -> None:
    wall = FakeMonotonic()
    clock = SimClock(4.0, 0.0, monotonic=wall, event_speed=8.0)
    clock.hold_slow(1.0)
    wall.t += 1.0
    assert clock.now_s() == pytest.approx(4.0)


def test_holds_with_different_keys_are_independent() -> None:
    wall = FakeMonotonic()
    clock = slow_clock(wall)
    clock.hold_slow(2.0, "pump")
    clock.hold_slow(2.0, "bench")
    clock.release_slow("bench")  # the pump's hold stays
    wall.t += 0.5
    assert clock.now_s() == pytest.approx(4.0)
    clock.release_slow("pump")
    wall.t += 0.5
    assert clock.now_s() == pytest.approx(4.0 + 500.0)
