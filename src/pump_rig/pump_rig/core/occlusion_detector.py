"""Judges the catheter line from pressure samples: occlusion, leak and sensor faults (no rclpy).

What the samples look like on a healthy line: CSF pressure (~1.5 kPa) plus respiratory and
cardiac ripple (a few tenths of a kPa) plus sensor noise (~0.02 kPa). Samples arrive every
0.1–10 s of (possibly simulated) time, so the ripple is aliased and is treated as noise.

What the faults look like:

* complete occlusion: pressure rises about linearly at Q/C (20 µL/h into 1 µL/kPa = 20 kPa/h);
* partial occlusion: pressure rises towards a plateau Q·R above CSF;
* leak / disconnection: pressure falls towards 0 kPa;
* sensor faults: NaN/inf, out-of-range values, a stuck (repeated) value, no samples at all.

Rules, each named in :attr:`LineAssessment.detector`:

``threshold``  pressure above the baseline by ``suspect_threshold_kpa`` (SUSPECTED) or
               ``occlusion_threshold_kpa`` (OCCLUDED);
``absolute``   pressure at or above ``absolute_occlusion_kpa`` (OCCLUDED), baseline or not;
``rise_rate``  least-squares slope over ``rise_window_s`` of at least
               ``suspect_rise_rate_kpa_per_min`` with both the fitted level and the sample at
               least ``rise_min_excess_kpa`` above baseline, while the pump runs (SUSPECTED
               early warning, long before the threshold);
``leak``       pressure below the baseline by ``leak_drop_kpa`` (LEAK);
``nan``, ``range``, ``stuck``, ``timeout``: sensor faults (SENSOR_FAULT).

Every line state is entered only after ``persistence_samples`` consecutive samples agree (one
spike alarms nothing) and left only after as many samples below a lower *release* level
(hysteresis: no flapping on the threshold). The detector does not latch; latching is the
alarm layer's job.

The baseline is an exponential moving average with time constant ``baseline_tau_s``, started
from the median of the first samples. It learns only from samples within ``baseline_band_kpa``
of itself while the line is OK, so it follows slow drift of the CSF pressure but not an
occlusion: a rise faster than ``baseline_band_kpa / baseline_tau_s`` (0.25 kPa/h by default,
below the slowest realistic occlusion of ~1 kPa/h) leaves the band and freezes it.
"""

from __future__ import annotations

import difflib
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["DetectorConfig", "LineAssessment", "LineState", "OcclusionDetector"]

_SECONDS_PER_MINUTE: Final = 60.0


class LineState(enum.IntEnum):
    """Values match pump_rig_interfaces/msg/OcclusionStatus."""

    OK = 0
    SUSPECTED = 1
    OCCLUDED = 2
    LEAK = 3
    SENSOR_FAULT = 4


def _setting(default: float, description: str) -> Any:
    return field(default=default, metadata={"description": description})


