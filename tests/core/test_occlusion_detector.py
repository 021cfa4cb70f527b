"""Occlusion/leak/sensor-fault detector on synthetic line-pressure traces built here with numpy.

The traces follow the bench physics: CSF pressure 1.5 kPa, respiratory (0.25 Hz) and cardiac
(1.2 Hz) ripple of ±0.3 kPa together, 0.02 kPa sensor noise, sample times jittered (they come
from messages, so they are never perfectly regular; exact regularity would also alias the
ripple into a constant offset).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from pump_rig.core.occlusion_detector import (
    DetectorConfig,
    LineAssessment,
    LineState,
    OcclusionDetector,
)

FloatArray = npt.NDArray[np.floating[Any]]

CSF_KPA = 1.5
RESP_KPA, RESP_HZ = 0.2, 0.25
CARD_KPA, CARD_HZ = 0.1, 1.2
RIPPLE_PEAK_KPA = RESP_KPA + CARD_KPA
NOISE_KPA = 0.02
JITTER = 0.3  # sample gaps vary between 1.0 and 1.3 nominal periods

CFG = DetectorConfig()


def sample_times(duration_s: float, period_s: float, *, seed: int = 0) -> FloatArray:
    rng = np.random.default_rng(seed)
    n = int(duration_s / period_s)
    return np.cumsum(period_s * (1.0 + JITTER * rng.random(n)))


def healthy_line(t: FloatArray, *, seed: int = 1) -> FloatArray:
    rng = np.random.default_rng(seed)
    p: FloatArray = (
        CSF_KPA
        + RESP_KPA * np.sin(2 * np.pi * RESP_HZ * t + 0.3)
        + CARD_KPA * np.sin(2 * np.pi * CARD_HZ * t + 1.0)
        + rng.normal(0.0, NOISE_KPA, t.shape)
    )
    return p


def run(
    detector: OcclusionDetector,
    t: Iterable[float],
    p: Iterable[float],
    *,
    pump_running: bool = True,
) -> list[LineAssessment]:
    return [
        detector.update(float(ti), float(pi), pump_running=pump_running)
        for ti, pi in zip(t, p, strict=True)
    ]


def state_of(detector: OcclusionDetector) -> LineState:
    return detector.state  # a call, so mypy does not narrow the property between steps


def first(assessments: list[LineAssessment], state: LineState) -> LineAssessment | None:
    return next((a for a in assessments if a.state is state), None)


def states(assessments: list[LineAssessment]) -> set[LineState]:
    return {a.state for a in assessments}


def settled_detector(
    seconds: float = 600.0, period_s: float = 5.0
) -> tuple[OcclusionDetector, float]:
    """A detector that has learned its baseline on a healthy line; returns it and the time."""
    detector = OcclusionDetector()
    t = sample_times(seconds, period_s, seed=99)
    assert {a.state for a in run(detector, t, healthy_line(t))} == {LineState.OK}
    return detector, float(t[-1])


# --- healthy line: no false alarms -----------------------------------------------------------


@pytest.mark.parametrize(
    ("hours", "period_s"),
    [(24.0, 5.0), (24.0, 10.0), (2.0, 1.0), (0.5, 0.1)],
)
def test_healthy_line_never_alarms(hours: float, period_s: float) -> None:
    detector = OcclusionDetector()
    t = sample_times(hours * 3600.0, period_s, seed=int(period_s * 10))
    results = run(detector, t, healthy_line(t, seed=int(hours)))
    false_alarms = [a for a in results if a.state is not LineState.OK]
    assert len(results) == len(t)
    assert false_alarms == []
    assert detector.baseline_kpa == pytest.approx(CSF_KPA, abs=0.05)


def test_healthy_line_with_slow_csf_drift_and_pump_cycling_never_alarms() -> None:
    detector = OcclusionDetector()
    t = sample_times(24 * 3600.0, 5.0, seed=7)
    drift = 0.4 * np.sin(2 * np.pi * t / (24 * 3600.0))  # ±0.4 kPa over a day
    running = (t // 1800.0) % 2 == 0  # pump on/off every half hour
    results = [
        detector.update(float(ti), float(pi), pump_running=bool(ri))
        for ti, pi, ri in zip(t, healthy_line(t) + drift, running, strict=True)
    ]
    assert [a for a in results if a.state is not LineState.OK] == []


def test_baseline_starts_from_first_samples_and_is_nan_before() -> None:
    detector = OcclusionDetector()
    a = detector.update(0.0, 1.5, pump_running=True)
    assert math.isnan(a.baseline_kpa)
    assert math.isnan(a.rise_rate_kpa_per_min)
    assert a.state is LineState.OK
    assert "learning baseline" in a.reason
    t = sample_times(60.0, 5.0)
    results = run(detector, t, healthy_line(t))
    assert not math.isnan(results[-1].baseline_kpa)
    assert results[-1].baseline_kpa == pytest.approx(CSF_KPA, abs=0.3)


# --- complete occlusion ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate_ul_per_h", "compliance_ul_per_kpa", "period_s"),
    [
        (20.0, 1.0, 5.0),  # the demo: 20 kPa/h, threshold in 30 min
        (2.0, 2.0, 10.0),  # slowest realistic: 1 kPa/h, threshold in 10 h
        (5.0, 0.2, 10.0),
        (100.0, 0.2, 1.0),
        (500.0, 1.0, 0.1),
    ],
)
def test_complete_occlusion_detected_within_threshold_over_rise_rate(
    rate_ul_per_h: float, compliance_ul_per_kpa: float, period_s: float
) -> None:
    rise_kpa_per_s = rate_ul_per_h / compliance_ul_per_kpa / 3600.0  # Q/C
    ideal_s = CFG.occlusion_threshold_kpa / rise_kpa_per_s
    onset_s = 1800.0
    t = sample_times(onset_s + 1.5 * ideal_s + 600.0, period_s, seed=3)
    p = healthy_line(t) + np.where(t > onset_s, (t - onset_s) * rise_kpa_per_s, 0.0)

    results = run(OcclusionDetector(), t, p)
    occluded = first(results, LineState.OCCLUDED)
    assert occluded is not None
    assert occluded.detector == "threshold"
    delay_s = occluded.t_s - onset_s
    # Bound: threshold/(Q/C), plus the ripple, plus what the baseline may follow of the start
    # of the rise before it leaves its band (0.5 kPa), plus persistence at the widest gap.
    max_gap_s = period_s * (1.0 + JITTER)
    upper_s = (
        CFG.occlusion_threshold_kpa + RIPPLE_PEAK_KPA + 0.5
    ) / rise_kpa_per_s + CFG.persistence_samples * max_gap_s
    lower_s = (CFG.occlusion_threshold_kpa - RIPPLE_PEAK_KPA - 0.1) / rise_kpa_per_s
    assert lower_s <= delay_s <= upper_s, (delay_s, ideal_s)
    assert all(a.state is LineState.OK for a in results if a.t_s <= onset_s)
    # Once occluded, the rising line stays occluded (no flapping).
    after = [a.state for a in results if a.t_s >= occluded.t_s]
    assert set(after) == {LineState.OCCLUDED}
    # SUSPECTED came first, as the early warning.
    suspected = first(results, LineState.SUSPECTED)
    assert suspected is not None
    assert suspected.t_s < occluded.t_s


def test_fast_rise_warns_early_by_rise_rate() -> None:
    rise_kpa_per_s = 20.0 / 3600.0  # 20 µL/h into 1 µL/kPa
    onset_s = 1800.0
    t = sample_times(onset_s + 3600.0, 5.0, seed=4)
    p = healthy_line(t) + np.where(t > onset_s, (t - onset_s) * rise_kpa_per_s, 0.0)
    results = run(OcclusionDetector(), t, p)
    suspected = first(results, LineState.SUSPECTED)
    assert suspected is not None
    assert suspected.detector == "rise_rate"
    # well before the 4 kPa suspect threshold (12 min) is reached
    assert suspected.t_s - onset_s < 0.5 * CFG.suspect_threshold_kpa / rise_kpa_per_s
    assert suspected.rise_rate_kpa_per_min == pytest.approx(rise_kpa_per_s * 60.0, rel=0.3)
    late = [a for a in results if a.t_s > onset_s + 900.0]
    assert np.median([a.rise_rate_kpa_per_min for a in late]) == pytest.approx(
        rise_kpa_per_s * 60.0, rel=0.05
    )


def test_rise_rate_rule_needs_the_pump_running() -> None:
    rise_kpa_per_s = 20.0 / 3600.0
    onset_s = 1800.0
    t = sample_times(onset_s + 3600.0, 5.0, seed=4)
    p = healthy_line(t) + np.where(t > onset_s, (t - onset_s) * rise_kpa_per_s, 0.0)
    results = run(OcclusionDetector(), t, p, pump_running=False)
    suspected = first(results, LineState.SUSPECTED)
    assert suspected is not None
    assert suspected.detector == "threshold"  # only the pressure threshold, later


def test_baseline_frozen_during_occlusion() -> None:
    detector, t_end = settled_detector()
    baseline = detector.baseline_kpa
    t = t_end + sample_times(3 * 3600.0, 5.0, seed=5)
    p = healthy_line(t) + (t - t_end) * (20.0 / 3600.0)
    results = run(detector, t, p)
    assert results[-1].state is LineState.OCCLUDED
    assert detector.baseline_kpa == pytest.approx(baseline, abs=0.1)


def test_occluded_from_the_start_is_caught_by_absolute_rule() -> None:
    detector = OcclusionDetector()
    t = sample_times(60.0, 5.0)
    results = run(detector, t, 80.0 + healthy_line(t))
    occluded = first(results, LineState.OCCLUDED)
    assert occluded is not None
    assert occluded.detector == "absolute"
    assert results.index(occluded) == CFG.persistence_samples - 1


def test_occlusion_released_with_hysteresis() -> None:
    detector, t_end = settled_detector()
    t = t_end + sample_times(1200.0, 5.0, seed=6)
    n = len(t)
    # up to +12 kPa, hold at +9 (between release 8 and threshold 10), then back to normal
    level = np.concatenate(
        [np.full(n // 3, 12.0), np.full(n // 3, 9.0), np.zeros(n - 2 * (n // 3))]
    )
    results = run(detector, t, healthy_line(t) + level)
    third = n // 3
    assert results[third - 1].state is LineState.OCCLUDED
    assert {a.state for a in results[third : 2 * third]} == {LineState.OCCLUDED}  # held
    assert results[-1].state is LineState.OK
    assert results[-1].detector == ""


# --- partial occlusion -----------------------------------------------------------------------


def partial_occlusion(
    t: FloatArray, onset_s: float, plateau_kpa: float, tau_s: float
) -> FloatArray:
    """Pressure rise towards Q·R with time constant R·C after the catheter narrows."""
    dt = np.clip(t - onset_s, 0.0, None)
    rise: FloatArray = plateau_kpa * -np.expm1(-dt / tau_s)
    return rise


def test_partial_occlusion_plateau_between_thresholds_is_suspected_not_occluded() -> None:
    detector, t_end = settled_detector()
    t = t_end + sample_times(6 * 3600.0, 5.0, seed=8)
    results = run(detector, t, healthy_line(t) + partial_occlusion(t, t_end, 6.0, 1200.0))
    suspected = first(results, LineState.SUSPECTED)
    assert suspected is not None
    assert LineState.OCCLUDED not in states(results)
    assert LineState.LEAK not in states(results)
    assert {a.state for a in results if a.t_s > suspected.t_s} == {LineState.SUSPECTED}


def test_small_partial_occlusion_warned_by_rise_rate_and_held() -> None:
    # Catheter resistance ×1000 at 20 µL/h: Q·R ≈ 2.2 kPa, R·C ≈ 400 s (the mock's default).
    detector, t_end = settled_detector()
    t = t_end + sample_times(3 * 3600.0, 5.0, seed=9)
    results = run(detector, t, healthy_line(t) + partial_occlusion(t, t_end, 2.2, 400.0))
    suspected = first(results, LineState.SUSPECTED)
    assert suspected is not None
    assert suspected.detector == "rise_rate"
    assert suspected.t_s - t_end < 900.0
    # held while the pressure stays above the release level, never escalated
    assert results[-1].state is LineState.SUSPECTED
    assert LineState.OCCLUDED not in states(results)


def test_severe_partial_occlusion_is_occluded() -> None:
    detector, t_end = settled_detector()
    t = t_end + sample_times(3 * 3600.0, 5.0, seed=10)
    results = run(detector, t, healthy_line(t) + partial_occlusion(t, t_end, 30.0, 1800.0))
    occluded = first(results, LineState.OCCLUDED)
    assert occluded is not None
    # 30·(1 − e^(−t/1800)) reaches 10 kPa at t = 1800·ln(1.5) ≈ 730 s
    assert occluded.t_s - t_end == pytest.approx(1800.0 * math.log(1.5), abs=120.0)


# --- leak ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pump_running", [True, False])
def test_leak_detected_within_persistence(pump_running: bool) -> None:
    detector, t_end = settled_detector()
    t = t_end + sample_times(600.0, 5.0, seed=11)
    # a parallel path to 0 kPa: the line settles near 0.17 kPa with a tenth of the ripple
    leaked = 0.17 + 0.1 * (healthy_line(t) - CSF_KPA)
    results = run(detector, t, leaked, pump_running=pump_running)
    leak = first(results, LineState.LEAK)
    assert leak is not None
    assert leak.detector == "leak"
    assert results.index(leak) == CFG.persistence_samples - 1
    assert {a.state for a in results[results.index(leak) :]} == {LineState.LEAK}
    # reconnected: back to OK after persistence
    t2 = t[-1] + sample_times(120.0, 5.0, seed=12)
    back = run(detector, t2, healthy_line(t2))
    assert back[-1].state is LineState.OK


def test_small_dip_is_not_a_leak() -> None:
    detector, t_end = settled_detector()
    t = t_end + sample_times(600.0, 5.0, seed=13)
    results = run(detector, t, healthy_line(t) - 0.4)
    assert states(results) == {LineState.OK}


# --- spikes ----------------------------------------------------------------------------------


def test_single_spikes_do_not_alarm() -> None:
    detector, t_end = settled_detector()
    t = t_end + sample_times(6 * 3600.0, 5.0, seed=14)
    p = healthy_line(t)
    rng = np.random.default_rng(15)
    spike_at = np.flatnonzero(rng.random(len(t)) < 0.02)
    spike_at = spike_at[np.diff(spike_at, prepend=-10) > CFG.persistence_samples]  # isolated
    p[spike_at] += rng.choice([20.0, 80.0, -1.4], size=len(spike_at))  # up, absolute, down
    assert len(spike_at) > 50
    assert states(run(detector, t, p)) == {LineState.OK}


def test_spikes_shorter_than_persistence_do_not_alarm_but_persistent_ones_do() -> None:
    detector, t_end = settled_detector()
    n = CFG.persistence_samples
    t = t_end + 5.0 * np.arange(1, 40)
    p = healthy_line(t)
    p[5 : 5 + n - 1] += 20.0
    assert states(run(detector, t[:20], p[:20])) == {LineState.OK}
    p[25 : 25 + n] += 20.0
    assert run(detector, t[20:], p[20:])[25 + n - 1 - 20].state is LineState.OCCLUDED


# --- sensor faults ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "detector_name"),
    [(math.nan, "nan"), (math.inf, "nan"), (-math.inf, "nan"), (500.0, "range"), (-50.0, "range")],
)
def test_invalid_readings_fault_after_persistence_and_recover(
    bad: float, detector_name: str
) -> None:
    detector, t_end = settled_detector()
    n = CFG.persistence_samples
    t = t_end + 5.0 * np.arange(1, 3 * n + 1)
    one = detector.update(float(t[0]), bad, pump_running=True)
    assert one.state is LineState.OK  # one bad reading is ignored...
    assert "ignored" in one.reason
    detector.update(float(t[1]), 1.5, pump_running=True)
    results = [detector.update(float(ti), bad, pump_running=True) for ti in t[2 : 2 + n]]
    assert [a.state for a in results[:-1]] == [LineState.OK] * (n - 1)
    assert results[-1].state is LineState.SENSOR_FAULT  # ...persistent ones are a fault
    assert results[-1].detector == detector_name
    recovering = run(detector, t[2 + n : 2 + 2 * n], healthy_line(t[2 + n : 2 + 2 * n]))
    assert [a.state for a in recovering[:-1]] == [LineState.SENSOR_FAULT] * (n - 1)
    assert recovering[-1].state is LineState.OK


@pytest.mark.parametrize("period_s", [5.0, 0.1])
def test_stuck_sensor(period_s: float) -> None:
    detector, t_end = settled_detector()
    needed = max(CFG.stuck_samples, math.ceil(CFG.stuck_min_duration_s / period_s) + 1)
    t = t_end + period_s * np.arange(1, needed + 5)
    results = [detector.update(float(ti), 1.6123, pump_running=True) for ti in t]
    assert {a.state for a in results[: needed - 1]} == {LineState.OK}
    assert results[needed - 1].state is LineState.SENSOR_FAULT
    assert results[needed - 1].detector == "stuck"
    assert {a.state for a in results[needed - 1 :]} == {LineState.SENSOR_FAULT}
    t2 = t[-1] + sample_times(60.0, period_s, seed=16)
    assert run(detector, t2, healthy_line(t2))[-1].state is LineState.OK


def test_timeout_after_samples_stop() -> None:
    detector, t_end = settled_detector()
    assert detector.check_timeout(t_end + CFG.sample_timeout_s - 0.1) is None
    a = detector.check_timeout(t_end + CFG.sample_timeout_s)
    assert a is not None
    assert (a.state, a.detector) == (LineState.SENSOR_FAULT, "timeout")
    assert math.isnan(a.pressure_kpa)
    assert state_of(detector) is LineState.SENSOR_FAULT
    # samples come back: recovery after persistence
    t = t_end + 40.0 + 5.0 * np.arange(CFG.persistence_samples)
    assert run(detector, t, healthy_line(t))[-1].state is LineState.OK
    assert detector.check_timeout(float(t[-1]) + 1.0) is None


def test_timeout_with_no_samples_at_all() -> None:
    detector = OcclusionDetector()
    assert detector.check_timeout(100.0) is None  # starts the clock
    assert detector.check_timeout(100.0 + CFG.sample_timeout_s - 1) is None
    a = detector.check_timeout(100.0 + CFG.sample_timeout_s)
    assert a is not None and a.detector == "timeout"

    counted_from_t0 = OcclusionDetector(t0_s=0.0)
    late = counted_from_t0.check_timeout(CFG.sample_timeout_s)
    assert late is not None and late.state is LineState.SENSOR_FAULT


def test_reset_keeps_baseline_and_timeout_clock() -> None:
    detector, t_end = settled_detector()
    baseline = detector.baseline_kpa
    t = t_end + 5.0 * np.arange(1, 10)
    run(detector, t, healthy_line(t) + 20.0)
    assert state_of(detector) is LineState.OCCLUDED
    detector.reset()
    assert state_of(detector) is LineState.OK
    assert detector.baseline_kpa == baseline
    # a reset cannot silence a dead sensor
    assert detector.check_timeout(float(t[-1]) + CFG.sample_timeout_s) is not None
    detector.reset(forget_baseline=True, t0_s=float(t[-1]) + 100.0)
    assert math.isnan(detector.baseline_kpa)
    assert detector.check_timeout(float(t[-1]) + 110.0) is None


def test_clock_going_back_does_not_break_the_detector() -> None:
    detector, _ = settled_detector()
    t = sample_times(600.0, 5.0, seed=17)  # a replay restarted from 0
    results = run(detector, t, healthy_line(t))
    assert states(results) == {LineState.OK}


# --- configuration ---------------------------------------------------------------------------


def test_every_setting_is_documented() -> None:
    for f in dataclasses.fields(DetectorConfig):
        assert f.metadata.get("description"), f.name


def test_from_mapping_overrides_and_converts_ints() -> None:
    config = DetectorConfig.from_mapping({"occlusion_threshold_kpa": 12, "persistence_samples": 5})
    assert config.occlusion_threshold_kpa == 12.0
    assert isinstance(config.occlusion_threshold_kpa, float)
    assert config.persistence_samples == 5
    assert DetectorConfig.from_mapping({}) == DetectorConfig()
    assert DetectorConfig.from_mapping(dataclasses.asdict(CFG)) == CFG


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"occlusion_treshold_kpa": 5.0}, ["occlusion_treshold_kpa", "occlusion_threshold_kpa"]),
        ({"bogus": 1}, ["bogus", "unknown"]),
        ({"persistence_samples": 2.5}, ["persistence_samples", "integer"]),
        ({"persistence_samples": True}, ["persistence_samples", "integer"]),
        ({"persistence_samples": 0}, ["persistence_samples", ">= 1"]),
        ({"leak_drop_kpa": "0.8"}, ["leak_drop_kpa", "number"]),
        ({"leak_drop_kpa": False}, ["leak_drop_kpa", "number"]),
        ({"baseline_tau_s": math.nan}, ["baseline_tau_s", "finite"]),
        ({"sample_timeout_s": -1.0}, ["sample_timeout_s", "> 0"]),
        ({"suspect_threshold_kpa": 10.0}, ["suspect_threshold_kpa", "occlusion_threshold_kpa"]),
        ({"occlusion_release_kpa": 10.0}, ["occlusion_release_kpa"]),
        ({"suspect_release_kpa": 4.0}, ["suspect_release_kpa"]),
        ({"leak_release_kpa": 0.8}, ["leak_release_kpa"]),
        ({"baseline_band_kpa": 4.0}, ["baseline_band_kpa"]),
        ({"min_valid_kpa": 400.0}, ["min_valid_kpa"]),
        ({"absolute_occlusion_kpa": 500.0}, ["absolute_occlusion_kpa"]),
        ({"rise_min_samples": 2}, ["rise_min_samples"]),
        ({"stuck_samples": 1}, ["stuck_samples"]),
    ],
)
def test_from_mapping_rejects_bad_settings_by_name(
    values: dict[str, object], words: list[str]
) -> None:
    with pytest.raises(ValueError) as info:
        DetectorConfig.from_mapping(values)
    for word in words:
        assert word in str(info.value)


def test_custom_config_is_used() -> None:
    config = DetectorConfig(
        occlusion_threshold_kpa=5.0,
        suspect_threshold_kpa=2.0,
        occlusion_release_kpa=4.0,
        suspect_release_kpa=1.2,
    )
    detector = OcclusionDetector(config)
    t = sample_times(600.0, 5.0)
    run(detector, t, healthy_line(t))
    t2 = t[-1] + 5.0 * np.arange(1, 6)
    assert run(detector, t2, healthy_line(t2) + 6.0)[-1].state is LineState.OCCLUDED
