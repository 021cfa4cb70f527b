"""The whole bench: parameters, event-split integration, stall pressure, faults, determinism."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pump_rig.core.bench_model import BenchModel, BenchParams
from pump_rig.core.faults import LINE_FAULTS, SENSOR_FAULTS, SERIAL_FAULTS, FaultKind
from pump_rig.core.fluid_line import FluidLine
from pump_rig.core.pump_types import SECONDS_PER_DAY, SECONDS_PER_HOUR, Direction, PumpRunState

QUIET = BenchParams(respiratory_ripple_kpa=0.0, cardiac_ripple_kpa=0.0, sensor_noise_kpa=0.0)


def running_bench(
    rate_ul_per_h: float, params: BenchParams = QUIET, t_s: float = 0.0
) -> BenchModel:
    bench = BenchModel(params, t0_s=t_s)
    bench.set_rate(t_s, rate_ul_per_h)
    bench.start(t_s)
    return bench


# ---- parameters --------------------------------------------------------------------------
def test_from_mapping_overrides_and_keeps_defaults() -> None:
    params = BenchParams.from_mapping(
        {"inner_diameter_mm": 19.13, "syringe_volume_ul": 20_000, "microsteps": 32.0, "seed": 4}
    )
    assert params.inner_diameter_mm == 19.13
    assert params.syringe_volume_ul == 20_000
    assert params.microsteps == 32 and isinstance(params.microsteps, int)
    assert params.seed == 4
    assert params.stall_pressure_kpa == BenchParams().stall_pressure_kpa
    assert BenchParams.from_mapping({}) == BenchParams()


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"inner_diameter": 14.0}, "inner_diameter"),
        ({"inner_diameter_mm": "wide"}, "inner_diameter_mm"),
        ({"inner_diameter_mm": 60.0}, "inner_diameter_mm"),
        ({"compliance_ul_per_kpa": -1.0}, "compliance_ul_per_kpa"),
        ({"stall_pressure_kpa": math.nan}, "stall_pressure_kpa"),
        ({"microsteps": 1.5}, "microsteps"),
        ({"seed": True}, "seed"),
        ({"loaded_volume_ul": 20_000.0}, "loaded_volume_ul"),
        ({"occlusion_resistance_factor": 0.5}, "occlusion_resistance_factor"),
        ({"sensor_spike_probability": 2.0}, "sensor_spike_probability"),
        ({"cardiac_ripple_kpa": -0.1}, "cardiac_ripple_kpa"),
    ],
)
def test_from_mapping_rejects_bad_input_naming_the_field(
    values: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        BenchParams.from_mapping(values)


def test_bench_pump_follows_params() -> None:
    bench = BenchModel(BenchParams(inner_diameter_mm=19.13, lead_screw_pitch_mm=1.0))
    assert bench.pump.ul_per_step == pytest.approx(math.pi * (19.13 / 2) ** 2 * 1.0 / 3200)
    assert bench.pump.syringe_volume_ul == 10_000.0
    assert bench.line.params == BenchParams().line_params()
    assert 1.5 - 0.25 <= bench.line_pressure_kpa(0.0) <= 1.5 + 0.25  # P_csf ± ripple


# ---- pump delegation and events ----------------------------------------------------------
def test_thirty_days_on_the_bench_delivers_rate_times_time() -> None:
    bench = running_bench(10.0, BenchParams())
    t_end = 30 * SECONDS_PER_DAY
    jump = bench.snapshot(t_end)
    stepped = running_bench(10.0, BenchParams())
    for h in range(1, 30 * 24 + 1):
        stepped.snapshot(h * SECONDS_PER_HOUR)
    assert stepped.snapshot(t_end) == jump
    assert 0.0 <= 7200.0 - jump.delivered_ul < bench.pump.ul_per_step
    assert stepped.line_pressure_kpa(t_end) == pytest.approx(
        bench.line_pressure_kpa(t_end), abs=1e-9
    )


def test_volume_limit_stop_splits_the_line_integration_at_the_event() -> None:
    rate = 3600.0  # 1 µL/s: a visible pressure step when it stops
    params = replace(QUIET, catheter_resistance_kpa_s_per_ul=4.0)  # τ = 4 s
    bench = BenchModel(params)
    bench.set_rate(0.0, rate)
    bench.set_volume_limit(0.0, 10.0)
    bench.start(0.0)
    t_stop = bench.pump.next_event_s()
    assert t_stop is not None
    n = math.floor(10.0 / bench.pump.ul_per_step)
    assert t_stop == pytest.approx(n * bench.pump.ul_per_step, rel=1e-12)
    got = bench.line_pressure_kpa(t_stop + 3.0)  # one call, straight past the stop
    reference = FluidLine(params.line_params())
    reference.advance(t_stop, 1.0)
    want = reference.advance(t_stop + 3.0, 0.0)
    assert got == pytest.approx(want, abs=1e-12)
    snap = bench.snapshot(t_stop + 3.0)
    assert snap.state is PumpRunState.IDLE and snap.limit_reached


def test_pump_control_validates_like_the_pump() -> None:
    bench = running_bench(10.0)
    with pytest.raises(ValueError, match="while the pump is running"):
        bench.set_diameter(1.0, 10.0)
    with pytest.raises(ValueError, match="while the pump is running"):
        bench.set_direction(1.0, Direction.WITHDRAW)
    with pytest.raises(ValueError, match="above the pump maximum"):
        bench.set_rate(1.0, 1e9)
    with pytest.raises(ValueError, match="backwards"):
        bench.snapshot(0.5)
    with pytest.raises(ValueError, match="backwards"):
        bench.sample_pressure(0.5)
    bench.stop(2.0)
    bench.load(2.0, 500.0)
    assert bench.snapshot(2.0).remaining_ul == 500.0


# ---- line faults -------------------------------------------------------------------------
def test_occlusion_keeps_pumping_and_pressure_rises_at_q_over_c() -> None:
    bench = running_bench(100.0, BenchParams())
    bench.inject_fault(60.0, FaultKind.OCCLUSION)
    p0 = bench.line_pressure_kpa(120.0)
    p1 = bench.line_pressure_kpa(120.0 + SECONDS_PER_HOUR)
    q_ul_per_s = 100.0 / SECONDS_PER_HOUR
    assert (p1 - p0) / SECONDS_PER_HOUR == pytest.approx(q_ul_per_s / 1.0, rel=0.01)
    snap = bench.snapshot(120.0 + SECONDS_PER_HOUR)
    assert snap.state is PumpRunState.RUNNING
    assert bench.active_faults == {FaultKind.OCCLUSION}


def test_partial_occlusion_settles_at_csf_plus_q_times_new_resistance() -> None:
    rate = 10.0
    bench = running_bench(rate)
    bench.inject_fault(0.0, FaultKind.PARTIAL_OCCLUSION)
    r_new = 0.4 * 1e3
    p = bench.line_pressure_kpa(40 * r_new)  # 40 τ
    assert p == pytest.approx(1.5 + rate / SECONDS_PER_HOUR * r_new, rel=1e-9)
    bench.inject_fault(40 * r_new, FaultKind.PARTIAL_OCCLUSION, 100.0)  # replaces the size
    assert bench.line_pressure_kpa(80 * r_new) == pytest.approx(
        1.5 + rate / SECONDS_PER_HOUR * 40.0, rel=1e-9
    )


def test_leak_pulls_pressure_toward_zero_and_clears() -> None:
    bench = running_bench(10.0)
    before = bench.line_pressure_kpa(10.0)
    bench.inject_fault(10.0, FaultKind.LEAK)
    leaking = bench.line_pressure_kpa(20.0)
    assert leaking < 0.2 < before
    bench.clear_faults(20.0)
    assert bench.active_faults == frozenset()
    assert bench.line_pressure_kpa(40.0) == pytest.approx(before, rel=1e-9)


# ---- stalls ------------------------------------------------------------------------------
def test_motor_stall_stops_the_plunger_and_the_pressure_relaxes() -> None:
    bench = running_bench(360.0, replace(QUIET, catheter_resistance_kpa_s_per_ul=40.0))
    running_p = bench.line_pressure_kpa(1000.0)
    assert running_p == pytest.approx(1.5 + 0.1 * 40.0, rel=1e-6)
    bench.inject_fault(1000.0, FaultKind.MOTOR_STALL)
    snap = bench.snapshot(1000.0)
    assert snap.state is PumpRunState.STALLED and snap.flow_ul_per_h == 0.0
    assert bench.snapshot(2000.0).steps == snap.steps
    assert bench.line_pressure_kpa(2000.0) == pytest.approx(1.5, abs=1e-6)
    bench.clear_faults(2000.0)
    assert bench.snapshot(2000.0).state is PumpRunState.RUNNING


def test_occlusion_stalls_the_motor_at_the_stall_pressure_exactly() -> None:
    rate = 100.0
    q = rate / SECONDS_PER_HOUR
    bench = running_bench(rate)
    bench.inject_fault(0.0, FaultKind.OCCLUSION)
    # Closed form for the crossing time (no ripple): P(t) = P∞ − (P∞ − P0)·e^(−t/τ).
    r = 0.4 * 1e6
    p_inf = 1.5 + q * r
    tau = r * 1.0
    t_stall = -tau * math.log((p_inf - 250.0) / (p_inf - 1.5))
    jump = bench.snapshot(30 * SECONDS_PER_DAY)
    assert jump.state is PumpRunState.STALLED
    assert bench.pressure_stalled
    delivered_at_stall = jump.delivered_ul
    assert abs(delivered_at_stall - q * t_stall) < bench.pump.ul_per_step
    # Many small steps find the same instant.
    stepped = running_bench(rate)
    stepped.inject_fault(0.0, FaultKind.OCCLUSION)
    t = 0.0
    while stepped.snapshot(t).state is PumpRunState.RUNNING:
        t += 600.0
    assert t_stall <= t < t_stall + 600.0
    assert stepped.snapshot(30 * SECONDS_PER_DAY) == jump
    # After the stall the pressure bleeds off through the occluded catheter.
    decayed = 1.5 + (250.0 - 1.5) * math.exp(-(30 * SECONDS_PER_DAY - t_stall) / tau)
    assert bench.line_pressure_kpa(30 * SECONDS_PER_DAY) == pytest.approx(decayed, rel=1e-6)


def test_stall_pressure_crossing_with_ripple_is_hit_exactly() -> None:
    params = replace(BenchParams(), stall_pressure_kpa=1.9, partial_occlusion_resistance_factor=20)
    bench = running_bench(180.0, params)  # 0.05 µL/s into 8 kPa·s/µL: asymptote 1.9 kPa + ripple
    bench.inject_fault(0.0, FaultKind.PARTIAL_OCCLUSION)
    bench.advance(600.0)
    assert bench.pressure_stalled
    snap = bench.snapshot(600.0)
    t_stall = snap.delivered_ul / 0.05
    assert bench.line.pressure_kpa < 1.9  # relaxed after the stall
    # Reference: the same line never stalled, densely sampled up to the crossing.
    check = FluidLine(params.line_params())
    check.set_resistance_factor(0.0, 20.0)
    t_cross = check.first_time_at_or_above(1.9, 0.05, 600.0)
    assert t_cross is not None
    assert abs(t_cross - t_stall) < bench.pump.ul_per_step / 0.05
    assert check.pressure_at(t_cross, 0.05) == pytest.approx(1.9, abs=1e-9)
    samples = np.linspace(0.0, t_cross, 50_000)[:-1]
    assert max(check.pressure_at(float(s), 0.05) for s in samples) < 1.9


def test_stop_releases_a_pressure_stall_and_restart_restalls_at_once() -> None:
    bench = running_bench(1000.0)
    bench.inject_fault(0.0, FaultKind.OCCLUSION)
    bench.advance(SECONDS_PER_HOUR)  # 250 kPa at ~0.28 µL/s is reached in ~15 min
    assert bench.snapshot(SECONDS_PER_HOUR).state is PumpRunState.STALLED
    p_stalled = bench.line.pressure_kpa
    assert 240.0 < p_stalled < 250.0
    bench.stop(SECONDS_PER_HOUR)
    assert not bench.pressure_stalled
    assert bench.snapshot(SECONDS_PER_HOUR).state is PumpRunState.IDLE
    bench.clear_faults(SECONDS_PER_HOUR + 1.0)
    bench.line_pressure_kpa(SECONDS_PER_HOUR + 60.0)  # healthy catheter drains in seconds
    bench.inject_fault(SECONDS_PER_HOUR + 60.0, FaultKind.OCCLUSION)
    bench.start(SECONDS_PER_HOUR + 60.0)
    assert bench.snapshot(SECONDS_PER_HOUR + 61.0).state is PumpRunState.RUNNING
    stuck = running_bench(1000.0, replace(QUIET, stall_pressure_kpa=2.0))
    stuck.inject_fault(0.0, FaultKind.OCCLUSION)
    assert stuck.snapshot(60.0).state is PumpRunState.STALLED
    stuck.start(61.0)  # motor already on: no-op, still stalled
    assert stuck.snapshot(61.0).state is PumpRunState.STALLED
    stuck.stop(62.0)
    stopped_steps = stuck.snapshot(62.0).steps
    stuck.start(63.0)  # pressure a hair below the limit (it barely bleeds): stalls within ms
    assert stuck.snapshot(63.0).state is PumpRunState.RUNNING
    assert stuck.snapshot(63.001).state is PumpRunState.STALLED
    assert stuck.snapshot(63.001).steps - stopped_steps <= 1
    assert stuck.line.pressure_kpa == pytest.approx(2.0, abs=1e-6)
    stuck.stop(64.0)  # withdrawing never pushes against the stall pressure
    stuck.set_direction(64.0, Direction.WITHDRAW)
    stuck.start(64.0)
    assert stuck.snapshot(65.0).state is PumpRunState.RUNNING


# ---- sensor and fault plumbing -----------------------------------------------------------
def test_sensor_faults_through_the_bench() -> None:
    bench = BenchModel(BenchParams(sensor_noise_kpa=0.0))
    assert bench.sample_pressure(1.0) == pytest.approx(bench.line.pressure_kpa, abs=1e-12)
    bench.inject_fault(2.0, FaultKind.SENSOR_DROPOUT)
    assert bench.sample_pressure(2.0) is None
    bench.clear_faults(3.0)
    bench.inject_fault(3.0, FaultKind.SENSOR_NAN)
    nan_value = bench.sample_pressure(3.5)
    assert nan_value is not None and math.isnan(nan_value)
    bench.clear_faults(4.0)
    bench.inject_fault(4.0, FaultKind.SENSOR_DRIFT)  # default 0.5 kPa/h from the params
    drifted = bench.sample_pressure(4.0 + SECONDS_PER_HOUR)
    assert drifted == pytest.approx(bench.line.pressure_kpa + 0.5, abs=1e-9)
    assert bench.active_faults == {FaultKind.SENSOR_DRIFT}


@pytest.mark.parametrize("kind", sorted(SERIAL_FAULTS))
def test_serial_faults_are_for_the_device_emulator(kind: FaultKind) -> None:
    bench = BenchModel()
    with pytest.raises(ValueError, match="is a serial fault, handled by the device emulator"):
        bench.inject_fault(0.0, kind)
    assert bench.active_faults == frozenset()


def test_every_bench_fault_kind_can_be_injected_and_cleared() -> None:
    bench = running_bench(10.0, BenchParams())
    kinds = sorted(LINE_FAULTS | SENSOR_FAULTS | {FaultKind.MOTOR_STALL})
    for i, kind in enumerate(kinds):
        bench.inject_fault(float(i), kind)
    assert bench.active_faults == frozenset(kinds)
    bench.clear_faults(100.0)
    assert bench.active_faults == frozenset()
    assert bench.line.resistance_factor == 1.0
    assert bench.line.leak_resistance_kpa_s_per_ul is None
    assert bench.snapshot(100.0).state is PumpRunState.RUNNING


def test_bad_fault_magnitudes_raise() -> None:
    bench = BenchModel()
    with pytest.raises(ValueError, match="resistance factor must be >= 1"):
        bench.inject_fault(0.0, FaultKind.OCCLUSION, 0.5)
    with pytest.raises(ValueError, match="magnitude must be >= 0"):
        bench.inject_fault(0.0, FaultKind.LEAK, -1.0)
    with pytest.raises(ValueError, match="finite"):
        bench.inject_fault(0.0, FaultKind.SENSOR_SPIKES, math.inf)
    assert bench.active_faults == frozenset()


def test_same_seed_same_run_different_seed_different_noise() -> None:
    def run(seed: int) -> list[float | None]:
        bench = running_bench(10.0, BenchParams(seed=seed))
        bench.inject_fault(0.0, FaultKind.SENSOR_SPIKES)
        return [bench.sample_pressure(0.1 * i) for i in range(200)]

    assert run(1) == run(1)
    assert run(1) != run(2)


# ---- property test -----------------------------------------------------------------------
BENCH_OPS = ("rate", "start", "stop", "limit", "fault", "clear", "sample")
BENCH_KINDS = sorted(LINE_FAULTS | SENSOR_FAULTS | {FaultKind.MOTOR_STALL})


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.0, 2e5, allow_nan=False),
            st.sampled_from(BENCH_OPS),
            st.sampled_from([0.0, 1.0, 10.0, 1000.0, 50_000.0]),
            st.sampled_from(BENCH_KINDS),
        ),
        min_size=1,
        max_size=15,
    )
)
def test_random_bench_sessions_stay_physical(
    ops: list[tuple[float, str, float, FaultKind]],
) -> None:
    bench = BenchModel(replace(BenchParams(), loaded_volume_ul=2000.0))
    t = 0.0
    for dt, op, value, kind in ops:
        t += dt
        before = bench.snapshot(t)
        if op == "rate":
            bench.set_rate(t, value)
        elif op == "start":
            if before.state is PumpRunState.IDLE and before.rate_ul_per_h == 0.0:
                with pytest.raises(ValueError, match="rate is 0"):
                    bench.start(t)
            else:
                bench.start(t)
        elif op == "stop":
            bench.stop(t)
        elif op == "limit":
            bench.set_volume_limit(t, value)
        elif op == "fault":
            bench.inject_fault(t, kind)
        elif op == "clear":
            bench.clear_faults(t)
        else:
            bench.sample_pressure(t)
        after = bench.snapshot(t)
        p = bench.line.pressure_kpa
        assert math.isfinite(p)
        # The motor cannot push the line beyond its stall pressure (small overshoot from ripple).
        assert p <= bench.params.stall_pressure_kpa + 1e-6
        assert 0.0 <= after.delivered_ul <= 2000.0 + 1e-9
        assert after.delivered_ul >= before.delivered_ul - 1e-9
        assert -1e-6 <= 2000.0 - (after.delivered_ul + after.remaining_ul) < bench.pump.ul_per_step
        if bench.pressure_stalled or FaultKind.MOTOR_STALL in bench.active_faults:
            assert after.state is not PumpRunState.RUNNING
