"""The randomized safety check (pump_rig.verification) and the models it judges the engine by.

1. A quick profile of random sequences against the real engine: no violation, and enough was
   exercised that the check cannot pass vacuously.
2. The check's own models: the 24 h window oracle against a brute-force computation, the line
   model against hand-computed cases, the device model's latency, budgets and whole steps.
3. The shrinker cuts a failure planted in a deliberately broken engine down to its cause.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from multiprocessing import get_context
from typing import Any

import pytest

from pump_rig.core.therapy_engine import CommandIntent, TherapyEngine
from pump_rig.verification import safety_scenarios
from pump_rig.verification.safety_model import (
    DAY_S,
    SALINE,
    DeviceCommand,
    DeviceModel,
    Fluid,
    LimitSchedule,
    LineModel,
    WindowOracle,
)
from pump_rig.verification.safety_runner import (
    OVERDOSE,
    SequenceResult,
    format_scenario,
    run_scenario,
    run_seed,
    shrink,
)
from pump_rig.verification.safety_scenarios import (
    BolusSpec,
    ClearAlarms,
    ClinicianBolus,
    DayGroup,
    DeviceFactor,
    MotorAlarm,
    PatientBolus,
    ProgramSpec,
    Refill,
    Restart,
    Resume,
    Scenario,
    SetProgram,
    Setup,
    Suspend,
    generate,
)

BACLOFEN = Fluid("baclofen", 500.0)
MORPHINE = Fluid("morphine", 1000.0)

# --- 1. the quick profile ----------------------------------------------------------------------

# About 35 s on two cores (it runs in `make test`); fixed seeds, so a failure reproduces with
# run_seed(seed, "quick").
QUICK_SEEDS = list(range(180))


def test_quick_profile_finds_no_violation() -> None:
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        results: list[SequenceResult] = list(
            pool.map(run_seed, QUICK_SEEDS, repeat("quick"), chunksize=8)
        )
    found = [(r.seed, v) for r in results for v in r.violations]
    by_kind = Counter(v.kind for _seed, v in found)
    first: dict[str, str] = {}
    for seed, v in found:
        first.setdefault(v.kind, f"seed {seed}: {v}")
    assert not found, (
        f"{len(found)} violations {dict(by_kind)}; first of each kind (reproduce with "
        "run_seed(seed, 'quick'), shrink with safety_runner.shrink):\n" + "\n".join(first.values())
    )
    # Not vacuous: the sequences granted boluses, restarted both ways, refused bad programs,
    # lost journal records, and drove the true 24 h dose to the daily maximum.
    assert sum(r.grants for r in results) > 20
    assert sum(r.restarts_clean for r in results) > 20
    assert sum(r.restarts_crash for r in results) > 20
    assert sum(r.journal_rollbacks for r in results) > 5
    assert sum(r.journal_damages for r in results) > 5
    assert sum(r.invalid_programs for r in results) > 20
    assert max(r.max_fraction for r in results) > 0.9


def test_a_scenario_prints_as_python_that_rebuilds_it() -> None:
    scenario = generate(random.Random(7), "quick", seed=7)
    assert eval(format_scenario(scenario), vars(safety_scenarios)) == scenario


# --- 2a. the window oracle against brute force -------------------------------------------------

Piece = tuple[float, float, float]  # t0, t1, dose


def _brute_window(pieces: list[Piece], t: float) -> float:
    """The dose delivered in [t - 24 h, t], piece by piece (no prefix sums)."""
    total = 0.0
    for t0, t1, dose in pieces:
        overlap = min(t1, t) - max(t0, t - DAY_S)
        if overlap > 0:
            total += dose * overlap / (t1 - t0)
    return total


def _limit_left(changes: list[tuple[float, float]], default: float, t: float) -> float:
    return next((lim for at, lim in reversed(changes) if at < t), default)


def _limit_right(changes: list[tuple[float, float]], default: float, t: float) -> float:
    return next((lim for at, lim in reversed(changes) if at <= t), default)


@pytest.mark.parametrize("seed", range(12))
def test_window_oracle_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    oracle = WindowOracle(0.01, slack_steps=0.0)
    defaults = {"a": 100.0, "b": 80.0}
    limits = LimitSchedule(defaults)
    pieces: dict[str, list[Piece]] = {"a": [], "b": []}
    changes: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    for drug in pieces:
        t = 0.0
        while t < 3 * DAY_S:
            t += rng.choice((0.0, rng.uniform(0.0, 3 * 3600.0)))  # contiguous, or a gap
            t1 = t + rng.uniform(60.0, 6 * 3600.0)
            dose = rng.uniform(0.0, 30.0)
            oracle.add_dose(drug, t, t1, dose, 500.0, 0)
            pieces[drug].append((t, t1, dose))
            t = t1
        for at in sorted(rng.uniform(0.0, 3 * DAY_S) for _ in range(4)):
            limit = rng.uniform(60.0, 200.0)
            limits.set(drug, at, limit)
            changes[drug].append((at, limit))
    report = oracle.report(limits)

    best = 0.0
    first = report.excesses[0].t_s if report.excesses else math.inf
    for drug, drug_pieces in pieces.items():
        breaks = {x for t0, t1, _ in drug_pieces for x in (t0, t1)}
        candidates = breaks | {x + DAY_S for x in breaks} | {at for at, _ in changes[drug]}
        for t0, t1, _dose in drug_pieces:
            inside = [t for t in candidates if t0 <= t <= t1]
            inside += [rng.uniform(t0, t1) for _ in range(3)]
            for t in inside:
                w = _brute_window(drug_pieces, t)
                sides = []
                if t > t0:
                    sides.append(_limit_left(changes[drug], defaults[drug], t))
                if t < t1:
                    sides.append(_limit_right(changes[drug], defaults[drug], t))
                for limit in sides:
                    best = max(best, w / limit)
                    # Nothing passes a limit before the first excess the oracle reports ...
                    assert w <= limit * (1 + 1e-9) + 1e-9 or t >= first - 1e-6
    assert report.max_fraction == pytest.approx(best, rel=1e-9)
    assert bool(report.excesses) == (best > 1 + 1e-9)
    for excess in report.excesses:  # ... which is where the window reaches it
        at = excess.t_s
        window = _brute_window(pieces[excess.drug], at)
        assert window == pytest.approx(excess.window_ug, rel=1e-9)
        assert window >= excess.limit_ug * (1 + 1e-9) - 1e-9


def test_window_oracle_allows_one_device_step_and_not_more() -> None:
    # 100 µg over a day, then a step's worth more: 0.5 µL at 500 µg/mL is 0.25 µg.
    for extra, excess in ((0.2, False), (0.3, True)):
        oracle = WindowOracle(0.5)
        oracle.add_dose("baclofen", 0.0, DAY_S / 2, 100.0 + extra, 500.0, 0)
        report = oracle.report(LimitSchedule({"baclofen": 100.0}))
        assert bool(report.excesses) is excess
        assert report.max_fraction == pytest.approx((100.0 + extra) / 100.0)
        assert report.within_slack == (0 if excess else 1)


def test_window_oracle_puts_a_limit_change_a_rounding_error_after_a_start_at_the_start() -> None:
    # 60 µg of fentanyl, then a 40 µg limit (delivery stops), then at 40,000 s a program raises
    # it to 1000 µg and delivery starts with it; interpolating along the line puts that start at
    # 39,999.999999999 s. The piece is delivered under the new limit (seed 7273 of the 40-min
    # bench was reported as 1.74 × 39.68 µg this way), and a lowered one binds the whole piece.
    start = 40000.0 - 1e-9
    for later_limit, excess in ((1000.0, False), (40.0, True)):
        limits = LimitSchedule({"fentanyl": 1000.0})
        limits.set("fentanyl", 36000.0, 40.0)
        limits.set("fentanyl", 40000.0, later_limit)
        oracle = WindowOracle(0.001)
        oracle.add_dose("fentanyl", 0.0, 36000.0, 60.0, 10000.0, 0)
        oracle.add_dose("fentanyl", start, 43600.0, 10.0, 10000.0, 0)
        report = oracle.report(limits)
        assert bool(report.excesses) is excess
        assert report.max_fraction == pytest.approx(70.0 / later_limit)


def test_window_oracle_counts_each_drug_against_its_own_limit() -> None:
    oracle = WindowOracle(0.001)
    oracle.add_dose("baclofen", 0.0, 3600.0, 90.0, 500.0, 0)
    oracle.add_dose("ziconotide", 3600.0, 7200.0, 19.0, 25.0, 0)
    report = oracle.report(LimitSchedule({"baclofen": 100.0, "ziconotide": 19.2}))
    assert not report.excesses
    assert report.max_fraction == pytest.approx(19.0 / 19.2)
    assert report.max_fraction_drug == "ziconotide"


# --- 2b. the line model, by hand ---------------------------------------------------------------


def test_line_delivers_the_old_drug_first_after_a_drug_change() -> None:
    line = LineModel(100.0, content=BACLOFEN, entering=BACLOFEN, pushed_ul=0.0)
    assert line.dose_by_drug_ug(0.0, 50.0) == pytest.approx({"baclofen": 25.0})
    line.fill(50.0, MORPHINE)  # refilled after 50 µL: morphine enters from there
    assert line.drugs_in_line(50.0) == {"baclofen"}
    assert line.drugs_in_line(60.0) == {"baclofen", "morphine"}
    # The next 100 µL out of the tip are baclofen (50 in the line at the start, 50 entered
    # before the refill); then morphine at 1 µg/µL.
    assert line.dose_by_drug_ug(50.0, 150.0) == pytest.approx({"baclofen": 50.0})
    assert line.dose_by_drug_ug(150.0, 250.0) == pytest.approx({"morphine": 100.0})
    assert line.tip_fluid(149.0) == BACLOFEN
    assert line.tip_fluid(151.0) == MORPHINE


def test_line_flush_replaces_what_is_in_the_line_with_saline() -> None:
    line = LineModel(100.0, content=BACLOFEN, entering=BACLOFEN, pushed_ul=0.0)
    line.fill(50.0, MORPHINE)
    line.flush(120.0)  # what entered at 20..120 µL never reaches the patient
    assert line.drugs_in_line(120.0) == set()
    assert line.tip_fluid(120.0) == SALINE
    # Saline for a whole dead volume, then the morphine that enters from 120 µL on.
    assert line.dose_by_drug_ug(120.0, 220.0) == {}
    assert line.dose_by_drug_ug(220.0, 300.0) == pytest.approx({"morphine": 80.0})
    # What left the tip before the flush is as it was: 70 µL of baclofen.
    assert line.dose_by_drug_ug(50.0, 120.0) == pytest.approx({"baclofen": 35.0})


def test_a_flushed_line_holds_no_drug_whatever_the_rounding_of_its_position() -> None:
    # Seed 44914 of the bench: a flush at 156.69977061487177 µL pushed through a 472 µL line,
    # then a refill. (156.699... + 472) - 472 rounds above 156.699..., so a round trip through
    # the pushed total found a sliver of the new drug in the line and called a correct
    # refill with another drug invalid.
    fentanyl, hydromorphone = Fluid("fentanyl", 707.0), Fluid("hydromorphone", 1000.0)
    position = 156.69977061487177
    line = LineModel(472.0, content=fentanyl, entering=fentanyl, pushed_ul=124.7088)
    line.flush(position)
    line.fill(position, hydromorphone)
    assert line.drugs_in_line(position) == set()
    assert line.drugs_in_line(position + 1.0) == {"hydromorphone"}


def test_unprimed_line_holds_saline_until_the_drug_reaches_the_tip() -> None:
    line = LineModel(200.0, content=SALINE, entering=BACLOFEN, pushed_ul=10.0)
    assert line.dose_by_drug_ug(10.0, 210.0) == {}
    assert line.dose_by_drug_ug(10.0, 260.0) == pytest.approx({"baclofen": 25.0})


# --- 2c. the device model -----------------------------------------------------------------------


def _run(device: DeviceModel, t0: float, t1: float) -> float:
    """Advance event by event from t0 to t1 (as the runner does); return the end time."""
    t = t0
    while t < t1:
        t_next = min(t1, device.next_event_s(t))
        device.advance(t, t_next)
        t = t_next
        device.settle(t)
    return t


def test_device_applies_commands_after_their_latency_in_whole_steps() -> None:
    device = DeviceModel(resolution_ul=0.5, counter_steps=0, watchdog_s=1e9)
    device.send(0.0, DeviceCommand(True, 360.0, volume_limit_ul=1.2, serial=1), 10.0)
    assert device.next_event_s(0.0) == 10.0
    assert device.advance(0.0, 10.0) is None  # not there yet
    device.settle(10.0)
    assert device.running
    # 0.1 µL/s; a budget of 1.2 µL ends after the step that passes it: 3 steps, 1.5 µL.
    assert device.next_event_s(10.0) == pytest.approx(25.0)
    device.advance(10.0, 17.0)
    assert device.position_ul == pytest.approx(0.7)
    assert device.counter_ul == 0.5  # whole steps only
    device.advance(17.0, 25.0)
    assert device.settle(25.0)  # stopped by itself
    assert not device.running
    assert device.counter_ul == device.position_ul == 1.5


def test_device_moves_a_whole_step_for_any_room_and_respects_its_own_counter() -> None:
    device = DeviceModel(resolution_ul=0.5, counter_steps=4, watchdog_s=1e9)
    device.send(0.0, DeviceCommand(True, 360.0, volume_limit_ul=0.01, serial=1), 0.0)
    device.settle(0.0)
    _run(device, 0.0, 100.0)
    assert device.counter_ul == 2.5  # one step past a tiny budget
    # Absolute stop at 3.1 µL on the counter: 0.6 µL of room, two steps (to 3.5).
    device.send(100.0, DeviceCommand(True, 360.0, stop_at_ul=3.1, serial=2), 0.0)
    device.settle(100.0)
    _run(device, 100.0, 200.0)
    assert device.counter_ul == 3.5
    # A stop the counter already passed: it does not start.
    device.send(200.0, DeviceCommand(True, 360.0, volume_limit_ul=5.0, stop_at_ul=3.5, serial=3), 0)
    device.settle(200.0)
    assert not device.running


def test_device_keeps_the_order_of_commands_whatever_their_latency() -> None:
    device = DeviceModel(resolution_ul=0.01, counter_steps=0, watchdog_s=1e9)
    assert device.send(0.0, DeviceCommand(True, 36.0, serial=1), 30.0) == 30.0
    assert device.send(5.0, DeviceCommand(False, serial=2), 0.0) == 30.0  # not before #1
    device.settle(30.0)
    assert device.command is not None and device.command.serial == 2
    assert not device.running


def test_device_watchdog_stops_it_when_the_controller_goes_quiet() -> None:
    device = DeviceModel(resolution_ul=0.1, counter_steps=0, watchdog_s=5.0)
    device.send(0.0, DeviceCommand(True, 3600.0, serial=1), 0.0)
    device.settle(0.0)
    for k in range(1, 11):  # heartbeats every second until 10 s, then a crash
        _run(device, k - 1.0, float(k))
        device.send(float(k), None, 0.0)
    assert _run(device, 10.0, 30.0) == 30.0
    assert device.stale and not device.running
    assert device.position_ul == pytest.approx(15.0)  # 1 µL/s until 5 s after the last
    device.send(30.0, None, 0.0)  # a heartbeat does not restart it ...
    device.settle(30.0)
    assert not device.running
    device.send(30.0, DeviceCommand(True, 3600.0, serial=2), 0.0)  # ... a new command does
    device.settle(30.0)
    assert device.running and not device.stale


def test_device_under_delivers_stalls_and_stops_at_the_end_of_the_reservoir() -> None:
    device = DeviceModel(resolution_ul=0.1, counter_steps=0, watchdog_s=1e9)
    device.send(0.0, DeviceCommand(True, 3600.0, serial=1), 0.0)
    device.settle(0.0)
    device.set_factor(0.5)
    device.advance(0.0, 10.0)
    assert device.position_ul == pytest.approx(5.0)
    device.set_factor(0.0)  # a stall: it runs and does not move
    assert device.advance(10.0, 20.0) is None
    assert device.running and device.next_event_s(20.0) > 1e8  # only its watchdog
    device.set_factor(1.0)
    device.set_reservoir(2.0)
    assert device.next_event_s(20.0) == pytest.approx(22.0)
    _run(device, 20.0, 40.0)
    assert device.position_ul == pytest.approx(7.0)
    assert device.running and device.speed_ul_per_s == 0.0


# --- 3. the shrinker ----------------------------------------------------------------------------


class _DoublingEngine(TherapyEngine):
    """A deliberately broken engine: its pump runs at twice the rate it means, uncapped."""

    _meant: CommandIntent | None = None
    _sent: CommandIntent | None = None

    def command(self, t_s: float) -> CommandIntent:
        meant = super().command(t_s)
        if meant is not self._meant or self._sent is None:  # the same object while unchanged
            changes: dict[str, Any] = {
                "flow_rate_ul_per_h": 2.0 * meant.flow_rate_ul_per_h,
                "volume_limit_ul": 0.0,
            }
            if "stop_at_device_ul" in {f.name for f in dataclasses.fields(CommandIntent)}:
                changes["stop_at_device_ul"] = 0.0
            self._meant, self._sent = meant, dataclasses.replace(meant, **changes)
        return self._sent


def test_shrinker_cuts_a_planted_overdose_down_to_its_cause() -> None:
    program = ProgramSpec(name="p1", drug="baclofen", daily_dose_ug=700.0)  # 1400 µg/day sent
    setup = Setup(
        days=2.0,
        resolution_ul=0.01,
        resolution_source="both",
        latency_s=0.0,
        latency_per_command=False,
        report_s=60.0,
        jitter=0.0,
        dead_volume_ul=100.0,
        line_primed=True,
        bucket_s=900.0,
        under_delivery_tolerance_ul=2.0,
        counter_start_steps=0,
        concentration=500.0,
        first_program=program,
    )
    noise: list[safety_scenarios.Event] = [PatientBolus(600.0 * k, "") for k in range(1, 15)]
    noise += [MotorAlarm(20000.0, False), ClearAlarms(21000.0), Restart(30000.0)]
    noise += [Suspend(40000.0), Resume(41000.0), Restart(50000.0)]
    scenario = Scenario(setup, tuple(sorted(noise, key=lambda e: e.at_s)))

    small, result = shrink(scenario, OVERDOSE, engine_cls=_DoublingEngine, max_seconds=90.0)
    violation = result.first(OVERDOSE)
    assert violation is not None
    # The drug limit is 1000 µg/day: at 1400 µg/day the window passes it after ~17 h.
    assert 16 * 3600.0 < violation.t_s < 20 * 3600.0
    assert len(small.events) <= 1
    assert small.setup.days < 1.0  # cut after the violation


# --- 4. what the 40-minute bench found, shrunk ---------------------------------------------------


def test_a_resent_command_whose_absolute_stop_binds_is_no_restart_divergence() -> None:
    """Seed 3659, shrunk: a clean restart re-sends the running capped command with what is
    left of its volume limit, counted from the engine's last report (so a little less than
    the twin's). Both commands carry the same absolute stop, which ends them both first: the
    device stops at the same place, and that is no divergence."""
    morphine = ProgramSpec(
        name="p1",
        drug="morphine",
        daily_dose_ug=6200.0,
        bolus=BolusSpec(dose_ug=1090.0, duration_min=437.0, lockout_min=677.0, max_per_24h=2),
        utc_offset_h=2.0,
        volume_ul=27600.0,
    )
    setup = Setup(
        days=1.0125,
        resolution_ul=0.016,
        resolution_source="both",
        latency_s=17.1,
        latency_per_command=False,
        report_s=117.0,
        jitter=0.0,
        dead_volume_ul=379.0,
        line_primed=True,
        bucket_s=300.0,
        under_delivery_tolerance_ul=0.5,
        counter_start_steps=0,
        concentration=500.0,
        first_program=morphine,
        rng_seed=14993745,
    )
    events: tuple[safety_scenarios.Event, ...] = (
        Refill(at_s=28788.0, volume_ul=36900.0, drug="morphine", concentration=20000.0),
        ClinicianBolus(at_s=28800.0, kind="bridge"),
        Refill(at_s=84240.0, volume_ul=39700.0, drug="morphine", concentration=500.0),
        ClinicianBolus(at_s=86400.0, kind="bridge"),
        Restart(at_s=87420.0, crash=False),
    )
    result = run_scenario(Scenario(setup, events))
    assert result.restarts_clean == 1
    assert not result.violations, [str(v) for v in result.violations]


def test_a_crash_twin_that_alarms_on_delivery_it_did_not_command_is_no_reference() -> None:
    """Seed 2572, shrunk: after a crash the restarted engine closes its buckets at other
    times than the never-restarted twin, so near the maximum it sends other budgets. The
    device runs the restarted engine's; the twin's ledger, whose buckets leave the window
    later, sees them pass its own maximum and latches DOSE_LIMIT (the true 24 h dose stays
    under it). The twin is then no reference for the restarted engine's later bolus grants."""
    baclofen = ProgramSpec(name="p1", drug="baclofen", daily_dose_ug=298.2, volume_ul=22100.0)
    capped = ProgramSpec(
        name="p2",
        drug="baclofen",
        daily_dose_ug=177.9,
        max_daily_dose_ug=178.4,
        utc_offset_h=13.0,
        volume_ul=31500.0,
    )
    bolus = ProgramSpec(
        name="p6",
        drug="baclofen",
        daily_dose_ug=0.0,
        groups=(DayGroup(days=("all",), steps=(("00:00", 4.25),)),),
        max_daily_dose_ug=456.0,
        bolus=BolusSpec(dose_ug=66.4, duration_min=59.0, lockout_min=89.0, max_per_24h=5),
        utc_offset_h=0.0,
        volume_ul=31500.0,
    )
    setup = Setup(
        days=1.2486111111111111,
        resolution_ul=0.0067,
        resolution_source="config",
        latency_s=30.4,
        latency_per_command=True,
        report_s=112.0,
        jitter=0.3,
        dead_volume_ul=247.0,
        line_primed=True,
        bucket_s=300.0,
        under_delivery_tolerance_ul=2.0,
        counter_start_steps=25604,
        concentration=2000.0,
        first_program=baclofen,
        rng_seed=1295581882,
    )
    events: tuple[safety_scenarios.Event, ...] = (
        Restart(at_s=3600.0, crash=True),
        SetProgram(at_s=21600.0, program=capped),
        Refill(at_s=50400.0, volume_ul=34700.0, drug="baclofen", concentration=166.0),
        SetProgram(at_s=104400.0, program=bolus),
        PatientBolus(at_s=107820.0, request_id="d"),
    )
    result = run_scenario(Scenario(setup, events))
    assert result.restarts_crash == 1 and result.grants == 1
    assert result.notes["crash twin dropped: it alarmed on delivery it did not command"] == 1
    assert not result.violations, [str(v) for v in result.violations]
    assert result.max_fraction <= 1.0


