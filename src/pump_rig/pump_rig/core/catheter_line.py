"""Drug concentration along the pump-to-catheter-tip line (pure Python, no rclpy).

The line (the pump's internal tubing plus the catheter) holds a fixed dead volume V_line. It is a
FIFO: every push enters at the pump end with the reservoir's concentration and drives the same
volume out of the catheter tip. After a refill with a different concentration the line still
holds the old drug, so the dose the patient receives must be accounted from the concentration
actually leaving the tip, not from the reservoir's.

Each run also names its drug: after a refill with ANOTHER drug the line holds two drugs, and each
must be dosed and limited as itself (the µg of one are not the µg of the other). Saline is
concentration 0 (its drug name does not matter and is kept as "").

The content is kept as runs of constant drug and concentration ("segments"), tip first.
Adjacent runs of equal drug and concentration are merged on entry, so the run count is bounded by
the number of changes still inside the line; in the common case (one run, same concentration in
as out) a push is O(1).

Exactness (months of ~0.01 µL pushes must match analytic integrals to 1e-9 relative):

* The newest run's volume is never accumulated: after every push it is recomputed as
  V_line − fsum(the other runs), so the runs always sum to V_line to within one rounding, however
  many pushes there were. With a single run its volume is V_line exactly.
* Only the tip run is decremented in place; its rounding error is bounded by the number of pushes
  it takes to drain one run (V_line / push volume), independent of the therapy's length.
* Whether a push drains a run is decided on fsum of the volumes drained so far, so pushing exactly
  :meth:`CatheterLine.volume_until_concentration_ul` always brings the new concentration to the
  tip, never leaving a rounding sliver of the old one.
* :meth:`CatheterLine.dose_for_volume_ug` and :meth:`CatheterLine.push` share one computation, so
  a predicted dose equals the dose then pushed bit for bit.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Final

__all__ = ["CatheterLine", "Outflow", "Segment"]

_UL_PER_ML: Final = 1000.0
# from_state accepts runs summing to the dead volume within this relative tolerance (to_state
# output sums to it within a few ulps; anything further off is a different line or corruption).
_STATE_SUM_REL_TOL: Final = 1e-9


@dataclass(frozen=True)
class Segment:
    """A run of fluid of one drug at one concentration ("" and 0 for saline)."""

    volume_ul: float
    concentration_ug_per_ml: float
    drug: str = ""


@dataclass(frozen=True)
class Outflow:
    """What one push drove out of the catheter tip."""

    volume_ul: float  # volume that left the tip (== volume pushed)
    dose_ug: float  # drug that left the tip: sum of volume_ul / 1000 * concentration over pieces
    pieces: tuple[Segment, ...]  # what left the tip, oldest first, equal neighbours merged

    def dose_by_drug_ug(self) -> dict[str, float]:
        """The dose that left, per drug (saline left out)."""
        parts: dict[str, list[float]] = {}
        for piece in self.pieces:
            if piece.concentration_ug_per_ml > 0.0:
                parts.setdefault(piece.drug, []).append(
                    _dose(piece.volume_ul, piece.concentration_ug_per_ml)
                )
        return {drug: math.fsum(doses) for drug, doses in parts.items()}


class _Run:
    """Mutable twin of :class:`Segment`, for the line's own deque."""

    __slots__ = ("concentration", "drug", "volume")

    def __init__(self, volume: float, concentration: float, drug: str = "") -> None:
        self.volume = volume
        self.concentration = concentration
        self.drug = drug if concentration > 0.0 else ""

    def same_fluid(self, concentration: float, drug: str) -> bool:
        return self.concentration == concentration and self.drug == (
            drug if concentration > 0.0 else ""
        )


@dataclass(frozen=True)
class _Plan:
    """What a push of some volume would do, before the line is changed."""

    pieces: tuple[Segment, ...]
    dose_ug: float
    drained: int  # runs (from the tip) that leave the line entirely
    tip_volume_after: float  # new volume of the run then at the tip, if it is only partly drained
    flushed: bool  # the whole line left (and incoming fluid passed straight through)


