"""The dose ledger: delivered volume and patient dose, by source, over time.

Delivery arrives in small increments (each device report covers the time since the one
before) and is gathered into buckets; a bucket is closed (and journaled) when it has spanned
``bucket_s``, at local midnight, or when anything about the therapy changes. The engine splits
an increment that spans a local midnight, so each bucket belongs to one local day. The rolling
24 h sum counts a bucket until 24 h after its END, so the window never under-counts (a dose is
never treated as older than it is). The same buckets make the per-day totals, so a ledger
rebuilt from the journal equals the one that wrote it.
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
    """Volume pushed and dose that left the catheter tip in [t0, t1], by source."""

    t0_s: float
    t1_s: float
    volume_ul: Mapping[str, float]
    dose_ug: Mapping[str, float]

    def to_record(self) -> dict[str, Any]:
        return {
            "t0": self.t0_s,
            "t1": self.t1_s,
            "vol": dict(self.volume_ul),
            "dose": dict(self.dose_ug),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> DeliveryBucket:
        vol, dose = record["vol"], record["dose"]
        t0, t1 = float(record["t0"]), float(record["t1"])
        sources = {s.value for s in DoseSource}
        for table in (vol, dose):
            if not isinstance(table, dict) or not set(table) <= sources:
                raise ValueError(f"bad source table {table!r}")
            for v in table.values():
                if not (isinstance(v, float | int) and math.isfinite(v) and v >= 0):
                    raise ValueError(f"bad amount {v!r}")
        if not (math.isfinite(t0) and math.isfinite(t1) and t1 >= t0):
            raise ValueError(f"bad bucket times {t0!r}..{t1!r}")
        return cls(
            t0, t1, {k: float(v) for k, v in vol.items()}, {k: float(v) for k, v in dose.items()}
        )


@dataclass
class DayTotal(_BySource):
    """One local day (``day`` = days since the epoch in the program's local time)."""

    day: int
    volume_ul: dict[str, float] = field(default_factory=dict)
    dose_ug: dict[str, float] = field(default_factory=dict)


class DoseLedger:
    """Buckets of delivery with a rolling 24 h window and per-day totals."""

    def __init__(self, *, bucket_s: float = 60.0, utc_offset_s: float = 0.0) -> None:
        if not (math.isfinite(bucket_s) and bucket_s > 0):
            raise ValueError(f"bucket_s must be > 0 (got {bucket_s!r})")
        self.bucket_s = bucket_s
        self.utc_offset_s = utc_offset_s
        self._window: deque[DeliveryBucket] = deque()
        self._left_t1: float | None = None  # end of the last bucket that left the window
        self._days: dict[int, DayTotal] = {}
        self._open: tuple[float, float, dict[str, float], dict[str, float]] | None = None
        self._total_volume: list[float] = []
        self._total_dose: list[float] = []

    # --- writing ----------------------------------------------------------------------------

    def add(self, t_s: float, source: DoseSource, volume_ul: float, dose_ug: float) -> None:
        """Account an increment delivered up to ``t_s`` (into the open bucket)."""
        if self._open is None:
            self._open = (t_s, t_s, {}, {})
        t0, _t1, vol, dose = self._open
        vol[source.value] = vol.get(source.value, 0.0) + volume_ul
        dose[source.value] = dose.get(source.value, 0.0) + dose_ug
        self._open = (t0, max(t_s, _t1), vol, dose)

    def bucket_due(self, t_s: float) -> bool:
        """The open bucket has spanned ``bucket_s`` or ``t_s`` is on another local day."""
        if self._open is None:
            return False
        return t_s - self._open[0] >= self.bucket_s or self.day_changes(t_s)

    def day_changes(self, t_s: float) -> bool:
        """Delivery reported at ``t_s`` belongs to another local day than the open bucket
        (close it before adding that delivery)."""
        if self._open is None:
            return False
        return self.day_ending_at(self._open[0]) != self.day_ending_at(t_s)

    def close_bucket(self) -> DeliveryBucket | None:
        """Close the open bucket; return it (to be journaled), or None if nothing is open."""
        if self._open is None:
            return None
        t0, t1, vol, dose = self._open
        self._open = None
        bucket = DeliveryBucket(t0, t1, vol, dose)
        self.apply(bucket)
        return bucket

    def apply(self, bucket: DeliveryBucket) -> None:
        """Account a closed bucket (also how the journal is replayed)."""
        self._window.append(bucket)
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

    def _in_window(self, t_s: float) -> Iterable[Mapping[str, float]]:
        self._expire(t_s)
        for bucket in self._window:
            yield bucket.dose_ug
        if self._open is not None:
            yield self._open[3]

    def dose_24h_ug(self, t_s: float) -> float:
        """Patient dose in the 24 h up to ``t_s``."""
        return math.fsum(v for table in self._in_window(t_s) for v in table.values())

    def dose_24h_by_source_ug(self, t_s: float) -> dict[str, float]:
        parts: dict[str, list[float]] = {s.value: [] for s in DoseSource}
        for table in self._in_window(t_s):
            for source, amount in table.items():
                parts[source].append(amount)
        return {source: math.fsum(values) for source, values in parts.items()}

    def leaving(self, t_s: float) -> tuple[list[float], list[float], list[float]]:
        """When the closed buckets in the window at ``t_s`` leave it (time order, as they
        were closed in time order), the cumulative dose gone by each of those times, and the
        time each bucket's delivery spans (s; from the end of the bucket before, or at most a
        bucket before its first report)."""
        self._expire(t_s)
        times = [b.t1_s + WINDOW_S for b in self._window]
        gone = list(itertools.accumulate(b.total_dose_ug for b in self._window))
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
        open_vol = math.fsum(self._open[2].values()) if self._open else 0.0
        return math.fsum([*self._total_volume, open_vol])

    @property
    def total_dose_ug(self) -> float:
        open_dose = math.fsum(self._open[3].values()) if self._open else 0.0
        return math.fsum([*self._total_dose, open_dose])

    def day_totals(self) -> list[DayTotal]:
        """Closed buckets per local day, oldest first (the open bucket is not included)."""
        return [self._days[d] for d in sorted(self._days)]

    def state(
        self,
    ) -> tuple[list[dict[str, Any]], dict[int, tuple[dict[str, float], dict[str, float]]]]:
        """Everything the ledger holds, for equality checks after a restart."""
        window = [b.to_record() for b in self._window]
        days = {d: (dict(t.volume_ul), dict(t.dose_ug)) for d, t in self._days.items()}
        return window, days