class _ForgetfulEngine(TherapyEngine):
    """A deliberately broken engine: reopened after a crash, it forgets a latched alarm."""

    @classmethod
    def open(cls, **kwargs: Any) -> TherapyEngine:
        engine = super().open(**kwargs)
        engine._latched = None
        return engine


def test_a_restart_that_forgets_a_latched_alarm_is_found_more_generous() -> None:
    """The other side of the rule above: a twin alone in an alarm that is not about the
    delivery it counted (here a motor stall) stays the reference, so an engine that forgets it
    on a crash restart is caught."""
    program = ProgramSpec(
        name="p1",
        drug="baclofen",
        daily_dose_ug=200.0,
        bolus=BolusSpec(dose_ug=20.0, duration_min=10.0, lockout_min=60.0, max_per_24h=4),
    )
    setup = Setup(
        days=0.2,
        resolution_ul=0.01,
        resolution_source="both",
        latency_s=0.0,
        latency_per_command=False,
        report_s=60.0,
        jitter=0.0,
        dead_volume_ul=100.0,
        line_primed=True,
        bucket_s=900.0,
        under_delivery_tolerance_ul=2.0,
        counter_start_steps=0,
        concentration=500.0,
        first_program=program,
    )
    events: tuple[safety_scenarios.Event, ...] = (
        MotorAlarm(at_s=3600.0),
        Restart(at_s=7200.0, crash=True),
        PatientBolus(at_s=9000.0, request_id="a"),
    )
    scenario = Scenario(setup, events)
    assert not run_scenario(scenario).violations
    broken = run_scenario(scenario, engine_cls=_ForgetfulEngine)
    assert "crash_restart_more_generous" in broken.kinds(), [str(v) for v in broken.violations]