class CatheterLine:
    """The pump-to-tip line as a FIFO of constant-concentration runs.

    Volumes are µL, concentrations µg/mL, doses µg.
    """

    __slots__ = ("_dead_volume", "_middle_sum", "_runs")

    def __init__(
        self, dead_volume_ul: float, initial_concentration_ug_per_ml: float, drug: str = ""
    ) -> None:
        self._dead_volume = _finite("dead_volume_ul", dead_volume_ul, positive=True)
        concentration = _finite(
            "initial_concentration_ug_per_ml", initial_concentration_ug_per_ml, positive=False
        )
        self._runs: deque[_Run] = deque([_Run(self._dead_volume, concentration, drug)])
        # fsum of the runs strictly between the tip run and the newest run; None when stale.
        self._middle_sum: float | None = 0.0

    # ---------------------------------------------------------------- queries

    @property
    def dead_volume_ul(self) -> float:
        return self._dead_volume

    @property
    def tip_concentration_ug_per_ml(self) -> float:
        """Concentration of the fluid at the catheter tip now (the oldest run)."""
        return self._runs[0].concentration

    @property
    def tip_drug(self) -> str:
        """The drug at the catheter tip now ("" for saline)."""
        return self._runs[0].drug

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The line's content, tip first; the volumes sum to the dead volume."""
        return tuple(Segment(run.volume, run.concentration, run.drug) for run in self._runs)

    def drugs(self) -> set[str]:
        """Every drug the line holds (saline left out)."""
        return {run.drug for run in self._runs if run.concentration > 0.0}

    def volume_until_concentration_ul(
        self, concentration_ug_per_ml: float, drug: str | None = None
    ) -> float:
        """Volume still to push before the tip delivers ``concentration_ug_per_ml`` (of ``drug``,
        when named) continuously.

        0 if the whole line already holds it. Otherwise the fluid ahead of the newest run when that
        run has this concentration, else the whole dead volume (fluid of this concentration has
        yet to enter). Pushing exactly this volume of fluid of this concentration leaves the line
        holding it alone.
        """
        concentration = _finite("concentration_ug_per_ml", concentration_ug_per_ml, positive=False)
        runs = self._runs
        newest = runs[-1]
        if newest.concentration != concentration or (
            drug is not None and not newest.same_fluid(concentration, drug)
        ):
            return self._dead_volume
        if len(runs) == 1:
            return 0.0
        return math.fsum(run.volume for run in islice(runs, len(runs) - 1))

    def dose_for_volume_ug(
        self, volume_ul: float, incoming_concentration_ug_per_ml: float
    ) -> float:
        """Dose that would leave the tip if ``volume_ul`` of the given fluid were pushed now.

        Beyond the dead volume the incoming fluid itself leaves. Equal, bit for bit, to the
        ``dose_ug`` of the corresponding :meth:`push`.
        """
        volume = _finite("volume_ul", volume_ul, positive=False)
        incoming = _finite(
            "incoming_concentration_ug_per_ml", incoming_concentration_ug_per_ml, positive=False
        )
        return self._plan(volume, incoming).dose_ug

    def volume_for_dose_ul(self, dose_ug: float, incoming_concentration_ug_per_ml: float) -> float:
        """Smallest volume to push (of the given fluid) for exactly ``dose_ug`` to leave the tip.

        ``math.inf`` if that dose can never leave (no drug left in the line and none coming in).
        """
        dose = _finite("dose_ug", dose_ug, positive=False)
        incoming = _finite(
            "incoming_concentration_ug_per_ml", incoming_concentration_ug_per_ml, positive=False
        )
        if dose == 0.0:
            return 0.0
        volumes: list[float] = []  # runs already passed, for exact cumulative sums
        doses: list[float] = []
        for run in self._runs:
            run_dose = _dose(run.volume, run.concentration)
            if run.concentration > 0.0 and math.fsum([*doses, run_dose]) >= dose:
                missing_ug = dose - math.fsum(doses)
                return math.fsum([*volumes, missing_ug * _UL_PER_ML / run.concentration])
            volumes.append(run.volume)
            doses.append(run_dose)
        if incoming == 0.0:
            return math.inf
        return self._dead_volume + (dose - math.fsum(doses)) * _UL_PER_ML / incoming

    def volume_within_ul(
        self,
        room_ug: Mapping[str, float],
        incoming_drug: str,
        incoming_concentration_ug_per_ml: float,
    ) -> float:
        """Largest volume to push (of the given fluid) with no drug's dose leaving the tip past
        its room (``room_ug[drug]``; a drug not named has none). ``math.inf`` when no limit is
        ever reached (only saline left to come)."""
        incoming = _finite(
            "incoming_concentration_ug_per_ml", incoming_concentration_ug_per_ml, positive=False
        )
        volumes: list[float] = []
        given: dict[str, list[float]] = {}
        runs = [(run.volume, run.concentration, run.drug) for run in self._runs]
        for volume, concentration, drug in [*runs, (math.inf, incoming, incoming_drug)]:
            if concentration <= 0.0:
                volumes.append(volume)
                continue
            so_far = given.setdefault(drug, [])
            left_ug = max(0.0, room_ug.get(drug, 0.0) - math.fsum(so_far))
            run_ug = _dose(volume, concentration)
            if run_ug >= left_ug:
                return math.fsum([*volumes, left_ug * _UL_PER_ML / concentration])
            volumes.append(volume)
            so_far.append(run_ug)
        return math.inf

    # ---------------------------------------------------------------- changes

    def push(self, volume_ul: float, concentration_ug_per_ml: float, drug: str = "") -> Outflow:
        """Push ``volume_ul`` of ``drug`` at ``concentration_ug_per_ml`` in; return what left
        the tip."""
        volume = _finite("volume_ul", volume_ul, positive=False)
        concentration = _finite("concentration_ug_per_ml", concentration_ug_per_ml, positive=False)
        if volume == 0.0:
            return Outflow(0.0, 0.0, ())
        plan = self._plan(volume, concentration, drug)
        runs = self._runs
        if plan.flushed:
            runs.clear()
            runs.append(_Run(self._dead_volume, concentration, drug))
            self._middle_sum = 0.0
            return Outflow(volume, plan.dose_ug, plan.pieces)

        for _ in range(plan.drained):
            runs.popleft()
            self._middle_sum = None
        runs[0].volume = plan.tip_volume_after
        if not runs[-1].same_fluid(concentration, drug):
            runs.append(_Run(0.0, concentration, drug))
            self._middle_sum = None
        if len(runs) == 1:
            runs[0].volume = self._dead_volume
        else:
            newest = self._dead_volume - math.fsum((runs[0].volume, self._middle()))
            if newest > 0.0:
                runs[-1].volume = newest
            else:
                # The push is below the rounding resolution of the line: nothing new fits.
                runs.pop()
                self._middle_sum = None
        return Outflow(volume, plan.dose_ug, plan.pieces)

    # ---------------------------------------------------------------- persistence

    def to_state(self) -> list[tuple[float, float] | tuple[float, float, str]]:
        """JSON-friendly content, tip first: ``[(volume_ul, concentration_ug_per_ml[, drug])]``
        (the drug is left out where it is "", as lines journaled before drugs were named)."""
        return [
            (run.volume, run.concentration, run.drug)
            if run.drug
            else (run.volume, run.concentration)
            for run in self._runs
        ]

    def flush(self) -> Outflow:
        """The line was emptied outside the patient and refilled with saline; returns what was
        removed (none of it reached the patient)."""
        removed = self._plan(self._dead_volume, 0.0, "")
        self._runs = deque([_Run(self._dead_volume, 0.0)])
        self._middle_sum = 0.0
        return Outflow(self._dead_volume, removed.dose_ug, removed.pieces)

    @classmethod
    def from_state(
        cls, dead_volume_ul: float, state: Sequence[Sequence[float | str]], drug: str = ""
    ) -> CatheterLine:
        """Rebuild a line from :meth:`to_state` output (volumes kept exactly as given); entries
        without a drug name are ``drug`` (a journal from before drugs were named).

        Adjacent entries of equal concentration are merged. Raises ``ValueError`` if the state is
        empty, malformed, holds a non-finite or non-positive volume or a negative concentration,
        or does not sum to the dead volume.
        """
        dead_volume = _finite("dead_volume_ul", dead_volume_ul, positive=True)
        if isinstance(state, str | bytes) or not isinstance(state, Sequence):
            raise ValueError(f"state must be a sequence of (volume, concentration), got {state!r}")
        if len(state) == 0:
            raise ValueError("state must hold at least one (volume, concentration) entry")
        runs: deque[_Run] = deque()
        for index, entry in enumerate(state):
            if (
                isinstance(entry, str | bytes)
                or not isinstance(entry, Sequence)
                or len(entry) not in (2, 3)
                or (len(entry) == 3 and not isinstance(entry[2], str))
            ):
                raise ValueError(
                    f"state[{index}] must be a (volume_ul, concentration_ug_per_ml[, drug]) "
                    f"entry, got {entry!r}"
                )
            volume = _finite(f"state[{index}] volume_ul", entry[0], positive=True)
            concentration = _finite(
                f"state[{index}] concentration_ug_per_ml", entry[1], positive=False
            )
            name = str(entry[2]) if len(entry) == 3 else drug
            if runs and runs[-1].same_fluid(concentration, name):
                runs[-1].volume += volume
            else:
                runs.append(_Run(volume, concentration, name))
        total = math.fsum(run.volume for run in runs)
        if abs(total - dead_volume) > _STATE_SUM_REL_TOL * dead_volume:
            raise ValueError(
                f"state volumes sum to {total!r} µL, not the dead volume {dead_volume!r} µL"
            )
        line = cls(dead_volume, runs[0].concentration, runs[0].drug)
        line._runs = runs
        line._middle_sum = None
        return line

    def __repr__(self) -> str:
        content = ", ".join(
            f"{run.volume!r} µL @ {run.concentration!r} {run.drug}".rstrip() for run in self._runs
        )
        return f"CatheterLine(dead_volume_ul={self._dead_volume!r}, tip first: [{content}])"

    # ---------------------------------------------------------------- internals

    def _middle(self) -> float:
        """fsum of the runs between the tip run and the newest run (cached)."""
        if self._middle_sum is None:
            runs = self._runs
            self._middle_sum = math.fsum(run.volume for run in islice(runs, 1, len(runs) - 1))
        return self._middle_sum

    def _plan(self, volume: float, incoming: float, drug: str = "") -> _Plan:
        """What pushing ``volume`` of ``incoming`` would drive out, without changing the line."""
        runs = self._runs
        if volume == 0.0:
            return _Plan((), 0.0, 0, runs[0].volume, flushed=False)
        if volume >= self._dead_volume:
            parts = [(run.volume, run.concentration, run.drug) for run in runs]
            if volume > self._dead_volume:
                parts.append((volume - self._dead_volume, incoming, drug))
            return _plan_of(parts, drained=len(runs), tip_volume_after=0.0, flushed=True)

        tip = runs[0]
        if tip.volume > volume:  # the common case: only the tip run drains, partly
            return _plan_of(
                [(volume, tip.concentration, tip.drug)], 0, tip.volume - volume, flushed=False
            )

        drained: list[float] = []
        parts = []
        for run in runs:
            if math.fsum([*drained, run.volume]) <= volume:
                drained.append(run.volume)
                parts.append((run.volume, run.concentration, run.drug))
                continue
            rest = volume - math.fsum(drained)  # >= 0: the runs drained so far fit in volume
            if rest > 0.0:
                parts.append((rest, run.concentration, run.drug))
            return _plan_of(parts, len(drained), run.volume - rest, flushed=False)
        # Only reachable when the runs sum a rounding short of a volume just under the dead
        # volume: the whole line left, and the remainder is incoming fluid.
        rest = volume - math.fsum(drained)
        if rest > 0.0:
            parts.append((rest, incoming, drug))
        return _plan_of(parts, len(runs), 0.0, flushed=True)


def _dose(volume_ul: float, concentration_ug_per_ml: float) -> float:
    return volume_ul * concentration_ug_per_ml / _UL_PER_ML


def _plan_of(
    parts: Iterable[tuple[float, float, str]],
    drained: int,
    tip_volume_after: float,
    *,
    flushed: bool,
) -> _Plan:
    raw = list(parts)
    merged: list[Segment] = []
    for volume, concentration, drug in raw:
        name = drug if concentration > 0.0 else ""
        last = merged[-1] if merged else None
        if last is not None and (last.concentration_ug_per_ml, last.drug) == (concentration, name):
            merged[-1] = Segment(last.volume_ul + volume, concentration, name)
        else:
            merged.append(Segment(volume, concentration, name))
    dose = math.fsum(_dose(volume, concentration) for volume, concentration, _ in raw)
    return _Plan(tuple(merged), dose, drained, tip_volume_after, flushed)


def _finite(name: str, value: object, *, positive: bool) -> float:
    """``value`` as a float, or ValueError naming ``name`` (finite; > 0 or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and number <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if not positive and number < 0.0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return number
