"""The dose ledger: delivered volume and patient dose, by source, over time.

Delivery arrives in small increments (each device report covers the time since the one
before) and is gathered into buckets; a bucket is closed (and journaled) when it has spanned
``bucket_s``, at local midnight, or when anything about the therapy changes. The engine splits
an increment that spans a local midnight, so each bucket belongs to one local day. The rolling
24 h sum counts a bucket until 24 h after its END, so the window never under-counts (a dose is
never treated as older than it is). The same buckets make the per-day totals, so a ledger
rebuilt from the journal equals the one that wrote it.

Each bucket also holds the dose per DRUG: after a refill with another drug the line delivers the
old drug first, and each drug's 24 h dose is held against its own maximum (the µg of one drug
are no measure of another). The by-source tables count every drug's µg.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pump_rig.core.pump_types import SECONDS_PER_DAY

__all__ = ["DayTotal", "DeliveryBucket", "DoseLedger", "DoseSource"]

WINDOW_S: Final = SECONDS_PER_DAY


class DoseSource(enum.StrEnum):
    BASAL = "basal"
    PATIENT_BOLUS = "patient_bolus"
    CLINICIAN_BOLUS = "clinician_bolus"
    PRIME = "prime"
    BRIDGE = "bridge"
    # Dose the journal's lost records held (from its high-water mark), after a rollback.
    UNRECORDED = "unrecorded"


class _BySource:
    """Volume and dose by source (DoseSource values), and their totals."""

    volume_ul: Mapping[str, float]
    dose_ug: Mapping[str, float]

    @property
    def total_dose_ug(self) -> float:
        return math.fsum(self.dose_ug.values())

    @property
    def total_volume_ul(self) -> float:
        return math.fsum(self.volume_ul.values())


@dataclass(frozen=True)
class DeliveryBucket(_BySource):
    """Volume pushed and dose that left the catheter tip in [t0, t1], by source and by drug."""

    t0_s: float
    t1_s: float
    volume_ul: Mapping[str, float]
    dose_ug: Mapping[str, float]
    drug_dose_ug: Mapping[str, float]

    def to_record(self) -> dict[str, Any]:
        return {
            "t0": self.t0_s,
            "t1": self.t1_s,
            "vol": dict(self.volume_ul),
            "dose": dict(self.dose_ug),
            "drugs": dict(self.drug_dose_ug),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, drug: str = "") -> DeliveryBucket:
        """A journaled bucket; one from before buckets named their drugs is all ``drug``."""
        vol, dose = record["vol"], record["dose"]
        t0, t1 = float(record["t0"]), float(record["t1"])
        sources = {s.value for s in DoseSource}
        for table in (vol, dose):
            if not isinstance(table, dict) or not set(table) <= sources:
                raise ValueError(f"bad source table {table!r}")
            _check_amounts(table)
        if "drugs" in record:
            drugs = record["drugs"]
            if not isinstance(drugs, dict) or not all(isinstance(k, str) for k in drugs):
                raise ValueError(f"bad drug table {drugs!r}")
            _check_amounts(drugs)
        else:
            total = math.fsum(float(v) for v in dose.values())
            drugs = {drug: total} if total > 0 else {}
        if not (math.isfinite(t0) and math.isfinite(t1) and t1 >= t0):
            raise ValueError(f"bad bucket times {t0!r}..{t1!r}")
        return cls(
            t0,
            t1,
            {k: float(v) for k, v in vol.items()},
            {k: float(v) for k, v in dose.items()},
            {k: float(v) for k, v in drugs.items()},
        )


def _check_amounts(table: Mapping[str, object]) -> None:
    for v in table.values():
        if not (isinstance(v, float | int) and math.isfinite(v) and v >= 0):
            raise ValueError(f"bad amount {v!r}")


@dataclass
class DayTotal(_BySource):
    """One local day (``day`` = days since the epoch in the program's local time)."""

    day: int
    volume_ul: dict[str, float] = field(default_factory=dict)
    dose_ug: dict[str, float] = field(default_factory=dict)


@dataclass
class _OpenBucket:
    t0_s: float
    t1_s: float
    volume_ul: dict[str, float]
    dose_ug: dict[str, float]
    drug_dose_ug: dict[str, float]

    def closed(self) -> DeliveryBucket:
        return DeliveryBucket(
            self.t0_s,
            self.t1_s,
            dict(self.volume_ul),
            dict(self.dose_ug),
            dict(self.drug_dose_ug),
        )


class DoseLedger:
    """Buckets of delivery with a rolling 24 h window and per-day totals."""

    def __init__(self, *, bucket_s: float = 60.0, utc_offset_s: float = 0.0) -> None:
        if not (math.isfinite(bucket_s) and bucket_s > 0):
            raise ValueError(f"bucket_s must be > 0 (got {bucket_s!r})")
        self.bucket_s = bucket_s
        self.utc_offset_s = utc_offset_s
        self._window: deque[DeliveryBucket] = deque()
        # fsum of the closed buckets in the window, per drug (None: all), until the window
        # changes: the 24 h dose is asked for at every report, for every drug in the line.
        self._closed_sum: dict[str | None, float] = {}
        self._left_t1: float | None = None  # end of the last bucket that left the window
        self._days: dict[int, DayTotal] = {}
        self._open: _OpenBucket | None = None
        self._total_volume: list[float] = []
        self._total_dose: list[float] = []

    # --- writing ----------------------------------------------------------------------------

    def add(
        self,
        t_s: float,
        source: DoseSource,
        volume_ul: float,
        dose_ug: float,
        drug_dose_ug: Mapping[str, float] | None = None,
    ) -> None:
        """Account an increment delivered up to ``t_s`` (into the open bucket);
        ``drug_dose_ug`` splits ``dose_ug`` by drug."""
        if self._open is None:
            self._open = _OpenBucket(t_s, t_s, {}, {}, {})
        bucket = self._open
        bucket.t1_s = max(t_s, bucket.t1_s)
        bucket.volume_ul[source.value] = bucket.volume_ul.get(source.value, 0.0) + volume_ul
        bucket.dose_ug[source.value] = bucket.dose_ug.get(source.value, 0.0) + dose_ug
        for drug, amount in (drug_dose_ug or {}).items():
            bucket.drug_dose_ug[drug] = bucket.drug_dose_ug.get(drug, 0.0) + amount

    def bucket_due(self, t_s: float) -> bool:
        """The open bucket has spanned ``bucket_s`` or ``t_s`` is on another local day."""
        if self._open is None:
            return False
        return t_s - self._open.t0_s >= self.bucket_s or self.day_changes(t_s)

    def day_changes(self, t_s: float) -> bool:
        """Delivery reported at ``t_s`` belongs to another local day than the open bucket
        (close it before adding that delivery)."""
        if self._open is None:
            return False
        return self.day_ending_at(self._open.t0_s) != self.day_ending_at(t_s)

    def close_bucket(self) -> DeliveryBucket | None:
        """Close the open bucket; return it (to be journaled), or None if nothing is open."""
        if self._open is None:
            return None
        bucket = self._open.closed()
        self._open = None
        self.apply(bucket)
        return bucket

    @property
    def open_bucket(self) -> DeliveryBucket | None:
        """The bucket still gathering delivery (journaled inside every state record, so a
        crash loses none of it and a restart closes it where the running ledger would)."""
        return self._open.closed() if self._open is not None else None

    def reopen(self, bucket: DeliveryBucket | None) -> None:
        """Restore the open bucket of a journaled state."""
        self._open = (
            None
            if bucket is None
            else _OpenBucket(
                bucket.t0_s,
                bucket.t1_s,
                dict(bucket.volume_ul),
                dict(bucket.dose_ug),
                dict(bucket.drug_dose_ug),
            )
        )

    def apply(self, bucket: DeliveryBucket) -> None:
        """Account a closed bucket (also how the journal is replayed)."""
        self._window.append(bucket)
        self._closed_sum.clear()
        day_number = self.day_ending_at(bucket.t1_s)
        day = self._days.setdefault(day_number, DayTotal(day_number))
        for table, target in ((bucket.volume_ul, day.volume_ul), (bucket.dose_ug, day.dose_ug)):
            for source, amount in table.items():
                target[source] = target.get(source, 0.0) + amount
        self._total_volume.append(bucket.total_volume_ul)
        self._total_dose.append(bucket.total_dose_ug)
        self._compact_totals()

    def _compact_totals(self) -> None:
        # Exact running totals without unbounded lists: fold into one fsum'd partial.
        if len(self._total_volume) > 4096:
            self._total_volume = [math.fsum(self._total_volume)]
            self._total_dose = [math.fsum(self._total_dose)]

    # --- reading ----------------------------------------------------------------------------

    def day_of(self, t_s: float) -> int:
        """The local day (days since the epoch in the ledger's local time) of ``t_s``."""
        return math.floor((t_s + self.utc_offset_s) / SECONDS_PER_DAY)

    def day_ending_at(self, t_s: float) -> int:
        """The local day of delivery reported at ``t_s``: a report covers the time up to it,
        so one made exactly at midnight belongs to the day that ends there."""
        return math.ceil((t_s + self.utc_offset_s) / SECONDS_PER_DAY) - 1

    def midnight_after(self, t_s: float) -> float:
        """The first local midnight strictly after ``t_s``."""
        return (self.day_of(t_s) + 1) * SECONDS_PER_DAY - self.utc_offset_s

    def _expire(self, t_s: float) -> None:
        while self._window and self._window[0].t1_s + WINDOW_S <= t_s:
            self._left_t1 = self._window.popleft().t1_s
            self._closed_sum.clear()

    def _in_window(self, t_s: float, *, by_drug: bool = False) -> Iterable[Mapping[str, float]]:
        self._expire(t_s)
        for bucket in self._window:
            yield bucket.drug_dose_ug if by_drug else bucket.dose_ug
        if self._open is not None:
            yield self._open.drug_dose_ug if by_drug else self._open.dose_ug

    def dose_24h_ug(self, t_s: float, drug: str | None = None) -> float:
        """Patient dose in the 24 h up to ``t_s``: of ``drug``, or of every drug (None)."""
        self._expire(t_s)
        closed = self._closed_sum.get(drug)
        if closed is None:
            if drug is None:
                closed = math.fsum(v for b in self._window for v in b.dose_ug.values())
            else:
                closed = math.fsum(b.drug_dose_ug.get(drug, 0.0) for b in self._window)
            self._closed_sum[drug] = closed
        bucket = self._open
        if bucket is None:
            return closed
        table = bucket.dose_ug if drug is None else bucket.drug_dose_ug
        return closed + (math.fsum(table.values()) if drug is None else table.get(drug, 0.0))

    def drugs_24h(self, t_s: float) -> set[str]:
        """Every drug with a dose in the 24 h up to ``t_s``."""
        return {d for table in self._in_window(t_s, by_drug=True) for d, v in table.items() if v}

    def dose_24h_by_source_ug(self, t_s: float) -> dict[str, float]:
        parts: dict[str, list[float]] = {s.value: [] for s in DoseSource}
        for table in self._in_window(t_s):
            for source, amount in table.items():
                parts[source].append(amount)
        return {source: math.fsum(values) for source, values in parts.items()}

    def leaving(
        self, t_s: float, drug: str | None = None
    ) -> tuple[list[float], list[float], list[float]]:
        """When the closed buckets in the window at ``t_s`` leave it (time order, as they
        were closed in time order), the cumulative dose (of ``drug``, or of all) gone by each
        of those times, and the time each bucket's delivery spans (s; from the end of the
        bucket before, or at most a bucket before its first report)."""
        self._expire(t_s)
        times = [b.t1_s + WINDOW_S for b in self._window]
        gone = list(
            itertools.accumulate(
                b.total_dose_ug if drug is None else b.drug_dose_ug.get(drug, 0.0)
                for b in self._window
            )
        )
        # A bucket's delivery began at the end of the one before (its t0 is its first report).
        first = self._left_t1 if self._left_t1 is not None else -math.inf
        starts = [first, *(b.t1_s for b in self._window)][: len(self._window)]
        spans = [
            b.t1_s - max(start, b.t0_s - self.bucket_s)
            for b, start in zip(self._window, starts, strict=True)
        ]
        return times, gone, spans

    @property
    def total_volume_ul(self) -> float:
        open_vol = math.fsum(self._open.volume_ul.values()) if self._open else 0.0
        return math.fsum([*self._total_volume, open_vol])

    @property
    def total_dose_ug(self) -> float:
        open_dose = math.fsum(self._open.dose_ug.values()) if self._open else 0.0
        return math.fsum([*self._total_dose, open_dose])

    def day_totals(self) -> list[DayTotal]:
        """Delivery per local day, oldest first: the closed buckets and the open one (a clean
        shutdown leaves it open, journaled as it is)."""
        days = {d: DayTotal(d, dict(t.volume_ul), dict(t.dose_ug)) for d, t in self._days.items()}
        if self._open is not None:
            number = self.day_ending_at(self._open.t1_s)
            day = days.setdefault(number, DayTotal(number))
            for table, target in (
                (self._open.volume_ul, day.volume_ul),
                (self._open.dose_ug, day.dose_ug),
            ):
                for source, amount in table.items():
                    target[source] = target.get(source, 0.0) + amount
        return [days[d] for d in sorted(days)]

    def state(
        self,
    ) -> tuple[list[dict[str, Any]], dict[int, tuple[dict[str, float], dict[str, float]]]]:
        """Everything the ledger holds, for equality checks after a restart."""
        window = [b.to_record() for b in self._window]
        if self._open is not None:
            window.append({"open": self._open.closed().to_record()})
        days = {d: (dict(t.volume_ul), dict(t.dose_ug)) for d, t in self._days.items()}
        return window, days