def test_under_delivery_is_required_only_for_what_the_command_asked() -> None:
    """Seed 22802, rebuilt small: at the daily maximum the engine sends short capped commands
    (0.46 µL at 50 µL/h). A stall during one leaves the device 0.46 µL behind, inside the
    engine's tolerance: no UNDER_DELIVERY is owed. The harness counted the rate over the whole
    stretch (12 µL) and reported a missed alarm."""
    low = ProgramSpec(name="p1", drug="baclofen", daily_dose_ug=20.0, max_daily_dose_ug=700.0)
    high = ProgramSpec(name="p2", drug="baclofen", daily_dose_ug=600.0, max_daily_dose_ug=700.0)
    setup = Setup(
        days=1.5,
        resolution_ul=0.012,
        resolution_source="config",
        latency_s=20.0,
        latency_per_command=False,
        report_s=100.0,
        jitter=0.0,
        dead_volume_ul=100.0,
        line_primed=True,
        bucket_s=900.0,
        under_delivery_tolerance_ul=0.5,
        counter_start_steps=0,
        concentration=500.0,
        first_program=low,
    )
    events: tuple[safety_scenarios.Event, ...] = (
        ClinicianBolus(at_s=90000.0, kind="clinician", dose_ug=678.0, duration_min=120.0),
        SetProgram(at_s=100800.0, program=high, override_reason="bench: titration override"),
        DeviceFactor(at_s=101874.0, factor=0.0),  # just after a 0.464 µL command arrives
    )
    result = run_scenario(Scenario(setup, events))
    assert result.notes["under-delivery below the engine's tolerance"] == 1
    assert not result.violations, [str(v) for v in result.violations]


