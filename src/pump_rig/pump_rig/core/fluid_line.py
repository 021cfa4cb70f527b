"""Catheter line physics: compliance, catheter resistance, CSF back-pressure and leaks.

Lumped model (one compliant volume between the syringe and the catheter)::

    C dP/dt = Q − (P − P_csf(t)) / R − P / R_leak
    P_csf(t) = p_mean + a_resp sin(ω_resp t) + a_card sin(ω_card t)

With Q, R and R_leak constant over an interval this is linear with constant + sinusoidal
forcing, so it is solved in closed form and ``advance`` jumps straight to any time (months of
therapy in one call). Write G = 1/R + 1/R_leak, τ = C/G. The solution splits into

* S(t): the steady response to the ripple, sum of (a/R)·Im[e^{jωt} / (G + jωC)];
* Pd(t) = P − S: first order with constant forcing K = Q + p_mean/R,
  Pd(t) = Pd0 + (K − G·Pd0)·φ(Δt),  φ(Δt) = (1 − e^{−Δt·G/C}) / G.

φ is evaluated with expm1 and tends to Δt/C as G → 0, so a fully sealed catheter (τ → ∞) gives
exactly P rising by Q·Δt/C, with no cancellation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# Defaults, and why:
# * Catheter: intrathecal catheters are ~0.5 mm ID and ~80 cm long when tunnelled to an
#   abdominal pump; drug solutions at 37 °C are about as viscous as CSF/water, μ ≈ 0.8 mPa·s.
#   Poiseuille: R = 8 μ L / (π r⁴) = 8·0.8e-3·0.8 / (π·(0.25e-3)⁴) ≈ 4.2e11 Pa·s/m³
#   = 0.42 kPa·s/µL (1 µL = 1e-9 m³). So R ≈ 0.4 kPa·s/µL, and at 10 µL/h the pressure drop
#   across a healthy catheter is ~1 Pa: invisible under the ripple, as on real patients.
# * Compliance: syringe plunger seal, tubing and catheter wall together, 1 µL/kPa (typ. 0.2–2),
#   giving τ = RC ≈ 0.4 s for a healthy line and days for an occluded one (R × 1e6).
# * CSF: lumbar intrathecal pressure ~10–15 cmH2O ≈ 1.0–1.5 kPa lying down; respiratory ripple
#   ~0.15 kPa at 15 breaths/min (0.25 Hz), cardiac ripple ~0.1 kPa at 72 beats/min (1.2 Hz).
DEFAULT_COMPLIANCE_UL_PER_KPA = 1.0
DEFAULT_CATHETER_RESISTANCE_KPA_S_PER_UL = 0.4
DEFAULT_CSF_PRESSURE_KPA = 1.5
DEFAULT_RESPIRATORY_RIPPLE_KPA = 0.15
DEFAULT_RESPIRATORY_HZ = 0.25
DEFAULT_CARDIAC_RIPPLE_KPA = 0.1
DEFAULT_CARDIAC_HZ = 1.2

# Crossing search (first_time_at_or_above): ripple sampled at this many points per period of the
# fastest ripple, then bisected; at most this many samples per call.
_SAMPLES_PER_RIPPLE_PERIOD = 32
_MAX_SCAN_SAMPLES = 1 << 22
_SCAN_CHUNK = 1 << 16

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LineParams:
    compliance_ul_per_kpa: float = DEFAULT_COMPLIANCE_UL_PER_KPA
    catheter_resistance_kpa_s_per_ul: float = DEFAULT_CATHETER_RESISTANCE_KPA_S_PER_UL
    csf_pressure_kpa: float = DEFAULT_CSF_PRESSURE_KPA
    respiratory_ripple_kpa: float = DEFAULT_RESPIRATORY_RIPPLE_KPA
    respiratory_hz: float = DEFAULT_RESPIRATORY_HZ
    cardiac_ripple_kpa: float = DEFAULT_CARDIAC_RIPPLE_KPA
    cardiac_hz: float = DEFAULT_CARDIAC_HZ

    def __post_init__(self) -> None:
        for name in (
            "compliance_ul_per_kpa",
            "catheter_resistance_kpa_s_per_ul",
            "respiratory_hz",
            "cardiac_hz",
        ):
            _require(name, getattr(self, name), positive=True)
        _require("csf_pressure_kpa", self.csf_pressure_kpa, positive=False)
        for name in ("respiratory_ripple_kpa", "cardiac_ripple_kpa"):
            value = getattr(self, name)
            _require(name, value, positive=False)
            if value < 0.0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")


def _require(name: str, value: float, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class _Coefficients:
    """Everything the closed form needs for one (R, R_leak) configuration."""

    c: float  # compliance, µL/kPa
    g: float  # total conductance 1/R + 1/R_leak, µL/(kPa·s)
    csf_inflow_ul_per_s: float  # p_mean / R
    # Steady ripple response S(t) = Σ sin_k·sin(ω_k t) + cos_k·cos(ω_k t)
    omega: tuple[float, ...]
    sin_coef: tuple[float, ...]
    cos_coef: tuple[float, ...]
    ripple_bound_kpa: float  # max |S(t)|  <=  Σ amplitudes
    fastest_period_s: float

    def ripple(self, t_s: float) -> float:
        return sum(
            s * math.sin(w * t_s) + c * math.cos(w * t_s)
            for w, s, c in zip(self.omega, self.sin_coef, self.cos_coef, strict=True)
        )

    def ripple_array(self, t_s: FloatArray) -> FloatArray:
        out = np.zeros_like(t_s)
        for w, s, c in zip(self.omega, self.sin_coef, self.cos_coef, strict=True):
            out += s * np.sin(w * t_s) + c * np.cos(w * t_s)
        return out

    def phi(self, dt_s: float) -> float:
        """∫ e^{−G s / C} ds / C over [0, dt]: exact for any G, including 0."""
        if self.g == 0.0:
            return dt_s / self.c
        return -math.expm1(-dt_s * self.g / self.c) / self.g

    def phi_array(self, dt_s: FloatArray) -> FloatArray:
        if self.g == 0.0:
            return dt_s / self.c
        result: FloatArray = -np.expm1(-dt_s * self.g / self.c) / self.g
        return result

    def time_to_level(self, pd0: float, drive: float, level: float) -> float | None:
        """Δt ≥ 0 at which Pd (starting at pd0, slope sign of drive) reaches level; None: never."""
        if level == pd0:
            return 0.0
        if drive == 0.0:
            return None
        phi_level = (level - pd0) / drive
        if phi_level < 0.0:
            return None  # moving away from the level
        if self.g == 0.0:
            return phi_level * self.c
        x = phi_level * self.g
        if x >= 1.0:
            return None  # the level is at or beyond the asymptote
        return -self.c * math.log1p(-x) / self.g


def _coefficients(
    params: LineParams, resistance_factor: float, leak: float | None
) -> _Coefficients:
    r = params.catheter_resistance_kpa_s_per_ul * resistance_factor
    g_cath = 0.0 if math.isinf(r) else 1.0 / r
    g_leak = 0.0 if leak is None or math.isinf(leak) else 1.0 / leak
    g = g_cath + g_leak
    c = params.compliance_ul_per_kpa
    omega: list[float] = []
    sin_coef: list[float] = []
    cos_coef: list[float] = []
    bound = 0.0
    periods: list[float] = []
    for amp, hz in (
        (params.respiratory_ripple_kpa, params.respiratory_hz),
        (params.cardiac_ripple_kpa, params.cardiac_hz),
    ):
        b = amp * g_cath  # ripple "inflow" amplitude, µL/s
        if b == 0.0:
            continue
        w = 2.0 * math.pi * hz
        mag2 = g * g + (w * c) ** 2
        # Im[e^{jωt} / (G + jωC)] = (G sin ωt − ωC cos ωt) / (G² + ω²C²)
        omega.append(w)
        sin_coef.append(b * g / mag2)
        cos_coef.append(-b * w * c / mag2)
        bound += b / math.sqrt(mag2)
        periods.append(1.0 / hz)
    return _Coefficients(
        c=c,
        g=g,
        csf_inflow_ul_per_s=params.csf_pressure_kpa * g_cath,
        omega=tuple(omega),
        sin_coef=tuple(sin_coef),
        cos_coef=tuple(cos_coef),
        ripple_bound_kpa=bound,
        fastest_period_s=min(periods) if periods else math.inf,
    )


def _check_time(t_s: float, now_s: float) -> None:
    if not math.isfinite(t_s):
        raise ValueError(f"time must be finite, got {t_s!r}")
    if t_s < now_s:
        raise ValueError(f"time went backwards: {t_s!r} s < current {now_s!r} s")


def _check_flow(flow_ul_per_s: float) -> None:
    if not math.isfinite(flow_ul_per_s):
        raise ValueError(f"flow must be finite, got {flow_ul_per_s!r}")


class FluidLine:
    """Pressure in the line between syringe and catheter tip, advanced exactly between events.

    Faults change the coefficients at an instant: ``set_resistance_factor`` (occlusion) and
    ``set_leak``. Those calls, if given a time past the line's own, first advance with the
    flow of the last ``advance`` (zero-order hold), then change the line.
    """

    def __init__(
        self, params: LineParams, *, t0_s: float = 0.0, p0_kpa: float | None = None
    ) -> None:
        if not math.isfinite(t0_s):
            raise ValueError(f"t0_s must be finite, got {t0_s!r}")
        self._params = params
        self._t_s = float(t0_s)
        self._factor = 1.0
        self._leak: float | None = None
        self._flow_ul_per_s = 0.0
        self._k = _coefficients(params, self._factor, self._leak)
        if p0_kpa is None:
            # Periodic steady state with no flow: Pd at its asymptote, plus the ripple.
            p0_kpa = self._k.csf_inflow_ul_per_s / self._k.g + self._k.ripple(self._t_s)
        elif not math.isfinite(p0_kpa):
            raise ValueError(f"p0_kpa must be finite, got {p0_kpa!r}")
        self._p_kpa = float(p0_kpa)

    @property
    def params(self) -> LineParams:
        return self._params

    @property
    def t_s(self) -> float:
        return self._t_s

    @property
    def pressure_kpa(self) -> float:
        return self._p_kpa

    @property
    def resistance_factor(self) -> float:
        return self._factor

    @property
    def leak_resistance_kpa_s_per_ul(self) -> float | None:
        return self._leak

    @property
    def time_constant_s(self) -> float:
        """τ = C / (1/R + 1/R_leak); inf for a perfectly sealed line."""
        return math.inf if self._k.g == 0.0 else self._k.c / self._k.g

    def csf_pressure_kpa(self, t_s: float) -> float:
        p = self._params
        return (
            p.csf_pressure_kpa
            + p.respiratory_ripple_kpa * math.sin(2.0 * math.pi * p.respiratory_hz * t_s)
            + p.cardiac_ripple_kpa * math.sin(2.0 * math.pi * p.cardiac_hz * t_s)
        )

    def steady_state_kpa(self, flow_ul_per_s: float) -> float:
        """Mean pressure the line settles to at this flow (ripple excluded); inf if sealed."""
        drive = flow_ul_per_s + self._k.csf_inflow_ul_per_s
        if self._k.g == 0.0:
            return math.copysign(math.inf, drive) if drive else self._p_kpa
        return drive / self._k.g

    def pressure_at(self, t_s: float, flow_ul_per_s: float) -> float:
        """P(t_s) if the flow stays constant from now to t_s; does not change the line."""
        _check_time(t_s, self._t_s)
        _check_flow(flow_ul_per_s)
        k = self._k
        pd0 = self._p_kpa - k.ripple(self._t_s)
        drive = flow_ul_per_s + k.csf_inflow_ul_per_s - k.g * pd0
        return k.ripple(t_s) + pd0 + drive * k.phi(t_s - self._t_s)

    def advance(self, t_s: float, flow_ul_per_s: float) -> float:
        """Flow is constant over [t_prev, t_s]; returns P(t_s)."""
        self._p_kpa = self.pressure_at(t_s, flow_ul_per_s)
        self._t_s = float(t_s)
        self._flow_ul_per_s = float(flow_ul_per_s)
        return self._p_kpa

    def set_resistance_factor(self, t_s: float, factor: float) -> None:
        """Multiply the catheter resistance (1 = healthy; math.inf = perfectly sealed)."""
        if math.isnan(factor) or factor <= 0.0:
            raise ValueError(f"resistance factor must be > 0 (inf allowed), got {factor!r}")
        self.advance(t_s, self._flow_ul_per_s)
        self._factor = float(factor)
        self._k = _coefficients(self._params, self._factor, self._leak)

    def set_leak(self, t_s: float, resistance_kpa_s_per_ul: float | None) -> None:
        """Open a leak to 0 kPa with this resistance; None (or inf) closes it."""
        if resistance_kpa_s_per_ul is not None and (
            math.isnan(resistance_kpa_s_per_ul) or resistance_kpa_s_per_ul <= 0.0
        ):
            raise ValueError(
                f"leak resistance must be > 0 kPa·s/µL or None, got {resistance_kpa_s_per_ul!r}"
            )
        self.advance(t_s, self._flow_ul_per_s)
        self._leak = resistance_kpa_s_per_ul
        self._k = _coefficients(self._params, self._factor, self._leak)

    def first_time_at_or_above(
        self, threshold_kpa: float, flow_ul_per_s: float, t_end_s: float
    ) -> float | None:
        """First time in [t_s, t_end_s] at which P ≥ threshold at this constant flow, or None.

        Pd is monotonic and |S| ≤ bound, so a crossing can only happen where
        Pd ≥ threshold − bound and must have happened once Pd ≥ threshold + bound. Both times
        are closed form; only that window is sampled (32 points per fastest ripple period) and
        the first sampled crossing bisected. Without ripple the answer is closed form. Limits:
        a ripple peak poking above the threshold between two samples by less than the ripple's
        change over 1/32 period can be missed, and at most 2**22 samples are scanned per call
        (only reachable when the mean pressure settles within a ripple amplitude of the
        threshold, where the crossing time is ill-defined anyway).
        """
        _check_time(t_end_s, self._t_s)
        _check_flow(flow_ul_per_s)
        t0 = self._t_s
        if self._p_kpa >= threshold_kpa:
            return t0
        k = self._k
        pd0 = self._p_kpa - k.ripple(t0)
        drive = flow_ul_per_s + k.csf_inflow_ul_per_s - k.g * pd0
        bound = k.ripple_bound_kpa
        low_level = threshold_kpa - bound
        if drive > 0.0:
            if pd0 >= low_level:
                t_a = t0
            else:
                dt_a = k.time_to_level(pd0, drive, low_level)
                if dt_a is None:
                    return None
                t_a = t0 + dt_a
            dt_b = k.time_to_level(pd0, drive, threshold_kpa + bound)
            t_b = math.inf if dt_b is None else t0 + dt_b
        else:
            if pd0 < low_level:
                return None
            t_a = t0
            dt_b = k.time_to_level(pd0, drive, low_level)
            t_b = math.inf if dt_b is None else t0 + dt_b
        if t_a > t_end_s:
            return None
        if bound == 0.0:
            return t_a  # no ripple: Pd itself crosses at t_a
        window_end = min(t_b, t_end_s)
        return self._scan_for_crossing(threshold_kpa, pd0, drive, t_a, window_end, t_b)

    def _scan_for_crossing(
        self,
        threshold_kpa: float,
        pd0: float,
        drive: float,
        t_a: float,
        window_end: float,
        t_b: float,
    ) -> float | None:
        k = self._k
        t0 = self._t_s
        h = k.fastest_period_s / _SAMPLES_PER_RIPPLE_PERIOD
        n_total = min(_MAX_SCAN_SAMPLES, math.ceil((window_end - t_a) / h) + 1)
        prev_t = t_a
        start = 0
        while start < n_total:
            idx = np.arange(start, min(start + _SCAN_CHUNK, n_total), dtype=np.float64)
            ts = np.minimum(t_a + idx * h, window_end)
            ps = k.ripple_array(ts) + pd0 + drive * k.phi_array(ts - t0)
            hits = np.flatnonzero(ps >= threshold_kpa)
            if hits.size:
                i = int(hits[0])
                hi = float(ts[i])
                lo = float(ts[i - 1]) if i > 0 else prev_t
                return self._bisect(threshold_kpa, pd0, drive, lo, hi)
            prev_t = float(ts[-1])
            start += _SCAN_CHUNK
        if window_end == t_b and n_total < _MAX_SCAN_SAMPLES:
            return t_b  # Pd = threshold + bound there: crossed, up to rounding
        return None

    def _bisect(
        self, threshold_kpa: float, pd0: float, drive: float, lo: float, hi: float
    ) -> float:
        """Shrink [lo, hi] (P(lo) < thr ≤ P(hi)) to float resolution; returns hi."""
        k = self._k
        t0 = self._t_s
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if mid <= lo or mid >= hi:
                break
            if k.ripple(mid) + pd0 + drive * k.phi(mid - t0) >= threshold_kpa:
                hi = mid
            else:
                lo = mid
        return hi
