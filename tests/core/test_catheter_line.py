"""Catheter line FIFO: hand-computed bridges, an exact reference model, long-run exactness."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pump_rig.core.catheter_line import CatheterLine, Outflow, Segment

# ---------------------------------------------------------------- exact reference model


class RefLine:
    """The same FIFO in exact rational arithmetic (inputs taken as the exact binary floats)."""

    def __init__(self, dead_volume: float, concentration: float) -> None:
        self.dead_volume = Fraction(dead_volume)
        self.runs: list[tuple[Fraction, float]] = [(self.dead_volume, concentration)]

    def push(self, volume: float, concentration: float) -> tuple[Fraction, list[Segment]]:
        """Push; return the exact dose out (µg) and the pieces out (merged, oldest first)."""
        runs = [*self.runs, (Fraction(volume), concentration)]
        remaining = Fraction(volume)
        out: list[tuple[Fraction, float]] = []
        while remaining > 0:
            run_volume, run_concentration = runs[0]
            taken = min(run_volume, remaining)
            out.append((taken, run_concentration))
            remaining -= taken
            if taken == run_volume:
                runs.pop(0)
            else:
                runs[0] = (run_volume - taken, run_concentration)
        self.runs = _merge(runs)
        dose = sum((v * Fraction(c) / 1000 for v, c in out), Fraction(0))
        return dose, [Segment(float(v), c) for v, c in _merge(out)]

    def drug_ug(self) -> Fraction:
        return sum((v * Fraction(c) / 1000 for v, c in self.runs), Fraction(0))


def _merge(runs: list[tuple[Fraction, float]]) -> list[tuple[Fraction, float]]:
    merged: list[tuple[Fraction, float]] = []
    for volume, concentration in runs:
        if volume == 0:
            continue
        if merged and merged[-1][1] == concentration:
            merged[-1] = (merged[-1][0] + volume, concentration)
        else:
            merged.append((volume, concentration))
    return merged


def _profile(segments: list[tuple[float, float]], dead_volume: float) -> list[tuple[float, float]]:
    """Segments with rounding slivers (< 1e-9 of the line) dropped and neighbours re-merged."""
    kept = [(Fraction(v), c) for v, c in segments if v >= 1e-9 * dead_volume]
    return [(float(v), c) for v, c in _merge(kept)]


def _segments(line: CatheterLine) -> tuple[Segment, ...]:
    """``line.segments`` through a call, so mypy does not narrow it across pushes."""
    return line.segments


def _line_drug_ug(line: CatheterLine) -> float:
    return math.fsum(s.volume_ul * s.concentration_ug_per_ml / 1000 for s in line.segments)


def _assert_sums_to_dead_volume(line: CatheterLine, rel: float = 1e-12) -> None:
    total = math.fsum(s.volume_ul for s in line.segments)
    assert total == pytest.approx(line.dead_volume_ul, rel=rel, abs=0.0)
    # Stronger than asked: the newest run is recomputed, never accumulated, so the runs sum to
    # the dead volume within a couple of roundings however many pushes there were.
    assert abs(total - line.dead_volume_ul) <= 4 * math.ulp(line.dead_volume_ul)


def _assert_well_formed(line: CatheterLine) -> None:
    segments = line.segments
    assert segments
    assert all(s.volume_ul > 0.0 for s in segments)
    assert all(
        a.concentration_ug_per_ml != b.concentration_ug_per_ml
        for a, b in itertools.pairwise(segments)
    )
    assert line.tip_concentration_ug_per_ml == segments[0].concentration_ug_per_ml
    _assert_sums_to_dead_volume(line)


# ---------------------------------------------------------------- hand-computed cases


def test_refill_bridge_hand_computed() -> None:
    # 100 µL line primed with 500 µg/mL; the reservoir is refilled with 1000 µg/mL.
    line = CatheterLine(100.0, 500.0)
    assert line.dead_volume_ul == 100.0
    assert _segments(line) == (Segment(100.0, 500.0),)
    assert line.tip_concentration_ug_per_ml == 500.0
    assert line.volume_until_concentration_ul(500.0) == 0.0
    assert line.volume_until_concentration_ul(1000.0) == 100.0
    assert line.dose_for_volume_ug(30.0, 1000.0) == 15.0

    first = line.push(30.0, 1000.0)  # 30 µL at 500 µg/mL leave: 15 µg
    assert first == Outflow(30.0, 15.0, (Segment(30.0, 500.0),))
    assert _segments(line) == (Segment(70.0, 500.0), Segment(30.0, 1000.0))
    assert line.tip_concentration_ug_per_ml == 500.0
    assert line.volume_until_concentration_ul(1000.0) == 70.0
    assert line.volume_until_concentration_ul(500.0) == 100.0  # 500 is no longer coming in

    # Predictions: 70 µL at 500 (35 µg) + 10 µL at 1000 (10 µg); beyond the line, incoming fluid.
    assert line.dose_for_volume_ug(80.0, 1000.0) == 45.0
    assert line.dose_for_volume_ug(250.0, 1000.0) == 35.0 + 30.0 + 150.0
    assert line.volume_for_dose_ul(35.0, 1000.0) == 70.0
    assert line.volume_for_dose_ul(45.0, 1000.0) == 80.0
    assert line.volume_for_dose_ul(215.0, 1000.0) == 250.0

    second = line.push(80.0, 1000.0)
    assert second == Outflow(80.0, 45.0, (Segment(70.0, 500.0), Segment(10.0, 1000.0)))
    assert line.tip_concentration_ug_per_ml == 1000.0
    assert _segments(line) == (Segment(100.0, 1000.0),)
    assert line.volume_until_concentration_ul(1000.0) == 0.0

    third = line.push(5.0, 1000.0)
    assert third == Outflow(5.0, 5.0, (Segment(5.0, 1000.0),))


def test_unprimed_line_delivers_nothing_until_primed() -> None:
    line = CatheterLine(50.0, 0.0)  # saline / unprimed
    assert line.dose_for_volume_ug(50.0, 2000.0) == 0.0
    assert line.volume_for_dose_ul(0.0, 2000.0) == 0.0
    assert line.volume_for_dose_ul(1.0, 2000.0) == 50.5  # 50 µL of saline, then 0.5 µL of drug
    assert line.volume_for_dose_ul(1.0, 0.0) == math.inf
    assert line.volume_until_concentration_ul(2000.0) == 50.0

    prime = line.push(50.0, 2000.0)
    assert prime == Outflow(50.0, 0.0, (Segment(50.0, 0.0),))
    assert _segments(line) == (Segment(50.0, 2000.0),)
    assert line.tip_concentration_ug_per_ml == 2000.0

    assert line.push(5.0, 2000.0) == Outflow(5.0, 10.0, (Segment(5.0, 2000.0),))
    assert line.volume_for_dose_ul(10.0, 2000.0) == 5.0


def test_three_concentrations_in_the_line() -> None:
    line = CatheterLine(100.0, 0.0)
    assert line.push(20.0, 500.0).dose_ug == 0.0
    assert line.push(30.0, 1000.0).dose_ug == 0.0
    assert _segments(line) == (Segment(50.0, 0.0), Segment(20.0, 500.0), Segment(30.0, 1000.0))
    assert line.volume_until_concentration_ul(1000.0) == 70.0
    assert line.volume_until_concentration_ul(500.0) == 100.0
    assert line.volume_until_concentration_ul(0.0) == 100.0
    # 50 µL of saline + 20 µL at 0.5 µg/µL + 30 µL at 1 µg/µL + 5 µL incoming at 0.25 µg/µL.
    assert line.dose_for_volume_ug(105.0, 250.0) == 10.0 + 30.0 + 1.25
    assert line.volume_for_dose_ul(10.0, 250.0) == 70.0
    assert line.volume_for_dose_ul(25.0, 250.0) == 85.0
    assert line.volume_for_dose_ul(41.25, 250.0) == 105.0

    out = line.push(60.0, 250.0)  # 50 µL saline + 10 µL at 500
    assert out == Outflow(60.0, 5.0, (Segment(50.0, 0.0), Segment(10.0, 500.0)))
    assert _segments(line) == (Segment(10.0, 500.0), Segment(30.0, 1000.0), Segment(60.0, 250.0))
    assert line.tip_concentration_ug_per_ml == 500.0
    assert line.volume_until_concentration_ul(250.0) == 40.0

    out = line.push(50.0, 250.0)  # 10 µL at 500 + 30 µL at 1000 + 10 µL at 250
    assert out == Outflow(
        50.0, 5.0 + 30.0 + 2.5, (Segment(10.0, 500.0), Segment(30.0, 1000.0), Segment(10.0, 250.0))
    )
    assert _segments(line) == (Segment(100.0, 250.0),)  # the two 250 runs merged, exactly 100 µL


def test_push_beyond_the_dead_volume_passes_incoming_fluid_through() -> None:
    line = CatheterLine(100.0, 500.0)
    out = line.push(250.0, 1000.0)
    assert out == Outflow(250.0, 50.0 + 150.0, (Segment(100.0, 500.0), Segment(150.0, 1000.0)))
    assert _segments(line) == (Segment(100.0, 1000.0),)

    same = line.push(250.0, 1000.0)  # pieces of equal concentration are merged
    assert same == Outflow(250.0, 250.0, (Segment(250.0, 1000.0),))

    exact = line.push(100.0, 0.0)  # exactly the dead volume: the line swaps completely
    assert exact == Outflow(100.0, 100.0, (Segment(100.0, 1000.0),))
    assert _segments(line) == (Segment(100.0, 0.0),)


def test_zero_push_changes_nothing() -> None:
    line = CatheterLine(100.0, 500.0)
    line.push(30.0, 1000.0)
    before = line.to_state()
    assert line.push(0.0, 0.0) == Outflow(0.0, 0.0, ())
    assert line.to_state() == before
    assert line.dose_for_volume_ug(0.0, 1000.0) == 0.0


def test_dose_beyond_all_drug_is_impossible_without_incoming_drug() -> None:
    line = CatheterLine(100.0, 500.0)  # 50 µg in the line
    line.push(40.0, 0.0)  # 30 µg left; saline behind it
    assert line.volume_for_dose_ul(30.0, 0.0) == 60.0
    assert line.volume_for_dose_ul(30.000001, 0.0) == math.inf
    assert line.volume_for_dose_ul(40.0, 1000.0) == 110.0  # 60 µL + saline 40 µL + 10 µL drug


def test_same_concentration_keeps_one_segment() -> None:
    line = CatheterLine(100.0, 500.0)
    for _ in range(10_000):
        out = line.push(0.37, 500.0)
        assert out.pieces == (Segment(0.37, 500.0),)
    assert _segments(line) == (Segment(100.0, 500.0),)


def test_segment_count_bounded_by_changes_still_in_the_line() -> None:
    line = CatheterLine(10.0, 0.0)
    for i in range(1_000):
        line.push(1.0, float(i % 3))  # a new concentration every µL: 10 changes in the line
        assert len(line.segments) <= 11
        _assert_well_formed(line)


# ---------------------------------------------------------------- long-run exactness


def _analytic_dose_ug(
    dead_volume: Fraction,
    initial: float,
    inputs: list[tuple[Fraction, float]],
    pushed: Fraction,
) -> Fraction:
    """Dose out after ``pushed`` µL: the first ``pushed`` µL of (line content, then inputs)."""
    dose = Fraction(0)
    remaining = pushed
    for volume, concentration in [(dead_volume, initial), *inputs]:
        taken = min(volume, remaining)
        dose += taken * Fraction(concentration) / 1000
        remaining -= taken
    assert remaining == 0
    return dose


def test_a_million_small_pushes_match_the_analytic_dose() -> None:
    # Unprimed 100 µL line; 0.01 µL pushes; the reservoir goes 500 → 1000 → 250 µg/mL.
    dead_volume, step = 100.0, 0.01
    phases = [(250_000, 500.0), (350_000, 1000.0), (400_000, 250.0)]
    delta = Fraction(step)
    inputs = [(n * delta, c) for n, c in phases]
    line = CatheterLine(dead_volume, 0.0)
    doses: list[float] = []
    checkpoints = {250_000, 255_000, 600_000, 605_000, 1_000_000}
    pushes = 0
    for count, concentration in phases:
        for _ in range(count):
            doses.append(line.push(step, concentration).dose_ug)
            pushes += 1
            if pushes % 1000 == 0:
                _assert_sums_to_dead_volume(line, rel=1e-12)
            if pushes in checkpoints:
                expected = _analytic_dose_ug(Fraction(dead_volume), 0.0, inputs, pushes * delta)
                assert math.fsum(doses) == pytest.approx(float(expected), rel=1e-9, abs=0.0)

    assert pushes == 1_000_000
    assert _segments(line) == (Segment(100.0, 250.0),)
    # 100 µL saline, 2500 µL at 0.5, 3500 µL at 1, 3900 µL at 0.25 µg/µL: 5725 µg.
    assert math.fsum(doses) == pytest.approx(5725.0, rel=1e-9)


def test_mid_bridge_line_content_matches_the_analytic_split() -> None:
    line = CatheterLine(100.0, 500.0)
    for _ in range(5_000):
        line.push(0.01, 1000.0)
    (old, new) = line.segments
    assert old.concentration_ug_per_ml == 500.0
    assert new.concentration_ug_per_ml == 1000.0
    assert old.volume_ul == pytest.approx(50.0, rel=1e-12)
    assert new.volume_ul == pytest.approx(50.0, rel=1e-12)
    assert line.volume_until_concentration_ul(1000.0) == old.volume_ul
    # Ending the bridge with exactly the volume reported leaves no sliver of the old drug.
    out = line.push(line.volume_until_concentration_ul(1000.0), 1000.0)
    assert out.pieces == (Segment(old.volume_ul, 500.0),)
    assert _segments(line) == (Segment(100.0, 1000.0),)


# ---------------------------------------------------------------- properties

concentrations = st.sampled_from([0.0, 25.0, 500.0, 1000.0, 2000.0, 333.3])
pushes_strategy = st.lists(
    st.tuples(
        st.one_of(
            st.floats(min_value=1e-3, max_value=5.0, allow_nan=False),
            st.floats(min_value=1e-3, max_value=300.0, allow_nan=False),
            st.sampled_from([0.0, 0.01, 0.1, 1.0, 100.0]),
        ),
        concentrations,
    ),
    max_size=60,
)
dead_volumes = st.sampled_from([0.5, 10.0, 100.0, 137.25])


@settings(max_examples=300, deadline=None)
@given(dead_volumes, concentrations, pushes_strategy)
def test_matches_exact_reference(
    dead_volume: float, initial: float, pushes: list[tuple[float, float]]
) -> None:
    line = CatheterLine(dead_volume, initial)
    ref = RefLine(dead_volume, initial)
    drug_in = [Fraction(0)]
    doses_out: list[float] = []
    max_concentration = 2000.0
    tol = 1e-9 * max_concentration * dead_volume / 1000  # µg
    for volume, concentration in pushes:
        predicted = line.dose_for_volume_ug(volume, concentration)
        out = line.push(volume, concentration)
        ref_dose, ref_pieces = ref.push(volume, concentration)
        drug_in.append(Fraction(volume) * Fraction(concentration) / 1000)
        doses_out.append(out.dose_ug)

        assert out.dose_ug == predicted  # the prediction is the same computation, bit for bit
        assert out.volume_ul == volume
        assert out.dose_ug == pytest.approx(float(ref_dose), rel=1e-12, abs=tol)
        assert math.fsum(p.volume_ul for p in out.pieces) == pytest.approx(
            volume, rel=1e-12, abs=1e-12 * dead_volume
        )
        piece_profile = _profile([(p.volume_ul, p.concentration_ug_per_ml) for p in out.pieces], 1)
        ref_profile = _profile([(p.volume_ul, p.concentration_ug_per_ml) for p in ref_pieces], 1)
        assert [c for _, c in piece_profile] == [c for _, c in ref_profile]

        _assert_well_formed(line)
        ours = _profile(
            [(s.volume_ul, s.concentration_ug_per_ml) for s in line.segments], dead_volume
        )
        theirs = _profile([(float(v), c) for v, c in ref.runs], dead_volume)
        assert [c for _, c in ours] == [c for _, c in theirs]
        for (v_ours, _), (v_ref, _) in zip(ours, theirs, strict=True):
            assert v_ours == pytest.approx(v_ref, rel=1e-9, abs=1e-9 * dead_volume)

    # Conservation: drug out + drug in the line = drug first in the line + drug pushed in.
    initial_drug = Fraction(dead_volume) * Fraction(initial) / 1000
    expected_out = float(initial_drug + sum(drug_in) - ref.drug_ug())
    assert math.fsum(doses_out) == pytest.approx(expected_out, rel=1e-9, abs=tol)
    assert _line_drug_ug(line) == pytest.approx(float(ref.drug_ug()), rel=1e-9, abs=tol)


@settings(max_examples=300, deadline=None)
@given(
    dead_volumes,
    concentrations,
    pushes_strategy,
    concentrations,
    st.floats(min_value=0.0, max_value=1000.0, allow_nan=False),
)
def test_volume_for_dose_inverts_dose_for_volume(
    dead_volume: float,
    initial: float,
    pushes: list[tuple[float, float]],
    incoming: float,
    volume: float,
) -> None:
    line = CatheterLine(dead_volume, initial)
    for v, c in pushes:
        line.push(v, c)
    dose = line.dose_for_volume_ug(volume, incoming)
    found = line.volume_for_dose_ul(dose, incoming)
    assert math.isfinite(found)
    # The smallest volume delivering that dose: never more than the volume it came from.
    assert found <= volume * (1 + 1e-12) + 1e-12 * dead_volume
    tol = 1e-12 * (dose + 2000.0 * dead_volume / 1000)
    assert line.dose_for_volume_ug(found, incoming) == pytest.approx(dose, rel=1e-12, abs=tol)
    if dose > 0.0 and found > 1e-9 * dead_volume:
        # ... and strictly less is not enough.
        assert line.dose_for_volume_ug(found * (1 - 1e-6), incoming) < dose


@settings(max_examples=200, deadline=None)
@given(dead_volumes, concentrations, pushes_strategy, concentrations)
def test_pushing_the_volume_until_a_concentration_brings_it_to_the_whole_line(
    dead_volume: float, initial: float, pushes: list[tuple[float, float]], target: float
) -> None:
    line = CatheterLine(dead_volume, initial)
    for v, c in pushes:
        line.push(v, c)
    remaining = line.volume_until_concentration_ul(target)
    if line.segments[-1].concentration_ug_per_ml != target:
        assert remaining == dead_volume
    line.push(remaining, target)
    assert _segments(line) == (Segment(dead_volume, target),)
    assert line.volume_until_concentration_ul(target) == 0.0


@settings(max_examples=200, deadline=None)
@given(dead_volumes, concentrations, pushes_strategy, pushes_strategy)
def test_state_round_trip_is_exact_and_continues_identically(
    dead_volume: float,
    initial: float,
    before: list[tuple[float, float]],
    after: list[tuple[float, float]],
) -> None:
    line = CatheterLine(dead_volume, initial)
    for v, c in before:
        line.push(v, c)
    state = line.to_state()
    restored = CatheterLine.from_state(dead_volume, json.loads(json.dumps(state)))
    assert restored.to_state() == state
    assert restored.segments == line.segments
    for v, c in after:
        assert restored.push(v, c) == line.push(v, c)
        assert restored.to_state() == line.to_state()


# ---------------------------------------------------------------- state validation


def test_from_state_merges_equal_neighbours() -> None:
    line = CatheterLine.from_state(100.0, [(40.0, 500.0), (10.0, 500.0), (50.0, 0.0)])
    assert _segments(line) == (Segment(50.0, 500.0), Segment(50.0, 0.0))
    assert line.push(60.0, 0.0).dose_ug == 25.0


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ([], "at least one"),
        ("100,500", "sequence"),
        (None, "sequence"),
        ([(100.0,)], r"state\[0\] must be a \(volume_ul"),
        ([(100.0, 500.0, 1.0)], r"state\[0\] must be a \(volume_ul"),
        (["ab"], r"state\[0\] must be a \(volume_ul"),
        ([(50.0, 500.0), (-50.0, 0.0), (100.0, 0.0)], r"state\[1\] volume_ul must be > 0"),
        ([(0.0, 500.0), (100.0, 0.0)], r"state\[0\] volume_ul must be > 0"),
        ([(math.nan, 500.0)], r"state\[0\] volume_ul must be finite"),
        ([(100.0, math.inf)], r"state\[0\] concentration_ug_per_ml must be finite"),
        ([(100.0, -1.0)], r"state\[0\] concentration_ug_per_ml must be >= 0"),
        ([(100.0, "500")], r"state\[0\] concentration_ug_per_ml must be a finite number"),
        ([(True, 500.0)], r"state\[0\] volume_ul must be a finite number"),
        ([(60.0, 500.0), (30.0, 0.0)], "sum to 90.0 µL, not the dead volume 100.0 µL"),
        ([(100.0001, 500.0)], "not the dead volume"),
    ],
)
def test_from_state_rejects_bad_state(state: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CatheterLine.from_state(100.0, state)  # type: ignore[arg-type]


@pytest.mark.parametrize("dead_volume", [0.0, -1.0, math.nan, math.inf])
def test_from_state_rejects_bad_dead_volume(dead_volume: float) -> None:
    with pytest.raises(ValueError, match="dead_volume_ul"):
        CatheterLine.from_state(dead_volume, [(100.0, 500.0)])


# ---------------------------------------------------------------- argument validation

BAD = [-1.0, -1e-300, math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", [*BAD, 0.0])
def test_constructor_rejects_bad_dead_volume(value: float) -> None:
    with pytest.raises(ValueError, match="dead_volume_ul"):
        CatheterLine(value, 500.0)


@pytest.mark.parametrize("value", BAD)
def test_constructor_rejects_bad_concentration(value: float) -> None:
    with pytest.raises(ValueError, match="initial_concentration_ug_per_ml"):
        CatheterLine(100.0, value)


@pytest.mark.parametrize("value", BAD)
def test_methods_reject_bad_arguments(value: float) -> None:
    line = CatheterLine(100.0, 500.0)
    with pytest.raises(ValueError, match="volume_ul"):
        line.push(value, 500.0)
    with pytest.raises(ValueError, match="concentration_ug_per_ml"):
        line.push(1.0, value)
    with pytest.raises(ValueError, match="concentration_ug_per_ml"):
        line.volume_until_concentration_ul(value)
    with pytest.raises(ValueError, match="volume_ul"):
        line.dose_for_volume_ug(value, 500.0)
    with pytest.raises(ValueError, match="incoming_concentration_ug_per_ml"):
        line.dose_for_volume_ug(1.0, value)
    with pytest.raises(ValueError, match="dose_ug"):
        line.volume_for_dose_ul(value, 500.0)
    with pytest.raises(ValueError, match="incoming_concentration_ug_per_ml"):
        line.volume_for_dose_ul(1.0, value)
    assert _segments(line) == (Segment(100.0, 500.0),)  # nothing changed


def test_rejects_non_numbers() -> None:
    line = CatheterLine(100.0, 500.0)
    with pytest.raises(ValueError, match="volume_ul must be a finite number"):
        line.push("1", 500.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="concentration_ug_per_ml must be a finite number"):
        line.push(1.0, None)  # type: ignore[arg-type]