def test_a_lower_limit_set_while_a_stop_is_on_its_way_holds_once_the_stop_arrives() -> None:
    """Seed 13813, shrunk: a suspend sends a stop (41.8 s of latency), then a program with a
    lower maximum than the 24 h dose is accepted; nothing new is sent. The bridge command
    running meanwhile delivers until the stop arrives, which no engine could prevent: the
    harness had put the new limit in force at once and called that delivery 1.85 x over."""
    fentanyl = ProgramSpec(name="p1", drug="fentanyl", daily_dose_ug=120.0, volume_ul=28100.0)
    lower = ProgramSpec(
        name="p7",
        drug="fentanyl",
        daily_dose_ug=0.0,
        groups=(DayGroup(days=("all",), steps=(("00:00", 2.575), ("11:30", 3.316))),),
        max_daily_dose_ug=318.7,
        bolus=BolusSpec(dose_ug=39.3, duration_min=64.0, lockout_min=94.0, max_per_24h=6),
        utc_offset_h=-3.5,
        volume_ul=23700.0,
    )
    setup = Setup(
        days=0.9055555555555556,
        resolution_ul=0.013,
        resolution_source="config",
        latency_s=41.8,
        latency_per_command=False,
        report_s=85.4,
        jitter=0.3,
        dead_volume_ul=308.0,
        line_primed=True,
        bucket_s=900.0,
        under_delivery_tolerance_ul=0.5,
        counter_start_steps=0,
        concentration=707.0,
        first_program=fentanyl,
        rng_seed=1249752047,
    )
    events: tuple[safety_scenarios.Event, ...] = (
        ClinicianBolus(at_s=3600.0, kind="clinician", dose_ug=381.0, duration_min=94.0),
        Restart(at_s=7200.0, crash=True),
        Refill(at_s=72000.0, volume_ul=25200.0, drug="fentanyl", concentration=50.0, bridge=True),
        Suspend(at_s=78180.0),
        SetProgram(at_s=78180.0, program=lower),
    )
    result = run_scenario(Scenario(setup, events))
    assert result.restarts_crash == 1
    assert not result.violations, [str(v) for v in result.violations]
    assert result.max_fraction < 1.0