@dataclass(frozen=True)
class DetectorConfig:
    """Detector settings; every field carries a ``description`` in its metadata."""

    occlusion_threshold_kpa: float = _setting(
        10.0, "Pressure above baseline that means occlusion (OCCLUDED), kPa"
    )
    occlusion_release_kpa: float = _setting(
        8.0, "OCCLUDED ends only when pressure above baseline falls below this, kPa"
    )
    suspect_threshold_kpa: float = _setting(
        4.0, "Pressure above baseline that raises SUSPECTED (warning), kPa"
    )
    suspect_release_kpa: float = _setting(
        1.5, "SUSPECTED ends only when pressure above baseline falls below this, kPa"
    )
    absolute_occlusion_kpa: float = _setting(
        60.0, "Absolute pressure that means occlusion even with no usable baseline, kPa"
    )
    leak_drop_kpa: float = _setting(
        0.8, "Pressure below baseline that means a leak or disconnection (LEAK), kPa"
    )
    leak_release_kpa: float = _setting(
        0.5, "LEAK ends only when pressure is less than this below baseline, kPa"
    )
    persistence_samples: int = _setting(
        3, "Consecutive samples a rule must hold to change the line state"
    )
    baseline_tau_s: float = _setting(
        14400.0, "Time constant of the baseline moving average (ROS time), s"
    )
    baseline_band_kpa: float = _setting(
        1.0, "Only samples this close to the baseline update it, kPa"
    )
    baseline_init_samples: int = _setting(
        5, "Samples whose median starts the baseline (with baseline_init_s)"
    )
    baseline_init_s: float = _setting(
        20.0, "Minimum time the starting samples must span (averages the ripple), s"
    )
    rise_window_s: float = _setting(300.0, "Window of the least-squares rise-rate fit, s")
    rise_min_samples: int = _setting(5, "Fewest samples in the window for a rise-rate fit")
    suspect_rise_rate_kpa_per_min: float = _setting(
        0.1, "Rise rate that raises SUSPECTED (with rise_min_excess_kpa), kPa/min"
    )
    rise_min_excess_kpa: float = _setting(
        1.5, "Pressure above baseline (fitted and sampled) the rise-rate rule also needs, kPa"
    )
    min_valid_kpa: float = _setting(-20.0, "Lowest plausible reading; below is a sensor fault")
    max_valid_kpa: float = _setting(400.0, "Highest plausible reading; above is a sensor fault")
    sample_timeout_s: float = _setting(
        30.0, "No sample for this long (ROS time) is a sensor fault, s"
    )
    stuck_samples: int = _setting(
        20, "This many identical consecutive readings (and stuck_min_duration_s) mean stuck"
    )
    stuck_min_duration_s: float = _setting(
        60.0, "Identical readings must also span this long to mean stuck, s"
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"{f.name}: must be an integer (got {value!r})")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{f.name}: must be a number (got {value!r})")
            elif not math.isfinite(value):
                raise ValueError(f"{f.name}: must be finite (got {value!r})")
        for name in (
            "occlusion_threshold_kpa",
            "occlusion_release_kpa",
            "suspect_threshold_kpa",
            "suspect_release_kpa",
            "absolute_occlusion_kpa",
            "leak_drop_kpa",
            "leak_release_kpa",
            "baseline_tau_s",
            "baseline_band_kpa",
            "rise_window_s",
            "suspect_rise_rate_kpa_per_min",
            "rise_min_excess_kpa",
            "sample_timeout_s",
        ):
            _require(self, name, getattr(self, name) > 0, "must be > 0")
        for name in ("baseline_init_s", "stuck_min_duration_s"):
            _require(self, name, getattr(self, name) >= 0, "must be >= 0")
        _require(self, "persistence_samples", self.persistence_samples >= 1, "must be >= 1")
        _require(self, "baseline_init_samples", self.baseline_init_samples >= 1, "must be >= 1")
        _require(self, "rise_min_samples", self.rise_min_samples >= 3, "must be >= 3")
        _require(self, "stuck_samples", self.stuck_samples >= 2, "must be >= 2")
        _require(
            self,
            "suspect_threshold_kpa",
            self.suspect_threshold_kpa < self.occlusion_threshold_kpa,
            "must be < occlusion_threshold_kpa",
        )
        _require(
            self,
            "occlusion_release_kpa",
            self.occlusion_release_kpa < self.occlusion_threshold_kpa,
            "must be < occlusion_threshold_kpa",
        )
        _require(
            self,
            "suspect_release_kpa",
            self.suspect_release_kpa < self.suspect_threshold_kpa,
            "must be < suspect_threshold_kpa",
        )
        _require(
            self,
            "leak_release_kpa",
            self.leak_release_kpa < self.leak_drop_kpa,
            "must be < leak_drop_kpa",
        )
        # A baseline that may follow samples into the suspect zone would hide occlusions.
        _require(
            self,
            "baseline_band_kpa",
            self.baseline_band_kpa < self.suspect_threshold_kpa,
            "must be < suspect_threshold_kpa",
        )
        _require(
            self,
            "min_valid_kpa",
            self.min_valid_kpa < self.max_valid_kpa,
            "must be < max_valid_kpa",
        )
        _require(
            self,
            "absolute_occlusion_kpa",
            self.absolute_occlusion_kpa <= self.max_valid_kpa,
            "must be <= max_valid_kpa",
        )

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> DetectorConfig:
        """Build from e.g. ROS parameters; missing fields keep their defaults.

        ValueError names an unknown field (with the closest known one) or a bad value.
        """
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{key}: unknown detector setting{hint}")
            if (
                known[key].type == "float"
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                value = float(value)  # "10" in a parameter file means 10.0
            kwargs[key] = value
        return cls(**kwargs)


def _require(config: DetectorConfig, name: str, ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {message} (got {getattr(config, name)!r})")


@dataclass(frozen=True)
class LineAssessment:
    """The line judged at one instant (becomes an OcclusionStatus).

    ``baseline_kpa`` and ``rise_rate_kpa_per_min`` are NaN while not yet known.
    """

    t_s: float
    state: LineState
    pressure_kpa: float
    baseline_kpa: float
    rise_rate_kpa_per_min: float
    detector: str  # the rule behind the state; "" when OK
    reason: str


FloatArray = npt.NDArray[np.float64]


class _Window:
    """Recent (t, p) samples in growable numpy arrays, so the fit needs no copies."""

    def __init__(self, capacity: int = 256) -> None:
        self._t: FloatArray = np.empty(capacity)
        self._p: FloatArray = np.empty(capacity)
        self._start = 0
        self._end = 0

    def clear(self) -> None:
        self._start = self._end = 0

    def append(self, t_s: float, p_kpa: float) -> None:
        if self._end == len(self._t):
            n = self._end - self._start
            size = len(self._t) * 2 if n * 2 > len(self._t) else len(self._t)
            t_new: FloatArray = np.empty(size)
            p_new: FloatArray = np.empty(size)
            t_new[:n] = self._t[self._start : self._end]
            p_new[:n] = self._p[self._start : self._end]
            self._t, self._p, self._start, self._end = t_new, p_new, 0, n
        self._t[self._end] = t_s
        self._p[self._end] = p_kpa
        self._end += 1

    def drop_before(self, t_min_s: float) -> None:
        live = self._t[self._start : self._end]
        self._start += int(np.searchsorted(live, t_min_s, side="left"))

    def fit(self, min_samples: int, min_span_s: float) -> tuple[float, float] | None:
        """(slope kPa/s, fitted pressure at the newest sample) or None if too little data."""
        n = self._end - self._start
        if n < min_samples:
            return None
        t = self._t[self._start : self._end]
        p = self._p[self._start : self._end]
        if t[-1] - t[0] < min_span_s:
            return None
        t_mean = float(t.mean())
        p_mean = float(p.mean())
        dt = t - t_mean
        sxx = float(dt @ dt)
        if sxx <= 0.0:
            return None
        slope = float(dt @ (p - p_mean)) / sxx
        return slope, p_mean + slope * (float(t[-1]) - t_mean)


class OcclusionDetector:
    """Feed every pressure sample to :meth:`update`; call :meth:`check_timeout` periodically."""

    # Judgement, set by _reset_judgement.
    _state: LineState
    _detector: str
    _window: _Window
    _init_samples: list[tuple[float, float]]
    _prev_valid_s: float | None
    _stuck_value: float | None
    _stuck_count: int
    _stuck_since_s: float

    def __init__(self, config: DetectorConfig | None = None, *, t0_s: float | None = None) -> None:
        """``t0_s``: start the no-sample timeout now rather than at the first timeout check."""
        self.config = config if config is not None else DetectorConfig()
        self._baseline_kpa: float | None = None
        self._last_sample_s: float | None = None
        self._timeout_ref_s: float | None = t0_s
        self._reset_judgement()

    # --- public ----------------------------------------------------------------------------

    @property
    def state(self) -> LineState:
        return self._state

    @property
    def baseline_kpa(self) -> float:
        return self._baseline_kpa if self._baseline_kpa is not None else math.nan

    def reset(self, *, t0_s: float | None = None, forget_baseline: bool = False) -> None:
        """Forget the judgement (state, persistence counts, fit window, fault counts).

        The baseline is kept unless ``forget_baseline``: it describes the line, not the alarm,
        and re-learning it at a still-raised pressure would hide a partial occlusion. The
        no-sample timeout keeps running from the last sample (or restarts at ``t0_s``), so a
        reset cannot silence a dead sensor.
        """
        if forget_baseline:
            self._baseline_kpa = None
        if t0_s is not None:
            self._timeout_ref_s = t0_s
        self._reset_judgement()

    def update(self, t_s: float, pressure_kpa: float, *, pump_running: bool) -> LineAssessment:
        """Judge one sample taken at ``t_s`` (seconds)."""
        cfg = self.config
        if self._last_sample_s is not None and t_s < self._last_sample_s:
            # The clock went back (replay restarted): old fit data is on another time axis.
            self._window.clear()
            self._prev_valid_s = None
        self._last_sample_s = t_s
        self._timeout_ref_s = t_s

        if not math.isfinite(pressure_kpa):
            return self._invalid(t_s, pressure_kpa, "nan", f"reading is {pressure_kpa!r}")
        if not cfg.min_valid_kpa <= pressure_kpa <= cfg.max_valid_kpa:
            return self._invalid(
                t_s,
                pressure_kpa,
                "range",
                f"reading {pressure_kpa:.3f} kPa outside "
                f"[{cfg.min_valid_kpa:g}, {cfg.max_valid_kpa:g}] kPa",
            )
        if pressure_kpa == self._stuck_value:
            self._stuck_count += 1
        else:
            self._stuck_value, self._stuck_count, self._stuck_since_s = pressure_kpa, 1, t_s
        stuck_for_s = t_s - self._stuck_since_s
        if self._stuck_count >= cfg.stuck_samples and stuck_for_s >= cfg.stuck_min_duration_s:
            reason = (
                f"{self._stuck_count} identical readings of {pressure_kpa!r} kPa "
                f"over {stuck_for_s:.0f} s"
            )
            self._enter_fault("stuck")
            return self._assess(t_s, pressure_kpa, math.nan, reason)
        return self._valid(t_s, pressure_kpa, pump_running)

    def check_timeout(self, t_s: float) -> LineAssessment | None:
        """SENSOR_FAULT ("timeout") if no sample came for ``sample_timeout_s``; else None.

        Time is counted from the last sample, else from ``t0_s``, else from the first call.
        """
        if self._timeout_ref_s is None:
            self._timeout_ref_s = t_s
            return None
        silent_s = t_s - self._timeout_ref_s
        if silent_s < self.config.sample_timeout_s:
            return None
        self._enter_fault("timeout")
        return self._assess(t_s, math.nan, math.nan, f"no pressure sample for {silent_s:.1f} s")

    # --- internals -------------------------------------------------------------------------

    def _reset_judgement(self) -> None:
        self._state = LineState.OK
        self._detector = ""
        self._window = _Window()
        self._init_samples = []
        self._prev_valid_s: float | None = None
        self._n_occ = self._n_leak = self._n_sus_or_occ = self._n_ok = self._n_off = 0
        self._n_invalid = 0
        self._n_valid = 0  # consecutive valid samples while in SENSOR_FAULT
        self._stuck_value = None
        self._stuck_count = 0
        self._stuck_since_s = 0.0

    def _enter_fault(self, detector: str) -> None:
        if self._state is not LineState.SENSOR_FAULT:
            self._window.clear()  # samples from a failing sensor are not evidence
            self._n_occ = self._n_leak = self._n_sus_or_occ = self._n_ok = self._n_off = 0
        self._state = LineState.SENSOR_FAULT
        self._detector = detector
        self._n_valid = 0

    def _invalid(self, t_s: float, pressure_kpa: float, detector: str, why: str) -> LineAssessment:
        self._stuck_value, self._stuck_count = None, 0
        self._n_invalid += 1
        self._n_valid = 0
        if self._n_invalid >= self.config.persistence_samples:
            self._enter_fault(detector)
            return self._assess(t_s, pressure_kpa, math.nan, why)
        # Not yet persistent: the line state stands, this sample is not used.
        return self._assess(
            t_s,
            pressure_kpa,
            math.nan,
            f"{why}; ignored ({self._n_invalid}/{self.config.persistence_samples})",
        )

    def _valid(self, t_s: float, p_kpa: float, pump_running: bool) -> LineAssessment:
        cfg = self.config
        self._n_invalid = 0
        dt_s = 0.0 if self._prev_valid_s is None else max(0.0, t_s - self._prev_valid_s)
        self._prev_valid_s = t_s

        self._window.append(t_s, p_kpa)
        self._window.drop_before(t_s - cfg.rise_window_s)
        fit = self._window.fit(cfg.rise_min_samples, cfg.rise_window_s / 2.0)
        rate_kpa_per_min = fit[0] * _SECONDS_PER_MINUTE if fit else math.nan

        if self._baseline_kpa is None:
            self._learn_initial_baseline(t_s, p_kpa)

        level, rule, why = self._classify(p_kpa, fit, rate_kpa_per_min, pump_running)

        if self._state is LineState.SENSOR_FAULT:
            self._count(level)
            self._n_valid += 1
            if self._n_valid < cfg.persistence_samples:
                return self._assess(
                    t_s,
                    p_kpa,
                    rate_kpa_per_min,
                    f"valid again ({self._n_valid}/{cfg.persistence_samples}), "
                    f"was {self._detector}",
                )
            self._state, self._detector = LineState.OK, ""
        else:
            self._count(level)
        self._transition(level, rule)

        baseline = self._baseline_kpa
        if (
            baseline is not None
            and self._state is LineState.OK
            and level is LineState.OK
            and abs(p_kpa - baseline) <= cfg.baseline_band_kpa
        ):
            alpha = -math.expm1(-dt_s / cfg.baseline_tau_s)
            self._baseline_kpa = baseline + alpha * (p_kpa - baseline)

        if self._baseline_kpa is None:
            why = why or f"learning baseline ({len(self._init_samples)} samples)"
        elif level is not self._state:
            # Held by persistence/hysteresis: say so, with where this sample points.
            why = f"{self._state.name} held; this sample: {why}"
        return self._assess(t_s, p_kpa, rate_kpa_per_min, why)

    def _learn_initial_baseline(self, t_s: float, p_kpa: float) -> None:
        cfg = self.config
        self._init_samples.append((t_s, p_kpa))
        span_s = t_s - self._init_samples[0][0]
        if len(self._init_samples) >= cfg.baseline_init_samples and span_s >= cfg.baseline_init_s:
            self._baseline_kpa = float(np.median([p for _, p in self._init_samples]))
            self._init_samples = []

    def _classify(
        self,
        p_kpa: float,
        fit: tuple[float, float] | None,
        rate_kpa_per_min: float,
        pump_running: bool,
    ) -> tuple[LineState, str, str]:
        """The state this one sample points to, the rule, and why (no persistence yet)."""
        cfg = self.config
        held = self._state
        if p_kpa >= cfg.absolute_occlusion_kpa:
            return (
                LineState.OCCLUDED,
                "absolute",
                f"pressure {p_kpa:.2f} kPa >= {cfg.absolute_occlusion_kpa:g} kPa",
            )
        baseline = self._baseline_kpa
        if baseline is None:
            return LineState.OK, "", ""
        excess = p_kpa - baseline
        # Hysteresis: a state is held down to its (lower) release level.
        occ_level = (
            cfg.occlusion_release_kpa if held is LineState.OCCLUDED else cfg.occlusion_threshold_kpa
        )
        sus_level = (
            cfg.suspect_release_kpa
            if held in (LineState.SUSPECTED, LineState.OCCLUDED)
            else cfg.suspect_threshold_kpa
        )
        leak_level = cfg.leak_release_kpa if held is LineState.LEAK else cfg.leak_drop_kpa
        above = f"{excess:+.2f} kPa vs baseline {baseline:.2f} kPa"
        if excess >= occ_level:
            return LineState.OCCLUDED, "threshold", f"{above} (occlusion at {occ_level:g})"
        if -excess >= leak_level:
            return LineState.LEAK, "leak", f"{above} (leak at -{leak_level:g})"
        if excess >= sus_level:
            return LineState.SUSPECTED, "threshold", f"{above} (suspect at {sus_level:g})"
        if (
            pump_running
            and fit is not None
            and rate_kpa_per_min >= cfg.suspect_rise_rate_kpa_per_min
            and fit[1] - baseline >= cfg.rise_min_excess_kpa
            # The sample itself must be up too: a spike inside the window tilts the fit.
            and excess >= cfg.rise_min_excess_kpa
        ):
            return (
                LineState.SUSPECTED,
                "rise_rate",
                f"rising {rate_kpa_per_min:.3f} kPa/min, fitted {fit[1] - baseline:+.2f} kPa "
                f"vs baseline {baseline:.2f} kPa",
            )
        return LineState.OK, "", f"{above} (normal)"

    def _count(self, level: LineState) -> None:
        def step(n: int, hit: bool) -> int:
            return n + 1 if hit else 0

        self._n_occ = step(self._n_occ, level is LineState.OCCLUDED)
        self._n_leak = step(self._n_leak, level is LineState.LEAK)
        self._n_sus_or_occ = step(
            self._n_sus_or_occ, level in (LineState.SUSPECTED, LineState.OCCLUDED)
        )
        self._n_ok = step(self._n_ok, level is LineState.OK)
        self._n_off = step(self._n_off, level is not self._state)

    def _transition(self, level: LineState, rule: str) -> None:
        """Apply persistence: enter on P agreeing samples, leave on P samples below release."""
        need = self.config.persistence_samples
        state = self._state
        new = state
        if self._n_occ >= need:
            new = LineState.OCCLUDED
        elif self._n_leak >= need:
            new = LineState.LEAK
        elif state is LineState.OK:
            if self._n_sus_or_occ >= need:
                new = LineState.SUSPECTED
        elif state is LineState.SUSPECTED:
            if self._n_ok >= need:
                new = LineState.OK
        elif self._n_off >= need and level is not LineState.LEAK:
            # Leaving OCCLUDED or LEAK: step down to where the samples are now.
            new = LineState.OK if level is LineState.OK else LineState.SUSPECTED
        if new is not state:
            self._state = new
            self._detector = rule if new is not LineState.OK else ""
            if new is LineState.SUSPECTED and not rule:
                self._detector = "threshold"
            self._n_off = 0

    def _assess(
        self, t_s: float, p_kpa: float, rate_kpa_per_min: float, reason: str
    ) -> LineAssessment:
        return LineAssessment(
            t_s=t_s,
            state=self._state,
            pressure_kpa=p_kpa,
            baseline_kpa=self.baseline_kpa,
            rise_rate_kpa_per_min=rate_kpa_per_min,
            detector=self._detector,
            reason=reason,
        )
