"""The mock bench as the outside world sees it: a pump controlled through the device emulator
and a pressure sensor sampled on a fixed schedule of simulated time.

The physics model may only move forward in time, yet it is reached from two places (the serial
emulator's thread and the node's publishing timer). Every access goes through this object,
which first takes all pressure samples that fall due before the access time, so samples and
pump commands are applied in time order however the threads interleave. The caller holds one
lock around every call.
"""

from __future__ import annotations

import math

from pump_rig.core.bench_model import BenchModel
from pump_rig.core.faults import FaultKind
from pump_rig.core.pump_types import Direction
from pump_rig.core.syringe_pump import PumpSnapshot

Sample = tuple[float, float | None]  # (t_s, pressure_kpa or None for a dropped sample)


class BenchSession:
    def __init__(self, bench: BenchModel, *, sample_period_s: float, t0_s: float) -> None:
        if not math.isfinite(sample_period_s) or sample_period_s <= 0:
            raise ValueError(f"sample_period_s: must be > 0 (got {sample_period_s})")
        self.bench = bench
        self.sample_period_s = sample_period_s
        self._t_s = t0_s
        self._next_sample_index = 1
        self._t0_s = t0_s
        self._pending: list[Sample] = []
        self._last_sample_kpa: float | None = None

    @property
    def t_s(self) -> float:
        return self._t_s

    def _advance(self, t_s: float) -> float:
        # Threads may present times a few microseconds out of order: never go backwards.
        t_s = max(t_s, self._t_s)
        while True:
            t_sample = self._t0_s + self._next_sample_index * self.sample_period_s
            if t_sample > t_s:
                break
            sample_kpa = self.bench.sample_pressure(t_sample)
            self._pending.append((t_sample, sample_kpa))
            self._last_sample_kpa = sample_kpa
            self._next_sample_index += 1
        self._t_s = t_s
        return t_s

    def set_sample_period(self, sample_period_s: float) -> None:
        """Sample every ``sample_period_s`` from now on (accelerated runs slow their clock
        around events; sampling follows so that samples keep coming in wall time)."""
        if not math.isfinite(sample_period_s) or sample_period_s <= 0:
            raise ValueError(f"sample_period_s: must be > 0 (got {sample_period_s})")
        if sample_period_s == self.sample_period_s:
            return
        # The model cannot go back in time: the new grid starts now, not at the last sample.
        self._t0_s = self._t_s
        self._next_sample_index = 1
        self.sample_period_s = sample_period_s

    def collect(self, t_s: float) -> list[Sample]:
        """All samples due up to ``t_s`` not yet collected, in time order."""
        self._advance(t_s)
        samples, self._pending = self._pending, []
        return samples

    # Pump control (the device emulator's PumpMechanics).
    def set_diameter(self, t_s: float, inner_diameter_mm: float) -> None:
        self.bench.set_diameter(self._advance(t_s), inner_diameter_mm)

    def set_rate(self, t_s: float, rate_ul_per_h: float) -> None:
        self.bench.set_rate(self._advance(t_s), rate_ul_per_h)

    def set_direction(self, t_s: float, direction: Direction) -> None:
        self.bench.set_direction(self._advance(t_s), direction)

    def set_volume_limit(self, t_s: float, volume_ul: float) -> None:
        self.bench.set_volume_limit(self._advance(t_s), volume_ul)

    def start(self, t_s: float) -> None:
        self.bench.start(self._advance(t_s))

    def stop(self, t_s: float) -> None:
        self.bench.stop(self._advance(t_s))

    def snapshot(self, t_s: float) -> PumpSnapshot:
        return self.bench.snapshot(self._advance(t_s))

    def next_pump_event_s(self) -> float | None:
        """When the pump will stop by itself (volume limit reached, syringe empty or full) if
        nobody commands it before, or None. A read: time does not move."""
        return self.bench.pump.next_event_s()

    def last_sample_kpa(self, t_s: float) -> float | None:
        """The sensor's latest sample at or before ``t_s`` (None: none yet, or a dropout), as
        a pump firmware that reads the transducer itself reports it."""
        self._advance(t_s)
        return self._last_sample_kpa

    def line_pressure_kpa(self, t_s: float) -> float:
        return self.bench.line_pressure_kpa(self._advance(t_s))

    def inject_fault(self, t_s: float, kind: FaultKind, magnitude: float = 0.0) -> None:
        self.bench.inject_fault(self._advance(t_s), kind, magnitude)

    def clear_faults(self, t_s: float) -> None:
        self.bench.clear_faults(self._advance(t_s))