def test_a_crash_twin_whose_bolus_progress_counts_commands_not_run_is_no_reference() -> None:
    """Seed 3543, shrunk: a crash two minutes into a 59 min patient bolus. The restarted
    engine credits the bolus by the commands the device ran and finishes it; the twin, whose
    commands the device never ran, still has 1.8 µL of it to come an hour later and refuses a
    clinician bolus for that. No reference: the oracle judges what was delivered."""
    hydromorphone = ProgramSpec(
        name="p1",
        drug="hydromorphone",
        daily_dose_ug=7817.0,
        bolus=BolusSpec(dose_ug=682.0, duration_min=59.0, lockout_min=299.0, max_per_24h=3),
        volume_ul=25400.0,
    )
    setup = Setup(
        days=0.3784722222222222,
        resolution_ul=0.0046,
        resolution_source="device",
        latency_s=0.0,
        latency_per_command=True,
        report_s=52.0,
        jitter=0.0,
        dead_volume_ul=487.0,
        line_primed=True,
        bucket_s=900.0,
        under_delivery_tolerance_ul=0.5,
        counter_start_steps=0,
        concentration=4030.0,
        first_program=hydromorphone,
        rng_seed=1562982019,
    )
    events: tuple[safety_scenarios.Event, ...] = (
        Refill(at_s=14760.0, volume_ul=33700.0, drug="hydromorphone", concentration=1000.0),
        ClinicianBolus(at_s=17100.0, kind="bridge"),
        PatientBolus(at_s=29040.0, request_id=""),
        Restart(at_s=29160.0, crash=True),
        ClinicianBolus(at_s=32640.0, kind="clinician", dose_ug=517.0, duration_min=64.0),
    )
    result = run_scenario(Scenario(setup, events))
    assert result.notes["crash twin dropped: its bolus or stop counts commands not run"] == 1
    assert not result.violations, [str(v) for v in result.violations]


