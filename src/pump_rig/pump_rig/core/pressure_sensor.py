"""Line pressure sensor: Gaussian noise plus injectable sensor faults, deterministic per seed.

Every ``read`` draws the same amount of randomness whatever faults are active, so a run with a
fault injected and cleared again produces the same noise afterwards as a run without it.
When several faults are active the strongest wins: dropout (None) > NaN > stuck; drift and
spikes add to the live value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pump_rig.core.faults import SENSOR_FAULTS, FaultKind
from pump_rig.core.pump_types import SECONDS_PER_HOUR

# Defaults: a disposable strain-gauge transducer reads to ~0.15 mmHg (0.02 kPa) RMS at a few
# tens of Hz. The fault sizes are chosen to be clearly visible yet not absurd: a drift of
# 0.5 kPa/h crosses a typical occlusion threshold within hours, 20 kPa spikes look like
# an occlusion for a single sample, 2 % of samples spiking is an obviously sick sensor.
DEFAULT_NOISE_KPA = 0.02
DEFAULT_DRIFT_KPA_PER_H = 0.5
DEFAULT_SPIKE_KPA = 20.0
DEFAULT_SPIKE_PROBABILITY = 0.02


@dataclass(frozen=True)
class SensorParams:
    noise_kpa: float = DEFAULT_NOISE_KPA
    drift_kpa_per_h: float = DEFAULT_DRIFT_KPA_PER_H
    spike_kpa: float = DEFAULT_SPIKE_KPA
    spike_probability: float = DEFAULT_SPIKE_PROBABILITY
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("noise_kpa", "drift_kpa_per_h", "spike_kpa", "spike_probability"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if self.noise_kpa < 0.0:
            raise ValueError(f"noise_kpa must be >= 0, got {self.noise_kpa!r}")
        if self.spike_kpa < 0.0:
            raise ValueError(f"spike_kpa must be >= 0, got {self.spike_kpa!r}")
        if not 0.0 <= self.spike_probability <= 1.0:
            raise ValueError(
                f"spike_probability must be within 0..1, got {self.spike_probability!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")


DEFAULT_SENSOR_PARAMS = SensorParams()


class PressureSensor:
    """Turns the true line pressure into what the transducer reports."""

    def __init__(self, params: SensorParams = DEFAULT_SENSOR_PARAMS, *, t0_s: float = 0.0) -> None:
        if not math.isfinite(t0_s):
            raise ValueError(f"t0_s must be finite, got {t0_s!r}")
        self._params = params
        self._rng = np.random.default_rng(params.seed)
        self._t_s = float(t0_s)
        self._faults: set[FaultKind] = set()
        self._last_kpa: float | None = None  # last value actually reported
        self._stuck_kpa: float | None = None
        self._drift_rate_kpa_per_h = 0.0
        self._drift_t0_s = self._t_s
        self._drift_offset0_kpa = 0.0
        self._spike_kpa = params.spike_kpa

    @property
    def params(self) -> SensorParams:
        return self._params

    @property
    def active_faults(self) -> frozenset[FaultKind]:
        return frozenset(self._faults)

    def drift_offset_kpa(self, t_s: float) -> float:
        """Offset the drift fault adds at t_s (0 without drift)."""
        if FaultKind.SENSOR_DRIFT not in self._faults:
            return 0.0
        elapsed_h = (t_s - self._drift_t0_s) / SECONDS_PER_HOUR
        return self._drift_offset0_kpa + self._drift_rate_kpa_per_h * elapsed_h

    def inject(self, t_s: float, kind: FaultKind, magnitude: float = 0.0) -> None:
        """Start a sensor fault. magnitude: drift kPa/h (signed) or spike kPa; 0 = default.

        Re-injecting drift changes its rate from now on; the offset reached so far is kept.
        """
        self._advance(t_s)
        if kind not in SENSOR_FAULTS:
            raise ValueError(f"{kind} is not a sensor fault")
        if not math.isfinite(magnitude):
            raise ValueError(f"fault magnitude must be finite, got {magnitude!r}")
        if kind is FaultKind.SENSOR_DRIFT:
            self._drift_offset0_kpa = self.drift_offset_kpa(t_s)
            self._drift_t0_s = t_s
            self._drift_rate_kpa_per_h = magnitude or self._params.drift_kpa_per_h
        elif kind is FaultKind.SENSOR_SPIKES:
            if magnitude < 0.0:
                raise ValueError(f"spike size must be >= 0 kPa, got {magnitude!r}")
            self._spike_kpa = magnitude or self._params.spike_kpa
        elif kind is FaultKind.SENSOR_STUCK and kind not in self._faults:
            self._stuck_kpa = self._last_kpa  # None: freeze the next reading
        self._faults.add(kind)

    def clear(self, t_s: float) -> None:
        """The sensor is healthy again (drift offset gone)."""
        self._advance(t_s)
        self._faults.clear()
        self._stuck_kpa = None
        self._drift_offset0_kpa = 0.0
        self._drift_rate_kpa_per_h = 0.0

    def read(self, t_s: float, true_kpa: float) -> float | None:
        """One sample at t_s of a line whose true pressure is true_kpa; None = no sample."""
        self._advance(t_s)
        z = float(self._rng.standard_normal())
        u_spike, u_sign = (float(x) for x in self._rng.random(2))
        faults = self._faults
        if FaultKind.SENSOR_DROPOUT in faults:
            return None
        if FaultKind.SENSOR_NAN in faults:
            value = math.nan
        elif FaultKind.SENSOR_STUCK in faults and self._stuck_kpa is not None:
            value = self._stuck_kpa
        else:
            value = true_kpa + self._params.noise_kpa * z + self.drift_offset_kpa(t_s)
            if FaultKind.SENSOR_SPIKES in faults and u_spike < self._params.spike_probability:
                value += self._spike_kpa if u_sign < 0.5 else -self._spike_kpa
            if FaultKind.SENSOR_STUCK in faults:
                self._stuck_kpa = value
        self._last_kpa = value
        return value

    def _advance(self, t_s: float) -> None:
        if not math.isfinite(t_s):
            raise ValueError(f"time must be finite, got {t_s!r}")
        if t_s < self._t_s:
            raise ValueError(f"time went backwards: {t_s!r} s < current {self._t_s!r} s")
        self._t_s = float(t_s)
