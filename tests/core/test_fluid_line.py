"""Fluid line closed form against a numerical reference, fault physics, and the pressure sensor."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pump_rig.core.faults import FaultKind
from pump_rig.core.fluid_line import FluidLine, LineParams
from pump_rig.core.pressure_sensor import PressureSensor, SensorParams

PARAMS = LineParams()
NO_RIPPLE = LineParams(respiratory_ripple_kpa=0.0, cardiac_ripple_kpa=0.0)


def rk4_pressure(
    params: LineParams,
    *,
    p0_kpa: float,
    t0_s: float,
    t1_s: float,
    flow_ul_per_s: float,
    resistance_factor: float = 1.0,
    leak_kpa_s_per_ul: float | None = None,
    h_s: float = 1e-3,
) -> float:
    """Independent reference: classic RK4 on C dP/dt = Q − (P − P_csf)/R − P/R_leak."""
    r = params.catheter_resistance_kpa_s_per_ul * resistance_factor
    g_leak = 0.0 if leak_kpa_s_per_ul is None else 1.0 / leak_kpa_s_per_ul
    c = params.compliance_ul_per_kpa

    def csf(t: float) -> float:
        return (
            params.csf_pressure_kpa
            + params.respiratory_ripple_kpa * math.sin(2 * math.pi * params.respiratory_hz * t)
            + params.cardiac_ripple_kpa * math.sin(2 * math.pi * params.cardiac_hz * t)
        )

    def dp(t: float, p: float) -> float:
        return (flow_ul_per_s - (p - csf(t)) / r - p * g_leak) / c

    n = round((t1_s - t0_s) / h_s)
    h = (t1_s - t0_s) / n
    p, t = p0_kpa, t0_s
    for _ in range(n):
        k1 = dp(t, p)
        k2 = dp(t + h / 2, p + h / 2 * k1)
        k3 = dp(t + h / 2, p + h / 2 * k2)
        k4 = dp(t + h, p + h * k3)
        p += h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        t += h
    return p


@pytest.mark.parametrize(
    ("label", "flow", "factor", "leak", "p0", "t1"),
    [
        ("normal, filling transient", 1.0, 1.0, None, 0.0, 6.0),
        ("occluded", 0.05, 1e6, None, 3.0, 6.0),
        ("leaking", 0.2, 1.0, 0.05, 8.0, 6.0),
        ("partially occluded", 0.01, 10.0, None, 1.0, 6.0),
    ],
)
def test_closed_form_matches_rk4_with_ripple(
    label: str, flow: float, factor: float, leak: float | None, p0: float, t1: float
) -> None:
    t0 = 12.3
    line = FluidLine(PARAMS, t0_s=t0, p0_kpa=p0)
    line.set_resistance_factor(t0, factor)
    line.set_leak(t0, leak)
    got = line.advance(t0 + t1, flow)
    want = rk4_pressure(
        PARAMS,
        p0_kpa=p0,
        t0_s=t0,
        t1_s=t0 + t1,
        flow_ul_per_s=flow,
        resistance_factor=factor,
        leak_kpa_s_per_ul=leak,
    )
    assert got == pytest.approx(want, abs=1e-9), label
    assert got != pytest.approx(p0, abs=1e-3), label  # the scenario does move the pressure


def test_periodic_steady_state_start_stays_periodic() -> None:
    t0 = 5.0
    line = FluidLine(PARAMS, t0_s=t0)
    want = rk4_pressure(PARAMS, p0_kpa=line.pressure_kpa, t0_s=t0, t1_s=t0 + 4.0, flow_ul_per_s=0.0)
    assert line.advance(t0 + 4.0, 0.0) == pytest.approx(want, abs=1e-9)
    # Steady ripple is attenuated/delayed by 1/(1 + jωτ): mean P_csf, amplitude below P_csf's.
    ts = np.linspace(t0 + 4.0, t0 + 24.0, 4001)
    ps = [line.advance(float(t), 0.0) for t in ts[1:]]
    assert float(np.mean(ps)) == pytest.approx(PARAMS.csf_pressure_kpa, abs=5e-3)
    swing = max(ps) - min(ps)
    assert 0.1 < swing < 2 * (PARAMS.respiratory_ripple_kpa + PARAMS.cardiac_ripple_kpa)


def test_one_big_advance_equals_many_small_ones() -> None:
    big = FluidLine(PARAMS, p0_kpa=0.0)
    small = FluidLine(PARAMS, p0_kpa=0.0)
    big.set_resistance_factor(0.0, 30.0)
    small.set_resistance_factor(0.0, 30.0)
    for i in range(1, 10_001):
        small.advance(i * 0.01, 0.3)
    assert big.advance(100.0, 0.3) == pytest.approx(small.pressure_kpa, abs=1e-9)


def test_complete_occlusion_rises_at_q_over_c() -> None:
    flow = 100.0 / 3600.0  # 100 µL/h
    line = FluidLine(PARAMS)
    line.set_resistance_factor(0.0, 1e6)
    p_start = line.pressure_kpa
    p_hour = line.advance(3600.0, flow)
    rise = (p_hour - p_start) / 3600.0
    assert rise == pytest.approx(flow / PARAMS.compliance_ul_per_kpa, rel=0.01)


@pytest.mark.parametrize("factor", [1e15, math.inf])
def test_sealed_line_rises_without_cancellation_for_months(factor: float) -> None:
    flow = 10.0 / 3600.0
    c = NO_RIPPLE.compliance_ul_per_kpa
    line = FluidLine(NO_RIPPLE, p0_kpa=2.0)
    line.set_resistance_factor(0.0, factor)
    assert line.time_constant_s > 1e14
    months = 90 * 86400.0
    got = line.advance(months, flow)
    if math.isinf(factor):
        want = 2.0 + flow * months / c
    else:
        # τ ≈ 4e14 s: e^(-x) with x ≈ 2e-8 by its series (a naive 1 - exp(-x) loses ~1e-4 kPa).
        r = NO_RIPPLE.catheter_resistance_kpa_s_per_ul * factor
        p_inf = 1.5 + flow * r
        x = months / (r * c)
        want = 2.0 + (p_inf - 2.0) * (x - x * x / 2 + x**3 / 6)
        assert want < 2.0 + flow * months / c - 1e-4  # the catheter still bleeds a little
    assert got == pytest.approx(want, rel=1e-12)


def test_leak_pulls_pressure_toward_zero() -> None:
    line = FluidLine(NO_RIPPLE)
    assert line.pressure_kpa == pytest.approx(1.5)
    line.set_leak(0.0, 0.05)
    p = line.advance(60.0, 0.0)
    r, rl = NO_RIPPLE.catheter_resistance_kpa_s_per_ul, 0.05
    assert p == pytest.approx(1.5 * rl / (r + rl), rel=1e-9)  # divider between CSF and 0 kPa
    assert p < 0.2
    line.set_leak(60.0, None)
    assert line.advance(120.0, 0.0) == pytest.approx(1.5, rel=1e-9)


def test_partial_occlusion_settles_at_csf_plus_q_r() -> None:
    flow = 10.0 / 3600.0
    factor = 1e3
    line = FluidLine(PARAMS)
    line.set_resistance_factor(0.0, factor)
    tau = line.time_constant_s
    assert tau == pytest.approx(PARAMS.compliance_ul_per_kpa * 0.4 * factor)
    t_settled = 30 * tau
    samples = [line.advance(t_settled + k * 0.05, flow) for k in range(1, 401)]  # 20 s
    r_new = PARAMS.catheter_resistance_kpa_s_per_ul * factor
    assert float(np.mean(samples)) == pytest.approx(1.5 + flow * r_new, abs=1e-3)
    assert line.steady_state_kpa(flow) == pytest.approx(1.5 + flow * r_new, rel=1e-12)


def test_crossing_time_is_closed_form_without_ripple() -> None:
    flow = 0.1
    line = FluidLine(NO_RIPPLE)
    line.set_resistance_factor(0.0, 1e6)
    t = line.first_time_at_or_above(50.0, flow, 1e6)
    assert t is not None
    assert line.pressure_at(t, flow) == pytest.approx(50.0, rel=1e-12)
    assert line.first_time_at_or_above(50.0, flow, t * 0.999) is None
    assert line.first_time_at_or_above(1.0, flow, 10.0) == 0.0  # already above


def test_crossing_time_with_ripple_is_the_first_one() -> None:
    # Healthy line, high flow: the ripple is large relative to the slow rise.
    flow = 0.05
    line = FluidLine(PARAMS)
    line.set_resistance_factor(0.0, 20.0)  # τ = 8 s, asymptote 1.5 + 0.4 kPa
    threshold = 1.75
    t = line.first_time_at_or_above(threshold, flow, 200.0)
    assert t is not None
    assert line.pressure_at(t, flow) == pytest.approx(threshold, abs=1e-9)
    before = np.linspace(0.0, t, 20_001)[:-1]
    assert max(line.pressure_at(float(s), flow) for s in before) < threshold
    # The line itself is not moved by the search.
    assert line.t_s == 0.0
    # Never reached: the asymptote plus the ripple stays below.
    assert line.first_time_at_or_above(3.0, flow, 1e6) is None


def test_invalid_line_inputs_raise() -> None:
    with pytest.raises(ValueError, match="compliance_ul_per_kpa"):
        LineParams(compliance_ul_per_kpa=0.0)
    with pytest.raises(ValueError, match="cardiac_ripple_kpa"):
        LineParams(cardiac_ripple_kpa=-0.1)
    with pytest.raises(ValueError, match="respiratory_hz"):
        LineParams(respiratory_hz=math.nan)
    line = FluidLine(PARAMS, t0_s=10.0)
    with pytest.raises(ValueError, match="backwards"):
        line.advance(9.0, 0.0)
    with pytest.raises(ValueError, match="flow must be finite"):
        line.advance(11.0, math.nan)
    with pytest.raises(ValueError, match="resistance factor"):
        line.set_resistance_factor(11.0, 0.0)
    with pytest.raises(ValueError, match="leak resistance"):
        line.set_leak(11.0, -1.0)
    with pytest.raises(ValueError, match="backwards"):
        line.set_leak(9.0, None)
    assert line.t_s == 10.0


def test_fault_changes_hold_the_last_flow() -> None:
    a = FluidLine(NO_RIPPLE)
    b = FluidLine(NO_RIPPLE)
    a.advance(1.0, 0.5)
    a.set_resistance_factor(3.0, 5.0)  # advances [1, 3] at the last flow, 0.5 µL/s
    b.advance(3.0, 0.5)
    b.set_resistance_factor(3.0, 5.0)
    assert a.pressure_kpa == pytest.approx(b.pressure_kpa, rel=1e-12)
    assert a.pressure_kpa > 1.6


# ---- pressure sensor -----------------------------------------------------------------------
def read_many(
    sensor: PressureSensor, n: int, *, t0: float = 0.0, true_kpa: float = 1.5
) -> list[float | None]:
    return [sensor.read(t0 + 0.01 * i, true_kpa) for i in range(n)]


def test_sensor_noise_is_gaussian_and_deterministic_per_seed() -> None:
    values = read_many(PressureSensor(SensorParams(noise_kpa=0.05, seed=7)), 4000)
    arr = np.array(values, dtype=float)
    assert float(arr.mean()) == pytest.approx(1.5, abs=0.005)
    assert float(arr.std()) == pytest.approx(0.05, rel=0.05)
    again = read_many(PressureSensor(SensorParams(noise_kpa=0.05, seed=7)), 4000)
    other = read_many(PressureSensor(SensorParams(noise_kpa=0.05, seed=8)), 4000)
    assert values == again
    assert values != other


def test_sensor_dropout_nan_and_stuck() -> None:
    sensor = PressureSensor(SensorParams(noise_kpa=0.05))
    last = sensor.read(0.0, 2.0)
    assert last is not None
    sensor.inject(1.0, FaultKind.SENSOR_STUCK)
    assert [sensor.read(1.0 + i, 2.0 + i) for i in range(5)] == [last] * 5
    sensor.inject(10.0, FaultKind.SENSOR_NAN)
    nan_value = sensor.read(10.0, 2.0)
    assert nan_value is not None and math.isnan(nan_value)
    sensor.inject(11.0, FaultKind.SENSOR_DROPOUT)
    assert sensor.read(11.0, 2.0) is None
    assert sensor.active_faults == {
        FaultKind.SENSOR_STUCK,
        FaultKind.SENSOR_NAN,
        FaultKind.SENSOR_DROPOUT,
    }
    sensor.clear(12.0)
    healthy = sensor.read(12.0, 30.0)
    assert healthy is not None and abs(healthy - 30.0) < 1.0
    # Stuck with no earlier reading freezes the first one.
    fresh = PressureSensor()
    fresh.inject(0.0, FaultKind.SENSOR_STUCK)
    first = fresh.read(0.0, 5.0)
    assert first is not None and abs(first - 5.0) < 1.0
    assert fresh.read(1.0, 50.0) == first


def test_sensor_drift_grows_at_the_set_rate() -> None:
    sensor = PressureSensor(SensorParams(noise_kpa=0.0))
    assert sensor.read(100.0, 1.5) == 1.5
    sensor.inject(100.0, FaultKind.SENSOR_DRIFT, 2.0)  # kPa/h
    assert sensor.read(100.0 + 1800.0, 1.5) == pytest.approx(2.5)
    assert sensor.read(100.0 + 7200.0, 1.5) == pytest.approx(5.5)
    sensor.inject(7300.0, FaultKind.SENSOR_DRIFT, -1.0)  # new rate, offset kept
    assert sensor.read(7300.0 + 3600.0, 1.5) == pytest.approx(1.5 + 4.0 - 1.0)
    default = PressureSensor(SensorParams(noise_kpa=0.0, drift_kpa_per_h=0.5))
    default.inject(0.0, FaultKind.SENSOR_DRIFT)
    assert default.read(3600.0, 0.0) == pytest.approx(0.5)


def test_sensor_spikes_are_rare_single_samples_of_the_set_size() -> None:
    sensor = PressureSensor(SensorParams(noise_kpa=0.0, spike_probability=0.05, seed=3))
    sensor.inject(0.0, FaultKind.SENSOR_SPIKES, 20.0)
    values = np.array(read_many(sensor, 10_000), dtype=float)
    offsets = values - 1.5
    spiked = np.abs(offsets) > 1e-12
    assert np.all(np.isclose(np.abs(offsets[spiked]), 20.0))
    assert float(spiked.mean()) == pytest.approx(0.05, abs=0.01)
    assert np.any(offsets > 0) and np.any(offsets < 0)


def test_sensor_faults_do_not_shift_the_noise_stream() -> None:
    clean = PressureSensor(SensorParams(seed=11))
    faulty = PressureSensor(SensorParams(seed=11))
    faulty.inject(0.0, FaultKind.SENSOR_DROPOUT)
    read_many(clean, 50)
    read_many(faulty, 50)
    faulty.clear(1.0)
    assert read_many(clean, 50, t0=1.0) == read_many(faulty, 50, t0=1.0)


def test_sensor_rejects_bad_input() -> None:
    sensor = PressureSensor(t0_s=5.0)
    with pytest.raises(ValueError, match="backwards"):
        sensor.read(4.0, 1.0)
    with pytest.raises(ValueError, match="not a sensor fault"):
        sensor.inject(5.0, FaultKind.OCCLUSION)
    with pytest.raises(ValueError, match="spike_probability"):
        SensorParams(spike_probability=1.5)
