"""Random scenarios for the therapy-engine safety check: a setup and a list of timed events.

Everything is a small frozen dataclass, so a failing scenario prints as Python that can be pasted
into a regression test (``eval`` of its ``repr`` with this module's names rebuilds it). Events
say what an operator, the patient or the hardware does; the runner decides what the engine must
make of it. Times are seconds since the start of the sequence.

Programs name their drug but not their concentration: the runner writes them at the reservoir's
concentration when they are applied, so a scenario stays meaningful when the shrinker removes the
refill before a program.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import yaml

from pump_rig.core.drug_library import Drug, DrugLibrary
from pump_rig.core.program import default_drug_library

__all__ = [
    "PROFILES",
    "WEEKDAYS",
    "BolusSpec",
    "ClearAlarms",
    "ClinicianBolus",
    "DayGroup",
    "DeviceFactor",
    "Event",
    "MotorAlarm",
    "PatientBolus",
    "Profile",
    "ProgramSpec",
    "Refill",
    "Restart",
    "Resume",
    "Scenario",
    "SetProgram",
    "Setup",
    "Suspend",
    "generate",
    "program_text",
]

WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_S: Final = 86400.0
# A realistic ROS time: Tuesday 2023-11-14 22:13:20 UTC (aligned to no midnight).
T0_S: Final = 1_700_000_000.0
# Text defects (the parser must refuse them) and the defects the engine must refuse.
TEXT_DEFECTS: Final = (
    "yaml_tab",
    "yaml_cut",
    "dose_above_max",
    "negative_rate",
    "concentration_out_of_range",
)
ENGINE_DEFECTS: Final = ("wrong_drug", "wrong_concentration", "override_without_reason")


# --- programs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BolusSpec:
    dose_ug: float
    duration_min: float
    lockout_min: float
    max_per_24h: int


@dataclass(frozen=True)
class DayGroup:
    days: tuple[str, ...]  # ("all",) or weekdays
    steps: tuple[tuple[str, float], ...]  # ("HH:MM", dose rate µg/h), the first at 00:00


@dataclass(frozen=True)
class ProgramSpec:
    """A program without its concentration: continuous (``daily_dose_ug``) or flex (``groups``)."""

    name: str
    drug: str
    daily_dose_ug: float = 0.0
    groups: tuple[DayGroup, ...] = ()
    max_daily_dose_ug: float | None = None
    bolus: BolusSpec | None = None
    utc_offset_h: float | None = None
    capacity_ul: float = 40000.0
    volume_ul: float = 30000.0
    low_alarm_ul: float = 2000.0

    def heaviest_day_ug(self) -> float:
        if not self.groups:
            return self.daily_dose_ug
        return max(_day_dose(g.steps) for g in self.groups)

    def peak_rate_ug_per_h(self) -> float:
        if not self.groups:
            return self.daily_dose_ug / 24.0
        return max(rate for g in self.groups for _at, rate in g.steps)


def _day_dose(steps: Sequence[tuple[str, float]]) -> float:
    starts = [_seconds(at) for at, _rate in steps] + [DAY_S]
    return math.fsum(
        rate * (starts[i + 1] - starts[i]) / 3600.0 for i, (_, rate) in enumerate(steps)
    )


def _seconds(at: str) -> float:
    h, m = at.split(":")
    return int(h) * 3600.0 + int(m) * 60.0


def program_text(
    spec: ProgramSpec,
    concentration: float,
    *,
    drug: str | None = None,
    defect: str = "",
    library: DrugLibrary | None = None,
) -> str:
    """The program file for ``spec`` at ``concentration`` (of ``drug``, default the spec's),
    with ``defect`` (one of TEXT_DEFECTS, or "") worked in."""
    lib = library or default_drug_library()
    drug_name = drug or spec.drug
    scale = 1.0
    if defect == "dose_above_max":
        scale = 1.5 * lib.get(drug_name).max_daily_dose_ug / max(spec.heaviest_day_ug(), 1e-9)
    if defect == "concentration_out_of_range":
        concentration = lib.get(drug_name).min_concentration_ug_per_ml / 2.0
    doc: dict[str, object] = {
        "name": spec.name,
        "drug": drug_name,
        "concentration_ug_per_ml": float(concentration),
    }
    if spec.utc_offset_h is not None:
        doc["utc_offset_h"] = float(spec.utc_offset_h)
    if spec.groups:
        doc["mode"] = "flex"
        groups = []
        for g, group in enumerate(spec.groups):
            steps = []
            for s, (at, rate) in enumerate(group.steps):
                value = -1.0 if defect == "negative_rate" and g == s == 0 else rate * scale
                steps.append({"at": at, "dose_rate_ug_per_h": float(value)})
            days: object = "all" if group.days == ("all",) else list(group.days)
            groups.append({"days": days, "steps": steps})
        doc["schedule"] = groups
    else:
        doc["mode"] = "continuous"
        daily = -1.0 if defect == "negative_rate" else spec.daily_dose_ug * scale
        doc["daily_dose_ug"] = float(daily)
    if spec.max_daily_dose_ug is not None and defect != "dose_above_max":
        doc["max_daily_dose_ug"] = float(spec.max_daily_dose_ug)
    if spec.bolus is not None:
        b = spec.bolus
        doc["patient_bolus"] = {
            "dose_ug": float(b.dose_ug),
            "duration_min": float(b.duration_min),
            "lockout_min": float(b.lockout_min),
            "max_per_24h": int(b.max_per_24h),
        }
    doc["reservoir"] = {
        "capacity_ul": float(spec.capacity_ul),
        "volume_ul": float(spec.volume_ul),
        "low_alarm_ul": float(spec.low_alarm_ul),
    }
    # safe_dump quotes "07:30" (YAML 1.1 would read it as a number), as the parser wants.
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    if defect == "yaml_tab":
        text = text.replace("\n  ", "\n\t", 1)
    elif defect == "yaml_cut":
        text = text[: len(text) // 2]  # the reservoir, always last, is lost
    return text


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetProgram:
    at_s: float
    program: ProgramSpec
    override_reason: str = ""  # non-empty: override the titration limit, with this reason
    defect: str = ""  # "", one of TEXT_DEFECTS or ENGINE_DEFECTS


@dataclass(frozen=True)
class PatientBolus:
    at_s: float
    request_id: str = ""


@dataclass(frozen=True)
class ClinicianBolus:
    at_s: float
    kind: str  # clinician | prime | bridge
    dose_ug: float = 0.0
    volume_ul: float = 0.0
    duration_min: float = 0.0


@dataclass(frozen=True)
class Refill:
    """The operator fills ``volume_ul`` of ``drug`` and tells the engine; ``flush``: the line was
    emptied outside the patient first. Done physically only if the engine accepts it."""

    at_s: float
    volume_ul: float
    drug: str
    concentration: float
    bridge: bool = False
    flush: bool = False
    report_withdrawn: bool = True  # the operator reports the residual withdrawn


@dataclass(frozen=True)
class Suspend:
    at_s: float


@dataclass(frozen=True)
class Resume:
    at_s: float


@dataclass(frozen=True)
class MotorAlarm:
    """A critical alarm from the motor driver (raised, or no longer active)."""

    at_s: float
    active: bool = True


@dataclass(frozen=True)
class ClearAlarms:
    at_s: float


@dataclass(frozen=True)
class Restart:
    """The controller restarts: cleanly (close, open) or by a crash (the engine is dropped),
    with ``downtime_s`` without a controller. ``damage`` is done to the journal before the
    reopen: "flip" (one byte at ``where`` of the file), "truncate" (the last line cut at
    ``where`` of its length) or "rollback" (the last ``lost_records`` whole lines removed).
    The operator finds the fault and repairs it ``fault_s`` later."""

    at_s: float
    crash: bool = False
    downtime_s: float = 0.0
    damage: str = ""
    where: float = 0.5
    lost_records: int = 1
    fault_s: float = 0.0


@dataclass(frozen=True)
class DeviceFactor:
    """From now on the device delivers ``factor`` × the commanded rate (0: a stall)."""

    at_s: float
    factor: float


Event = (
    SetProgram
    | PatientBolus
    | ClinicianBolus
    | Refill
    | Suspend
    | Resume
    | MotorAlarm
    | ClearAlarms
    | Restart
    | DeviceFactor
)


@dataclass(frozen=True)
class Setup:
    """Everything about a sequence but its events."""

    days: float
    resolution_ul: float
    # Who tells the engine the resolution: "device" (on_device_resolution), "config"
    # (EngineConfig.device_resolution_ul; the device reports 0 = unknown) or "both".
    resolution_source: str
    latency_s: float  # the command latency, or its maximum when drawn per command
    latency_per_command: bool
    report_s: float  # the controller reports and re-plans this often ...
    jitter: float  # ... ± this fraction
    dead_volume_ul: float
    line_primed: bool
    bucket_s: float
    under_delivery_tolerance_ul: float
    counter_start_steps: int
    concentration: float  # of the first program's drug
    first_program: ProgramSpec
    rng_seed: int = 0  # the runner's own draws (jitter, latency per command)
    t0_s: float = T0_S


@dataclass(frozen=True)
class Scenario:
    setup: Setup
    events: tuple[Event, ...]
    seed: int | None = None  # the seed it was generated from, if any


# --- generation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """How big and busy the generated scenarios are."""

    name: str
    days: tuple[float, float]
    # Sequences with a short report interval are shorter: the engine is called at every report,
    # and about this many reports keep a sequence near 0.2 s.
    reports_per_sequence: float
    fast_report_share: float  # of sequences reporting every 0.5-5 s (else 20-120 s)
    procedures_per_day: float
    latency_max_s: float


PROFILES: Final = {
    "quick": Profile("quick", (0.6, 2.0), 1200.0, 0.08, 16.0, 60.0),
    "standard": Profile("standard", (1.2, 3.0), 2000.0, 0.1, 14.0, 60.0),
    "long": Profile("long", (3.0, 6.0), 5000.0, 0.1, 12.0, 60.0),
}
_IDS: Final = ("", "", "", "a", "b", "c", "d", "e")
_OFFSETS: Final = (0.0, 2.0, -5.0, 5.75, 9.5, -3.5, 13.0)


def generate(
    rng: random.Random, profile: Profile | str = "standard", *, seed: int | None = None
) -> Scenario:
    """A random scenario over every drug of the library, drawn from ``rng``."""
    chosen = PROFILES[profile] if isinstance(profile, str) else profile
    return _Planner(rng, chosen, default_drug_library()).scenario(seed)


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _sig(x: float, digits: int = 3) -> float:
    """``x`` rounded to ``digits`` significant digits (readable numbers in printed scenarios)."""
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


def _sig_up(x: float, digits: int = 4) -> float:
    """``x`` rounded UP to ``digits`` significant digits (a maximum stays above what it caps)."""
    if x <= 0:
        return x
    scale = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return float(f"{math.ceil(x / scale - 1e-9) * scale:.{digits}g}")


def _sig_down(x: float, digits: int = 3) -> float:
    """``x`` rounded DOWN to ``digits`` significant digits (a bolus stays within the room)."""
    if x <= 0:
        return x
    scale = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return float(f"{math.floor(x / scale + 1e-9) * scale:.{digits}g}")


class _Planner:
    """Draws a scenario, keeping the state an operator would expect (drug, concentration, the
    program in force, a rough reservoir account) so that most requests make sense."""

    # Procedures by weight: what an operator, the patient or the hardware does at a time.
    WEIGHTS: Final = {
        "bolus": 5.0,
        "program": 4.0,
        "clinician": 1.5,
        "prime": 0.4,
        "refill": 1.2,
        "concentration": 1.0,
        "drug_change": 1.0,
        "suspend": 0.8,
        "alarm": 0.7,
        "restart": 1.2,
        "crash": 1.2,
        "damage": 0.7,
        "device": 1.0,
        "resume": 0.8,
    }

    def __init__(self, rng: random.Random, profile: Profile, library: DrugLibrary) -> None:
        self.rng = rng
        self.profile = profile
        self.lib = library
        self.events: list[Event] = []
        self.drug = rng.choice(library.names())
        self.conc = self._concentration(self.drug)
        self.program: ProgramSpec | None = None
        self.names = 0
        self.dead_ul = 0.0
        self.reservoir_ul = 0.0
        self.last_t = 0.0

    def scenario(self, seed: int | None) -> Scenario:
        r, p = self.rng, self.profile
        if r.random() < p.fast_report_share:
            report_s = _sig(_log_uniform(r, 0.5, 5.0))
        else:
            report_s = _sig(_log_uniform(r, 20.0, 120.0))
        days = min(r.uniform(*p.days), p.reports_per_sequence * report_s / DAY_S)
        # The engine sums its 24 h window bucket by bucket at every report: small buckets
        # are slow, so they get short sequences.
        bucket_s = r.choices((60.0, 300.0, 600.0, 900.0, 1800.0), weights=(1, 3, 3, 3, 2))[0]
        if bucket_s < 300.0:
            days = min(days, 0.6)
        days = _sig(max(days, 0.02))
        self.dead_ul = _sig(r.uniform(20.0, 500.0))
        first = self._spec(self.drug, self.conc, "valid")
        self.program = first
        self.reservoir_ul = first.volume_ul
        latency = 0.0 if r.random() < 0.25 else _sig(r.uniform(0.0, p.latency_max_s))
        setup = Setup(
            days=days,
            resolution_ul=_sig(_log_uniform(r, 0.001, 0.5), 2),
            resolution_source=r.choice(("device", "config", "both")),
            latency_s=latency,
            latency_per_command=r.random() < 0.4,
            report_s=report_s,
            jitter=r.choice((0.0, 0.1, 0.3)),
            dead_volume_ul=self.dead_ul,
            line_primed=r.random() < 0.7,
            bucket_s=bucket_s,
            under_delivery_tolerance_ul=r.choice((2.0, 0.5)),
            counter_start_steps=r.choice((0, r.randrange(1, 100000))),
            concentration=self.conc,
            first_program=first,
            rng_seed=r.randrange(2**31),
        )
        end = days * DAY_S
        t = r.expovariate(p.procedures_per_day / DAY_S)
        while t < end * 0.98:
            self._top_up_if_low(t)
            kinds = list(self.WEIGHTS)
            kind = r.choices(kinds, weights=[self.WEIGHTS[k] for k in kinds])[0]
            getattr(self, f"_do_{kind}")(_sig(t, 6))
            t += r.expovariate(p.procedures_per_day / DAY_S)
        events = tuple(sorted(self.events, key=lambda e: e.at_s))
        return Scenario(setup, events, seed)

    # --- the operator's bookkeeping

    def _daily_ul(self) -> float:
        program = self.program
        if program is None:
            return 0.0
        dose = program.heaviest_day_ug()
        if program.bolus is not None:
            dose += program.bolus.dose_ug * program.bolus.max_per_24h / 2
        return dose / self.conc * 1000.0

    def _top_up_if_low(self, t: float) -> None:
        self.reservoir_ul -= self._daily_ul() * (t - self.last_t) / DAY_S
        self.last_t = t
        capacity = self.program.capacity_ul if self.program else 40000.0
        if self.reservoir_ul < 0.3 * capacity:
            volume = _sig(capacity * self.rng.uniform(0.7, 1.0))
            self.events.append(Refill(max(0.0, t - 60.0), volume, self.drug, self.conc))
            self.reservoir_ul = volume

    def _concentration(self, drug_name: str, *, other_than: float | None = None) -> float:
        drug = self.lib.get(drug_name)
        lo, hi = drug.min_concentration_ug_per_ml, drug.max_concentration_ug_per_ml
        for _ in range(10):
            pick = self.rng.choice((lo, hi, math.sqrt(lo * hi), _log_uniform(self.rng, lo, hi)))
            conc = min(hi, max(lo, _sig(pick)))
            if conc != other_than:
                return conc
        return hi if other_than != hi else lo

    # --- programs

    def _spec(self, drug_name: str, conc: float, variant: str) -> ProgramSpec:
        """variant: valid | titration_jump | override (a rise above the titration limit)."""
        r = self.rng
        drug = self.lib.get(drug_name)
        top = drug.max_daily_dose_ug
        # Keep the basal at most 600 µL/h: boluses still fit under the device's 1000 µL/h.
        rate_cap = 0.6 * conc * 24.0
        current = self.program if self.program and self.program.drug == drug_name else None
        if current is None:
            target = r.uniform(0.1, 0.85) * top
        else:
            old = current.heaviest_day_ug()
            allowed = drug.titration.max_increase_ug(old)
            jump_from = old + 1.3 * allowed + 0.01 * top
            if variant != "valid" and jump_from < 0.9 * top:
                target = r.uniform(jump_from, 0.9 * top)
            else:
                target = r.uniform(0.5 * old, min(0.9 * top, old + 0.95 * allowed))
        target = _sig(max(min(target, rate_cap), 1e-3 * top), 4)
        groups: tuple[DayGroup, ...] = ()
        daily = target
        if r.random() < 0.6:
            groups = self._groups(target, min(rate_cap, 24.0 * 0.6 * conc) / 24.0)
            daily = 0.0
        self.names += 1
        spec = ProgramSpec(
            name=f"p{self.names}",
            drug=drug_name,
            daily_dose_ug=daily,
            groups=groups,
            utc_offset_h=r.choice(_OFFSETS) if r.random() < 0.35 else None,
            volume_ul=_sig(r.uniform(0.5, 0.95) * 40000.0),
        )
        return self._with_bolus_and_maximum(spec, drug, conc)

    def _groups(self, heaviest_ug: float, peak_cap_ug_per_h: float) -> tuple[DayGroup, ...]:
        r = self.rng
        n = r.randint(1, 3)
        owner = [r.randrange(n) for _ in WEEKDAYS]
        raw: list[tuple[tuple[str, ...], list[tuple[str, float]]]] = []
        for g in range(n):
            days = tuple(d for d, o in zip(WEEKDAYS, owner, strict=True) if o == g)
            if not days:
                continue
            quarters = sorted(r.sample(range(1, 96), r.randint(0, 3)))
            steps = [
                (f"{q // 4:02d}:{q % 4 * 15:02d}", r.uniform(0.2, 2.0)) for q in [0, *quarters]
            ]
            raw.append((("all",) if len(days) == 7 else days, steps))
        heaviest = max(_day_dose(steps) for _days, steps in raw)
        scale = heaviest_ug / heaviest
        peak = max(w for _days, steps in raw for _at, w in steps) * scale
        if peak > peak_cap_ug_per_h:
            scale *= peak_cap_ug_per_h / peak
        return tuple(
            DayGroup(days, tuple((at, _sig(w * scale, 4)) for at, w in steps))
            for days, steps in raw
        )

    def _with_bolus_and_maximum(self, spec: ProgramSpec, drug: Drug, conc: float) -> ProgramSpec:
        r = self.rng
        top = drug.max_daily_dose_ug
        basal = spec.heaviest_day_ug()
        bolus = None
        if r.random() < 0.6 and top - basal > 0.01 * top:
            n = r.randint(1, 6)
            dose = _sig_down(r.uniform(0.2, 1.0) * min((top - basal) / n, 0.15 * top))
            peak_ul_h = spec.peak_rate_ug_per_h() / conc * 1000.0
            shortest_h = dose / conc * 1000.0 / max(1.0, 900.0 - peak_ul_h)
            duration = max(_sig(r.uniform(5.0, 60.0), 2), math.ceil(shortest_h * 60.0) + 1.0)
            lockout = duration + r.choice((0.0, 10.0, 30.0, 60.0, 120.0, 240.0))
            bolus = BolusSpec(dose, duration, lockout, n)
        planned = basal + (bolus.dose_ug * bolus.max_per_24h if bolus else 0.0)
        maximum = None
        if r.random() < 0.5:
            maximum = min(top, _sig_up(planned * r.uniform(1.0, 1.06)))
            if maximum < planned:
                maximum = None
        return ProgramSpec(
            name=spec.name,
            drug=spec.drug,
            daily_dose_ug=spec.daily_dose_ug,
            groups=spec.groups,
            max_daily_dose_ug=maximum,
            bolus=bolus,
            utc_offset_h=spec.utc_offset_h,
            capacity_ul=spec.capacity_ul,
            volume_ul=spec.volume_ul,
            low_alarm_ul=spec.low_alarm_ul,
        )

    def _limit(self) -> float:
        drug = self.lib.get(self.drug)
        program = self.program
        if program is not None and program.max_daily_dose_ug is not None:
            return min(program.max_daily_dose_ug, drug.max_daily_dose_ug)
        return drug.max_daily_dose_ug

    # --- procedures

    def _do_bolus(self, t: float) -> None:
        r = self.rng
        at = t
        rid = r.choice(_IDS)
        for _ in range(r.randint(1, 6)):
            self.events.append(PatientBolus(_sig(at, 7), rid))
            at += r.uniform(0.0, 5.0)
            if r.random() < 0.6:
                rid = r.choice(_IDS)
        if r.random() < 0.12:  # the controller dies during the bolus
            downtime = r.choice((0.0, _sig(r.uniform(1.0, 120.0))))
            self.events.append(Restart(_sig(at + r.uniform(1.0, 600.0), 7), True, downtime))

    def _do_program(self, t: float) -> None:
        r = self.rng
        roll = r.random()
        if roll < 0.5:
            self.program = self._spec(self.drug, self.conc, "valid")
            self.events.append(SetProgram(t, self.program))
        elif roll < 0.6:
            self.events.append(SetProgram(t, self._spec(self.drug, self.conc, "titration_jump")))
        elif roll < 0.7:
            self.program = self._spec(self.drug, self.conc, "override")
            self.events.append(SetProgram(t, self.program, "bench: titration override"))
        elif roll < 0.85:
            spec = self._spec(self.drug, self.conc, "valid")
            self.events.append(SetProgram(t, spec, defect=r.choice(TEXT_DEFECTS)))
        else:
            defect = r.choice(ENGINE_DEFECTS)
            variant = "titration_jump" if defect == "override_without_reason" else "valid"
            self.events.append(SetProgram(t, self._spec(self.drug, self.conc, variant), "", defect))

    def _do_clinician(self, t: float) -> None:
        r = self.rng
        dose = _sig(r.uniform(0.02, 0.4) * self._limit())
        self.events.append(
            ClinicianBolus(t, "clinician", dose_ug=dose, duration_min=_sig(r.uniform(10, 120), 2))
        )

    def _do_prime(self, t: float) -> None:
        r = self.rng
        volume = _sig(r.uniform(1.0, 50.0))
        self.events.append(
            ClinicianBolus(t, "prime", volume_ul=volume, duration_min=_sig(r.uniform(5, 30), 2))
        )

    def _capacity(self) -> float:
        return self.program.capacity_ul if self.program else 40000.0

    def _do_refill(self, t: float) -> None:
        volume = _sig(self._capacity() * self.rng.uniform(0.6, 1.0))
        self.events.append(Refill(t, volume, self.drug, self.conc))
        self.reservoir_ul = volume

    def _do_concentration(self, t: float) -> None:
        r = self.rng
        self.conc = self._concentration(self.drug, other_than=self.conc)
        bridge = r.random() < 0.5
        volume = _sig(self._capacity() * r.uniform(0.6, 1.0))
        self.events.append(Refill(t, volume, self.drug, self.conc, bridge=bridge))
        self.reservoir_ul = volume
        if not bridge and r.random() < 0.3:
            self.events.append(ClinicianBolus(_sig(t + r.uniform(60.0, 3600.0), 7), "bridge"))

    def _do_drug_change(self, t: float) -> None:
        r = self.rng
        drug = r.choice([d for d in self.lib.names() if d != self.drug])
        conc = self._concentration(drug)
        how = r.choices(("flush", "bridge", "neither"), weights=(0.45, 0.35, 0.2))[0]
        volume = _sig(self._capacity() * r.uniform(0.6, 1.0))
        self.events.append(Suspend(t))
        refill = Refill(t + 5.0, volume, drug, conc, bridge=how == "bridge", flush=how == "flush")
        self.events.append(refill)
        if how != "neither":  # (refused without either: the old therapy goes on)
            self.drug, self.conc, self.program = drug, conc, None
            self.program = self._spec(drug, conc, "valid")
            self.reservoir_ul = volume
            self.events.append(SetProgram(t + 10.0, self.program))
        self.events.append(Resume(t + 15.0))
        if how == "flush":
            prime = _sig(self.dead_ul * r.uniform(1.05, 1.5))
            minutes = _sig(r.uniform(10.0, 60.0), 2)
            self.events.append(
                ClinicianBolus(t + 20.0, "prime", volume_ul=prime, duration_min=minutes)
            )

    def _do_suspend(self, t: float) -> None:
        self.events.append(Suspend(t))
        self.events.append(Resume(_sig(t + self.rng.uniform(60.0, 4 * 3600.0), 7)))

    def _do_alarm(self, t: float) -> None:
        r = self.rng
        self.events.append(MotorAlarm(t, True))
        gone = t + r.uniform(5.0, 600.0)
        if r.random() < 0.5:
            self.events.append(MotorAlarm(_sig(gone, 7), False))
        cleared = gone + r.uniform(5.0, 1800.0)
        self.events.append(ClearAlarms(_sig(cleared, 7)))
        self.events.append(Resume(_sig(cleared + 5.0, 7)))

    def _do_restart(self, t: float) -> None:
        self.events.append(Restart(t))

    def _do_crash(self, t: float) -> None:
        r = self.rng
        downtime = r.choice((0.0, 0.0, _sig(r.uniform(1.0, 300.0)), _sig(r.uniform(300.0, 3600.0))))
        self.events.append(Restart(t, True, downtime))

    def _do_damage(self, t: float) -> None:
        r = self.rng
        damage = r.choice(("flip", "truncate", "rollback", "rollback"))
        lost = r.randint(1, 4) if r.random() < 0.6 else r.randint(5, 40)
        self.events.append(
            Restart(
                t,
                crash=r.random() < 0.5,
                downtime_s=r.choice((0.0, _sig(r.uniform(1.0, 600.0)))),
                damage=damage,
                where=_sig(r.uniform(0.02, 0.98), 2),
                lost_records=lost,
                fault_s=r.choice((0.0, _sig(r.uniform(1.0, 1800.0)))),
            )
        )

    def _do_device(self, t: float) -> None:
        r = self.rng
        factor = r.choice((0.0, _sig(r.uniform(0.3, 0.85), 2), _sig(r.uniform(0.91, 0.99), 2)))
        self.events.append(DeviceFactor(t, factor))
        self.events.append(DeviceFactor(_sig(t + r.uniform(5.0, 180.0) * 60.0, 7), 1.0))

    def _do_resume(self, t: float) -> None:
        self.events.append(ClearAlarms(t))
        self.events.append(Resume(t + 2.0))