def test_a_crash_restart_holding_therapy_may_take_a_drug_change_the_running_twin_refuses() -> None:
    """Seed 12837, shrunk: near the maximum, a crash; the restarted engine books what the
    device pushed since its last record at its first report (later than it left, so it stays
    in the window longer) and holds therapy in ALARM, where the never-restarted twin runs on.
    A refill with another drug is then taken by the engine that holds therapy and refused by
    the twin that runs it: more cautious, not more generous."""
    baclofen = ProgramSpec(name="p1", drug="baclofen", daily_dose_ug=720.0, volume_ul=25600.0)
    capped = ProgramSpec(
        name="p4",
        drug="baclofen",
        daily_dose_ug=510.7,
        max_daily_dose_ug=535.9,
        utc_offset_h=2.0,
        volume_ul=34200.0,
    )
    setup = Setup(
        days=1.0840277777777778,
        resolution_ul=0.22,
        resolution_source="both",
        latency_s=17.7,
        latency_per_command=False,
        report_s=72.8,
        jitter=0.3,
        dead_volume_ul=24.8,
        line_primed=False,
        bucket_s=1800.0,
        under_delivery_tolerance_ul=2.0,
        counter_start_steps=74460,
        concentration=50.0,
        first_program=baclofen,
        rng_seed=454356578,
    )
    events: tuple[safety_scenarios.Event, ...] = (
        SetProgram(at_s=14400.0, program=capped),
        ClinicianBolus(at_s=43200.0, kind="prime", volume_ul=39.0, duration_min=6.0),
        Restart(at_s=90000.0, crash=True),
        Refill(at_s=93600.0, volume_ul=35100.0, drug="fentanyl", concentration=707.0, bridge=True),
    )
    result = run_scenario(Scenario(setup, events))
    assert result.notes["crash restart more cautious than the twin"] == 1
    assert not result.violations, [str(v) for v in result.violations]
    assert result.max_fraction <= 1.0
