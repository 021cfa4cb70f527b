"""The whole mock bench: syringe pump → fluid line → pressure sensor, with injectable faults.

Integration is event-driven. Between two calls the pump's flow is piecewise constant; the
pieces end at the pump's own events (volume limit, empty syringe) and at the moment the line
pressure reaches the stall pressure, when the motor can no longer push and the plunger stalls.
Each piece is solved in closed form by FluidLine, so a month is as cheap as a second.

Not thread-safe on purpose: the caller (a node or the device emulator) holds the lock.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields

from pump_rig.core.faults import SENSOR_FAULTS, SERIAL_FAULTS, FaultKind
from pump_rig.core.fluid_line import (
    DEFAULT_CARDIAC_HZ,
    DEFAULT_CARDIAC_RIPPLE_KPA,
    DEFAULT_CATHETER_RESISTANCE_KPA_S_PER_UL,
    DEFAULT_COMPLIANCE_UL_PER_KPA,
    DEFAULT_CSF_PRESSURE_KPA,
    DEFAULT_RESPIRATORY_HZ,
    DEFAULT_RESPIRATORY_RIPPLE_KPA,
    FluidLine,
    LineParams,
)
from pump_rig.core.pressure_sensor import (
    DEFAULT_DRIFT_KPA_PER_H,
    DEFAULT_NOISE_KPA,
    DEFAULT_SPIKE_KPA,
    DEFAULT_SPIKE_PROBABILITY,
    PressureSensor,
    SensorParams,
)
from pump_rig.core.pump_types import Direction, PumpRunState
from pump_rig.core.syringe_pump import (
    MAX_DIAMETER_MM,
    MIN_DIAMETER_MM,
    MechanicsSpec,
    PumpSnapshot,
    SyringePump,
)

# Field groups for validation in BenchParams.__post_init__.
_POSITIVE = (
    "syringe_volume_ul",
    "max_rate_ul_per_h",
    "lead_screw_pitch_mm",
    "compliance_ul_per_kpa",
    "catheter_resistance_kpa_s_per_ul",
    "respiratory_hz",
    "cardiac_hz",
    "leak_resistance_kpa_s_per_ul",
    "stall_pressure_kpa",
)
_NON_NEGATIVE = (
    "respiratory_ripple_kpa",
    "cardiac_ripple_kpa",
    "sensor_noise_kpa",
    "sensor_spike_kpa",
)
_AT_LEAST_ONE = ("occlusion_resistance_factor", "partial_occlusion_resistance_factor")


@dataclass(frozen=True)
class BenchParams:
    """Everything that describes a bench, flat so it maps 1:1 onto ROS parameters."""

    # Syringe: B-D 10 mL plastic syringe, 14.43 mm ID per the New Era (NE-1000) syringe table;
    # 10 mL lasts 6 weeks at 10 µL/h, the same order as an implanted pump's refill interval.
    inner_diameter_mm: float = 14.43
    syringe_volume_ul: float = 10_000.0
    loaded_volume_ul: float = 10_000.0
    # A bench stepper pump goes far beyond intrathecal rates (≤ ~1 mL/h) because lines are
    # primed with it; 100 mL/h is ~680 microsteps/s on this drive, easy for a NEMA-17.
    max_rate_ul_per_h: float = 100_000.0
    # Drive train: 0.8 mm lead screw, 1.8° motor, 1/16 microstepping -> 0.041 µL per microstep.
    lead_screw_pitch_mm: float = 0.8
    steps_per_rev: int = 200
    microsteps: int = 16
    # Line (see fluid_line.py for the reasoning behind these numbers).
    compliance_ul_per_kpa: float = DEFAULT_COMPLIANCE_UL_PER_KPA
    catheter_resistance_kpa_s_per_ul: float = DEFAULT_CATHETER_RESISTANCE_KPA_S_PER_UL
    csf_pressure_kpa: float = DEFAULT_CSF_PRESSURE_KPA
    respiratory_ripple_kpa: float = DEFAULT_RESPIRATORY_RIPPLE_KPA
    respiratory_hz: float = DEFAULT_RESPIRATORY_HZ
    cardiac_ripple_kpa: float = DEFAULT_CARDIAC_RIPPLE_KPA
    cardiac_hz: float = DEFAULT_CARDIAC_HZ
    # Sensor (see pressure_sensor.py).
    sensor_noise_kpa: float = DEFAULT_NOISE_KPA
    seed: int = 0
    # Default fault sizes. Occlusion: a blocked catheter tip is ~1e6 × the healthy resistance
    # (τ of days, pressure climbs at Q/C); a kink ~1e3 × (new plateau P_csf + Q·R', τ ≈ 7 min).
    occlusion_resistance_factor: float = 1e6
    partial_occlusion_resistance_factor: float = 1e3
    # A disconnected luer fitting spills through a short wide path, well below the catheter's
    # 0.4 kPa·s/µL, so the line pressure falls to a small fraction of P_csf.
    leak_resistance_kpa_s_per_ul: float = 0.05
    sensor_drift_kpa_per_h: float = DEFAULT_DRIFT_KPA_PER_H
    sensor_spike_kpa: float = DEFAULT_SPIKE_KPA
    sensor_spike_probability: float = DEFAULT_SPIKE_PROBABILITY
    # The motor cannot push harder than this: 250 kPa on a 14.43 mm plunger is ~41 N, what a
    # small lead-screw drive gives before skipping steps, and below luer burst pressures.
    stall_pressure_kpa: float = 250.0

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                raise ValueError(f"{f.name} must be a number, got {value!r}")
            if hints[f.name] is int:
                if not isinstance(value, int):
                    raise ValueError(f"{f.name} must be an integer, got {value!r}")
            elif not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        for name in _POSITIVE:
            if getattr(self, name) <= 0.0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in _NON_NEGATIVE:
            if getattr(self, name) < 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in _AT_LEAST_ONE:
            if getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("steps_per_rev", "microsteps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed!r}")
        if not MIN_DIAMETER_MM <= self.inner_diameter_mm <= MAX_DIAMETER_MM:
            raise ValueError(
                f"inner_diameter_mm must be within {MIN_DIAMETER_MM}..{MAX_DIAMETER_MM}, "
                f"got {self.inner_diameter_mm!r}"
            )
        if not 0.0 <= self.loaded_volume_ul <= self.syringe_volume_ul:
            raise ValueError(
                f"loaded_volume_ul must be within 0..syringe_volume_ul "
                f"({self.syringe_volume_ul!r}), got {self.loaded_volume_ul!r}"
            )
        if not 0.0 <= self.sensor_spike_probability <= 1.0:
            raise ValueError(
                f"sensor_spike_probability must be within 0..1, "
                f"got {self.sensor_spike_probability!r}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> BenchParams:
        """Build from a flat {field name: value} mapping; missing fields keep their defaults.

        Unknown keys and bad values raise ValueError naming the field. Integral floats are
        accepted for integer fields (ROS parameters and YAML blur the two).
        """
        hints = typing.get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, object] = {}
        for key, value in values.items():
            if key not in known:
                raise ValueError(
                    f"unknown bench parameter {key!r}; known: {', '.join(sorted(known))}"
                )
            if (
                hints[key] is int
                and isinstance(value, float)
                and value.is_integer()
                and math.isfinite(value)
            ):
                value = int(value)
            kwargs[key] = value
        return cls(**kwargs)  # type: ignore[arg-type]  # __post_init__ checks every type

    def line_params(self) -> LineParams:
        return LineParams(
            compliance_ul_per_kpa=self.compliance_ul_per_kpa,
            catheter_resistance_kpa_s_per_ul=self.catheter_resistance_kpa_s_per_ul,
            csf_pressure_kpa=self.csf_pressure_kpa,
            respiratory_ripple_kpa=self.respiratory_ripple_kpa,
            respiratory_hz=self.respiratory_hz,
            cardiac_ripple_kpa=self.cardiac_ripple_kpa,
            cardiac_hz=self.cardiac_hz,
        )

    def sensor_params(self) -> SensorParams:
        return SensorParams(
            noise_kpa=self.sensor_noise_kpa,
            drift_kpa_per_h=self.sensor_drift_kpa_per_h,
            spike_kpa=self.sensor_spike_kpa,
            spike_probability=self.sensor_spike_probability,
            seed=self.seed,
        )

    def mechanics(self) -> MechanicsSpec:
        return MechanicsSpec(
            lead_screw_pitch_mm=self.lead_screw_pitch_mm,
            steps_per_rev=self.steps_per_rev,
            microsteps=self.microsteps,
        )


DEFAULT_BENCH_PARAMS = BenchParams()


class BenchModel:
    """Syringe pump, line and sensor advanced together at caller-supplied times.

    The ``pump`` and ``line`` properties are for reading; change them only through this class
    or the two clocks drift apart.

    Pressure stall: while the plunger is pushing and the line pressure reaches
    ``stall_pressure_kpa``, the pump goes STALLED at that exact time. The stall holds while
    the motor stays commanded; ``stop`` (and ``clear_faults``) release it. If the pressure is
    still at the limit when the motor pushes again, it stalls again at once.
    """

    def __init__(self, params: BenchParams = DEFAULT_BENCH_PARAMS, *, t0_s: float = 0.0) -> None:
        self._params = params
        self._pump = SyringePump(
            inner_diameter_mm=params.inner_diameter_mm,
            syringe_volume_ul=params.syringe_volume_ul,
            loaded_volume_ul=params.loaded_volume_ul,
            max_rate_ul_per_h=params.max_rate_ul_per_h,
            mechanics=params.mechanics(),
            t0_s=t0_s,
        )
        self._line = FluidLine(params.line_params(), t0_s=t0_s)
        self._sensor = PressureSensor(params.sensor_params(), t0_s=t0_s)
        self._faults: dict[FaultKind, float] = {}  # line and pump faults -> magnitude in use
        self._pressure_stall = False

    # ---- views -----------------------------------------------------------------------------
    @property
    def params(self) -> BenchParams:
        return self._params

    @property
    def pump(self) -> SyringePump:
        return self._pump

    @property
    def line(self) -> FluidLine:
        return self._line

    @property
    def sensor(self) -> PressureSensor:
        return self._sensor

    @property
    def t_s(self) -> float:
        return self._line.t_s

    @property
    def active_faults(self) -> frozenset[FaultKind]:
        return frozenset(self._faults) | self._sensor.active_faults

    @property
    def pressure_stalled(self) -> bool:
        """True while the plunger is stalled because the line reached the stall pressure."""
        return self._pressure_stall

    # ---- time ------------------------------------------------------------------------------
    def advance(self, t_s: float) -> None:
        self._integrate_to(t_s)

    def line_pressure_kpa(self, t_s: float) -> float:
        """True line pressure at t_s."""
        self._integrate_to(t_s)
        return self._line.pressure_kpa

    def sample_pressure(self, t_s: float) -> float | None:
        """What the sensor reports at t_s: None on dropout, NaN on a NaN fault."""
        self._integrate_to(t_s)
        return self._sensor.read(t_s, self._line.pressure_kpa)

    # ---- pump control (same names and signatures as SyringePump) --------------------------
    def set_diameter(self, t_s: float, inner_diameter_mm: float) -> None:
        self._integrate_to(t_s)
        self._pump.set_diameter(t_s, inner_diameter_mm)

    def set_rate(self, t_s: float, rate_ul_per_h: float) -> None:
        self._integrate_to(t_s)
        self._pump.set_rate(t_s, rate_ul_per_h)
        self._integrate_to(t_s)

    def set_direction(self, t_s: float, direction: Direction) -> None:
        self._integrate_to(t_s)
        self._pump.set_direction(t_s, direction)

    def set_volume_limit(self, t_s: float, volume_ul: float) -> None:
        self._integrate_to(t_s)
        self._pump.set_volume_limit(t_s, volume_ul)

    def start(self, t_s: float) -> None:
        self._integrate_to(t_s)
        if self._pump.state is PumpRunState.IDLE:
            self._pressure_stall = False
            self._sync_stall(t_s)
        self._pump.start(t_s)
        self._integrate_to(t_s)  # already at the stall pressure -> stalls now

    def stop(self, t_s: float) -> None:
        self._integrate_to(t_s)
        self._pump.stop(t_s)
        self._pressure_stall = False
        self._sync_stall(t_s)

    def load(self, t_s: float, volume_ul: float) -> None:
        self._integrate_to(t_s)
        self._pump.load(t_s, volume_ul)

    def snapshot(self, t_s: float) -> PumpSnapshot:
        self._integrate_to(t_s)
        return self._pump.snapshot(t_s)

    # ---- faults ----------------------------------------------------------------------------
    def inject_fault(self, t_s: float, kind: FaultKind, magnitude: float = 0.0) -> None:
        """Start a fault at t_s. magnitude 0 = the default size from the params.

        Magnitudes: occlusion kinds -> resistance factor (>= 1); leak -> leak resistance
        kPa·s/µL (> 0); sensor drift -> kPa/h (signed); sensor spikes -> kPa (>= 0); ignored
        for the others. Injecting an active kind again replaces its magnitude.
        """
        kind = FaultKind(kind)
        if kind in SERIAL_FAULTS:
            raise ValueError(f"{kind.value} is a serial fault, handled by the device emulator")
        if not math.isfinite(magnitude):
            raise ValueError(f"fault magnitude must be finite, got {magnitude!r}")
        if kind is not FaultKind.SENSOR_DRIFT and magnitude < 0.0:
            raise ValueError(f"{kind.value} magnitude must be >= 0, got {magnitude!r}")
        self._integrate_to(t_s)
        if kind in SENSOR_FAULTS:
            self._sensor.inject(t_s, kind, magnitude)
            return
        if kind is FaultKind.OCCLUSION:
            size = magnitude or self._params.occlusion_resistance_factor
        elif kind is FaultKind.PARTIAL_OCCLUSION:
            size = magnitude or self._params.partial_occlusion_resistance_factor
        elif kind is FaultKind.LEAK:
            size = magnitude or self._params.leak_resistance_kpa_s_per_ul
        else:  # MOTOR_STALL
            size = 0.0
        if kind in (FaultKind.OCCLUSION, FaultKind.PARTIAL_OCCLUSION) and size < 1.0:
            raise ValueError(f"{kind.value} resistance factor must be >= 1, got {size!r}")
        self._faults[kind] = size
        self._apply_line_faults(t_s)
        self._sync_stall(t_s)
        self._integrate_to(t_s)

    def clear_faults(self, t_s: float) -> None:
        """Back to a healthy bench; also releases a pressure stall (it re-stalls at once if the
        line is still at the stall pressure while the motor pushes)."""
        self._integrate_to(t_s)
        self._faults.clear()
        self._sensor.clear(t_s)
        self._apply_line_faults(t_s)
        self._pressure_stall = False
        self._sync_stall(t_s)
        self._integrate_to(t_s)

    # ---- internals -------------------------------------------------------------------------
    def _apply_line_faults(self, t_s: float) -> None:
        factors = [
            self._faults[k]
            for k in (FaultKind.OCCLUSION, FaultKind.PARTIAL_OCCLUSION)
            if k in self._faults
        ]
        self._line.set_resistance_factor(t_s, max(factors, default=1.0))
        self._line.set_leak(t_s, self._faults.get(FaultKind.LEAK))

    def _sync_stall(self, t_s: float) -> None:
        stalled = FaultKind.MOTOR_STALL in self._faults or self._pressure_stall
        self._pump.set_stalled(t_s, stalled)

    def _integrate_to(self, t_s: float) -> None:
        """Advance pump and line together, piece by piece of constant flow."""
        if not math.isfinite(t_s):
            raise ValueError(f"time must be finite, got {t_s!r}")
        if t_s < self._line.t_s:
            raise ValueError(f"time went backwards: {t_s!r} s < current {self._line.t_s!r} s")
        while True:
            flow = self._pump.flow_ul_per_s()
            t_event = self._pump.next_event_s()
            t_end = t_s if t_event is None else min(t_s, t_event)
            if flow > 0.0:
                t_cross = self._line.first_time_at_or_above(
                    self._params.stall_pressure_kpa, flow, t_end
                )
                if t_cross is not None:
                    self._line.advance(t_cross, flow)
                    self._pump.advance(t_cross)
                    if self._pump.state is PumpRunState.RUNNING:
                        self._pressure_stall = True
                        self._sync_stall(t_cross)
                    continue
            self._line.advance(t_end, flow)
            self._pump.advance(t_end)
            if t_end >= t_s:
                return
