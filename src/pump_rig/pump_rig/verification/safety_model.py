"""The randomized safety check's own models: the device, the catheter line and the 24 h oracle.

None of this uses the engine's models (CatheterLine, DoseLedger, SyringePump): the check judges
the engine by what these say the patient truly received. Times are seconds since the start of a
sequence (small numbers keep the event times exact); volumes are µL, doses µg.

* :class:`DeviceModel`: a pump that moves in whole steps, behind a command link with latency and
  a stale-command watchdog, integrated exactly between events.
* :class:`LineModel`: the fluid in the line from pump outlet to catheter tip, by "entered volume":
  what leaves the tip when the pump has pushed V in total entered the line at V − dead volume.
* :class:`WindowOracle`: per drug, the exact maximum of the true rolling 24 h dose against the
  daily limit in force, over every moment that drug was being delivered.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Final

__all__ = [
    "DAY_S",
    "SALINE",
    "DeviceCommand",
    "DeviceModel",
    "Excess",
    "Fluid",
    "LimitSchedule",
    "LineModel",
    "Motion",
    "WindowOracle",
    "WindowReport",
]

DAY_S: Final = 86400.0
UL_PER_ML: Final = 1000.0
# A position this close to a whole step (in steps) is that step: times are exact to ~1e-10 s.
_STEP_EPS: Final = 1e-6


# --- the device ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceCommand:
    """What reaches the device: infuse at a rate, within a volume budget, or stop.

    ``volume_limit_ul`` counts from when the device applies the command; ``stop_at_ul`` is an
    absolute value of the device's own counter (0 = none for both). ``serial`` identifies the
    command for the harness."""

    infuse: bool
    rate_ul_per_h: float = 0.0
    volume_limit_ul: float = 0.0
    stop_at_ul: float = 0.0
    serial: int = 0


@dataclass(frozen=True)
class Motion:
    """The plunger moved from ``p0_ul`` to ``p1_ul`` (cumulative pushed volume) at a constant
    speed between ``t0_s`` and ``t1_s``."""

    t0_s: float
    t1_s: float
    p0_ul: float
    p1_ul: float


class DeviceModel:
    """A quantised pump: it moves in whole steps of ``resolution_ul`` and reports whole steps.

    Commands reach it in order, each at the arrival time the sender chose (``send``). Applying
    INFUSE sets a budget of whole steps from the counter at that moment: ``volume_limit_ul`` if
    set and, if ``stop_at_ul`` is set, at most ``stop_at_ul`` less the counter (nothing left: it
    does not start). It stops after the step that reaches or passes the budget, so it may go up
    to one step past it (the worst case of rounding). It delivers ``rate × factor`` (an
    under-delivering or stalled pump still "runs"), stops where the reservoir ends, and stops by
    itself when nothing reached it for ``watchdog_s`` (a controller that died); then only a new
    command starts it again.
    """

    def __init__(
        self, *, resolution_ul: float, counter_steps: int, watchdog_s: float, t_s: float = 0.0
    ) -> None:
        if not resolution_ul > 0:
            raise ValueError("resolution_ul must be > 0")
        self.resolution_ul = resolution_ul
        self.watchdog_s = watchdog_s
        self.factor = 1.0
        self.running = False  # runs an INFUSE command (a stalled pump runs without moving)
        self.stale = False  # stopped by its watchdog
        self.command: DeviceCommand | None = None  # the last applied
        self.applied_t_s = t_s
        self.applied_counter_ul = 0.0
        # What the running command's budget was, and what was delivered between the counter
        # its sender knew and its arrival: the harness tags delivery with them (the runner).
        self.budget_steps = math.inf
        self.latency_steps = 0.0
        self._steps = float(counter_steps)  # plunger position in steps (fractional while moving)
        self._target = math.inf  # the step count the current run stops at
        self._end = math.inf  # the step count at which the reservoir is empty
        self._queue: deque[tuple[float, DeviceCommand, float]] = deque()  # arrival, cmd, known
        self._heard: deque[float] = deque()  # arrival time of everything sent, heartbeats too
        self._last_arrival = t_s
        self._last_heard = t_s

    # --- state

    @property
    def position_ul(self) -> float:
        """The volume truly pushed (the plunger may be part way through a step)."""
        return self._steps * self.resolution_ul

    @property
    def counter_ul(self) -> float:
        """What the device reports: whole steps."""
        return math.floor(self._steps + _STEP_EPS) * self.resolution_ul

    @property
    def speed_ul_per_s(self) -> float:
        if not self.running or self._steps >= self._end - _STEP_EPS:
            return 0.0
        assert self.command is not None
        return self.command.rate_ul_per_h * self.factor / 3600.0

    @property
    def pending(self) -> int:
        """Commands sent and not yet arrived."""
        return len(self._queue)

    # --- the link

    def send(
        self,
        t_s: float,
        command: DeviceCommand | None,
        latency_s: float,
        *,
        known_ul: float | None = None,
    ) -> float:
        """Send ``command`` (None = a heartbeat) at ``t_s``; it arrives ``latency_s`` later, but
        never before what was sent earlier. ``known_ul``: the counter the sender knew when it
        made the command (default: the true position). Returns the arrival time."""
        arrival = max(self._last_arrival, t_s + max(0.0, latency_s))
        self._last_arrival = arrival
        self._heard.append(arrival)
        if command is not None:
            known = self._steps if known_ul is None else known_ul / self.resolution_ul
            self._queue.append((arrival, command, known))
        return arrival

    def watchdog_deadline(self) -> float:
        # A heartbeat already in flight will arrive whatever happens: follow the chain of
        # arrivals to the first gap longer than the timeout.
        while self._heard and self._heard[0] <= self._last_heard + self.watchdog_s:
            self._last_heard = max(self._last_heard, self._heard.popleft())
        return self._last_heard + self.watchdog_s

    # --- physics

    def set_factor(self, factor: float) -> None:
        """Delivered / commanded from now on (call at a time the device was advanced to)."""
        self.factor = max(0.0, factor)

    def set_reservoir(self, volume_ul: float) -> None:
        """The reservoir holds ``volume_ul`` from the current position on."""
        self._end = self._steps + max(0.0, volume_ul) / self.resolution_ul

    def budget_left_ul(self) -> float:
        """What the running command still asks the device to push (inf: no budget)."""
        if not self.running:
            return 0.0
        return max(0.0, self._target - self._steps) * self.resolution_ul

    def reservoir_left_ul(self) -> float:
        return max(0.0, self._end - self._steps) * self.resolution_ul

    def next_event_s(self, t_s: float) -> float:
        """The next time the device changes by itself: a command arrives, a run ends, or the
        watchdog stops it."""
        times = [math.inf]
        if self._queue:
            times.append(self._queue[0][0])
        speed = self.speed_ul_per_s
        if speed > 0:
            stop = min(self._target, self._end)
            times.append(t_s + max(0.0, stop - self._steps) * self.resolution_ul / speed)
        if self.running:
            times.append(self.watchdog_deadline())
        return min(times)

    def advance(self, t0_s: float, t1_s: float) -> Motion | None:
        """Move from ``t0_s`` to ``t1_s``; nothing may happen in between (see next_event_s)."""
        speed = self.speed_ul_per_s
        if t1_s <= t0_s or speed <= 0:
            return None
        p0 = self._steps
        stop = min(self._target, self._end)
        new = p0 + speed * (t1_s - t0_s) / self.resolution_ul
        if new >= stop - _STEP_EPS:
            new = stop
        self._steps = new
        if new <= p0:
            return None
        return Motion(t0_s, t1_s, p0 * self.resolution_ul, new * self.resolution_ul)

    def settle(self, t_s: float) -> bool:
        """Apply what is due at ``t_s``; True if the device stopped by itself (a finished
        budget or the watchdog): a driver would publish that at once."""
        stopped = False
        if self.running and self._steps >= self._target - _STEP_EPS:
            self._steps = max(self._steps, self._target)
            self._halt()
            stopped = True
        # What arrived by now was heard (also after a gap the watchdog already stopped it for).
        while self._heard and self._heard[0] <= t_s:
            self._last_heard = max(self._last_heard, self._heard.popleft())
        while self._queue and self._queue[0][0] <= t_s:
            _arrival, command, known_steps = self._queue.popleft()
            self._apply(t_s, command, known_steps)
        if self.running and self.watchdog_deadline() <= t_s:
            self._halt()
            self.stale = True
            stopped = True
        return stopped

    def _halt(self) -> None:
        self.running = False
        self._target = math.inf

    def _apply(self, t_s: float, command: DeviceCommand, known_steps: float) -> None:
        self.stale = False
        self.command = command
        self.applied_t_s = t_s
        counter_steps = math.floor(self._steps + _STEP_EPS)
        self.applied_counter_ul = counter_steps * self.resolution_ul
        self.latency_steps = self._steps - known_steps
        if not command.infuse or command.rate_ul_per_h <= 0:
            self._halt()
            return
        budget = math.inf
        if command.volume_limit_ul > 0:
            budget = command.volume_limit_ul
        if command.stop_at_ul > 0:
            room = command.stop_at_ul - self.applied_counter_ul
            if room <= 1e-9 * self.resolution_ul:
                self._halt()  # already there: it does not start
                return
            budget = min(budget, room)
        steps = math.inf
        if math.isfinite(budget):
            steps = max(1, math.ceil(budget / self.resolution_ul - 1e-9))
        self.budget_steps = steps
        self._target = counter_steps + steps
        self.running = True


# --- the line -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fluid:
    drug: str  # "" for saline
    concentration_ug_per_ml: float

    @property
    def is_drug(self) -> bool:
        return bool(self.drug) and self.concentration_ug_per_ml > 0


SALINE: Final = Fluid("", 0.0)


class LineModel:
    """The fluid from the pump outlet to the catheter tip, as intervals of "entered volume".

    Fluid entered at E leaves the tip when the pump has pushed E + dead volume in total. The
    initial content, every fill (new fluid enters from the position of the fill on) and every
    flush (what is in the line at that moment becomes saline, outside the patient) are
    intervals; what leaves the tip between any two positions is then exact.
    """

    def __init__(
        self, dead_volume_ul: float, *, content: Fluid, entering: Fluid, pushed_ul: float
    ) -> None:
        self.dead_volume_ul = dead_volume_ul
        self._starts: list[float] = [pushed_ul - dead_volume_ul]
        self._fluids: list[Fluid] = [content]
        self._append(pushed_ul, entering)

    @property
    def entering(self) -> Fluid:
        return self._fluids[-1]

    def fill(self, pushed_ul: float, fluid: Fluid) -> None:
        """From ``pushed_ul`` on, ``fluid`` enters the line (a refill of the reservoir)."""
        self._append(pushed_ul, fluid)

    def flush(self, pushed_ul: float) -> None:
        """The line was emptied outside the patient and now holds saline end to end."""
        entering = self.entering
        low = pushed_ul - self.dead_volume_ul
        cut = bisect.bisect_left(self._starts, low)
        del self._starts[cut:], self._fluids[cut:]
        self._starts.append(low)
        self._fluids.append(SALINE)
        self._append(pushed_ul, entering)

    def pieces(self, p0_ul: float, p1_ul: float) -> Iterator[tuple[float, float, Fluid]]:
        """(from, to, fluid) leaving the tip while the pushed total goes from p0 to p1."""
        dead = self.dead_volume_ul
        for lo, top, fluid in self._entered(p0_ul - dead, p1_ul - dead):
            yield lo + dead, top + dead, fluid

    def _entered(self, e0: float, e1: float) -> Iterator[tuple[float, float, Fluid]]:
        """(from, to, fluid) of what entered the line between entered volumes e0 and e1."""
        i = max(0, bisect.bisect_right(self._starts, e0) - 1)
        n = len(self._starts)
        while i < n and self._starts[i] < e1:
            hi = self._starts[i + 1] if i + 1 < n else math.inf
            lo, top = max(e0, self._starts[i]), min(e1, hi)
            if top > lo:
                yield lo, top, self._fluids[i]
            i += 1

    def dose_by_drug_ug(self, p0_ul: float, p1_ul: float) -> dict[str, float]:
        doses: dict[str, float] = {}
        for lo, hi, fluid in self.pieces(p0_ul, p1_ul):
            if fluid.is_drug:
                dose = (hi - lo) * fluid.concentration_ug_per_ml / UL_PER_ML
                doses[fluid.drug] = doses.get(fluid.drug, 0.0) + dose
        return doses

    def tip_fluid(self, pushed_ul: float) -> Fluid:
        """The fluid at the tip (about to leave) when the pushed total is ``pushed_ul``."""
        i = bisect.bisect_right(self._starts, pushed_ul - self.dead_volume_ul) - 1
        return self._fluids[max(0, i)]

    def drugs_in_line(self, pushed_ul: float) -> set[str]:
        """The drugs in the line (between outlet and tip) at ``pushed_ul``: what entered it
        in the last dead volume pushed (taken as entered volumes, not as a round trip through
        the pushed total, which rounding can stretch into the fluid that enters next)."""
        entered = self._entered(pushed_ul - self.dead_volume_ul, pushed_ul)
        return {f.drug for _lo, _hi, f in entered if f.is_drug}

    def _append(self, at: float, fluid: Fluid) -> None:
        if at < self._starts[-1]:
            raise ValueError("the pushed volume went back")
        if at == self._starts[-1]:
            self._fluids[-1] = fluid
            if len(self._fluids) > 1 and self._fluids[-2] == fluid:
                del self._starts[-1], self._fluids[-1]
        elif self._fluids[-1] != fluid:
            self._starts.append(at)
            self._fluids.append(fluid)


# --- limits and the window oracle ---------------------------------------------------------------


_TIME_EPS_S: Final = 1e-6


class LimitSchedule:
    """Per drug, the daily limit in force from each time on (a drug never set: its default)."""

    def __init__(self, defaults: Mapping[str, float]) -> None:
        self._defaults = dict(defaults)
        self._times: dict[str, list[float]] = {}
        self._limits: dict[str, list[float]] = {}

    def set(self, drug: str, t_s: float, limit_ug: float) -> None:
        times = self._times.setdefault(drug, [])
        limits = self._limits.setdefault(drug, [])
        k = bisect.bisect_right(times, t_s)
        # A later setting at the same or an earlier time replaces what followed it.
        del times[k:], limits[k:]
        times.append(t_s)
        limits.append(limit_ug)

    def at(self, drug: str, t_s: float) -> float:
        """The limit in force just after ``t_s``."""
        times = self._times.get(drug, [])
        k = bisect.bisect_right(times, t_s)
        return self._limits[drug][k - 1] if k else self._defaults[drug]

    def changes(self, drug: str, t0_s: float, t1_s: float) -> list[float]:
        times = self._times.get(drug, [])
        return times[bisect.bisect_right(times, t0_s) : bisect.bisect_left(times, t1_s)]


@dataclass(frozen=True)
class Excess:
    """The true 24 h dose of ``drug`` passed its limit (and the slack) while it was delivered."""

    t_s: float
    drug: str
    window_ug: float
    limit_ug: float
    slack_ug: float
    tag: int  # the harness's tag of the delivery (see the runner)
    peak_ratio: float  # the worst window / limit of the run of delivery this excess starts


@dataclass
class WindowReport:
    max_fraction: float = 0.0  # the largest true window / limit in force, no slack
    max_fraction_t_s: float = 0.0
    max_fraction_drug: str = ""
    excesses: list[Excess] = field(default_factory=list)
    # Above limit × (1 + rel) but within the slack of one device step.
    within_slack: int = 0  # pieces of delivery


@dataclass
class _Doses:
    """One drug's delivery: pieces of constant dose rate, in time order."""

    t0: list[float] = field(default_factory=list)
    t1: list[float] = field(default_factory=list)
    dose: list[float] = field(default_factory=list)
    conc: list[float] = field(default_factory=list)
    tag: list[int] = field(default_factory=list)

    def add(self, t0: float, t1: float, dose: float, conc: float, tag: int) -> None:
        if self.t1 and self.t1[-1] == t0 and self.conc[-1] == conc and self.tag[-1] == tag:
            span = self.t1[-1] - self.t0[-1]
            if math.isclose(self.dose[-1] / span, dose / (t1 - t0), rel_tol=1e-12):
                self.t1[-1] = t1  # the same rate goes on: one piece
                self.dose[-1] += dose
                return
        self.t0.append(t0)
        self.t1.append(t1)
        self.dose.append(dose)
        self.conc.append(conc)
        self.tag.append(tag)


class _Cumulative:
    """D(t): the cumulative dose of one drug, exact (piecewise linear)."""

    def __init__(self, doses: _Doses) -> None:
        self.d = doses
        self.before: list[float] = []
        total = 0.0
        for dose in doses.dose:
            self.before.append(total)
            total += dose
        self.breaks = sorted({*doses.t0, *doses.t1})

    def at(self, t: float) -> float:
        d = self.d
        i = bisect.bisect_right(d.t0, t) - 1
        if i < 0:
            return 0.0
        span = d.t1[i] - d.t0[i]
        part = min(1.0, max(0.0, (t - d.t0[i]) / span)) if span > 0 else 1.0
        return self.before[i] + d.dose[i] * part

    def window(self, t: float) -> float:
        return self.at(t) - self.at(t - DAY_S)


class WindowOracle:
    """The exact rolling 24 h dose per drug, from what the device pushed through the line.

    Per drug the true cumulative dose D(t) is piecewise linear, so W(t) = D(t) − D(t − 24 h) is
    too, with its breakpoints at D's and at D's shifted by 24 h. Over every piece in which the
    drug was delivered, W / limit is evaluated at both ends of each sub-interval between those
    breakpoints and the limit changes: the maximum found is exact.

    A violation (:class:`Excess`) is delivery while W > limit × (1 + ``rel_tol``) + slack, the
    slack being ``slack_steps`` device steps of the fluid then at the tip (default one step: a
    counter that reports whole steps can hide up to a step of what was pushed). The maximum
    fraction is reported without any slack.
    """

    def __init__(self, resolution_ul: float, *, rel_tol: float = 1e-9, slack_steps: float = 1.0):
        self.resolution_ul = resolution_ul
        self.rel_tol = rel_tol
        self.slack_steps = slack_steps
        self._doses: dict[str, _Doses] = {}

    def add(self, motion: Motion, line: LineModel, tag: int = 0) -> None:
        """What ``motion`` pushed out of the tip (call before the line changes again)."""
        span_ul = motion.p1_ul - motion.p0_ul
        if span_ul <= 0:
            return
        dt = motion.t1_s - motion.t0_s
        for lo, hi, fluid in line.pieces(motion.p0_ul, motion.p1_ul):
            if not fluid.is_drug:
                continue
            t0 = motion.t0_s + (lo - motion.p0_ul) / span_ul * dt
            t1 = motion.t0_s + (hi - motion.p0_ul) / span_ul * dt
            if t1 <= t0:
                continue
            dose = (hi - lo) * fluid.concentration_ug_per_ml / UL_PER_ML
            self.add_dose(fluid.drug, t0, t1, dose, fluid.concentration_ug_per_ml, tag)

    def add_dose(self, drug: str, t0: float, t1: float, dose: float, conc: float, tag: int) -> None:
        """Delivery of ``dose`` of ``drug`` at a constant rate over [t0, t1] (time order)."""
        self._doses.setdefault(drug, _Doses()).add(t0, t1, dose, conc, tag)

    def delivered_ug(self, drug: str) -> float:
        doses = self._doses.get(drug)
        return math.fsum(doses.dose) if doses else 0.0

    def report(self, limits: LimitSchedule) -> WindowReport:
        report = WindowReport()
        for drug in sorted(self._doses):
            self._judge(drug, limits, report)
        report.excesses.sort(key=lambda e: e.t_s)
        return report

    def _judge(self, drug: str, limits: LimitSchedule, report: WindowReport) -> None:
        d = self._doses[drug]
        cum = _Cumulative(d)
        breaks = cum.breaks
        open_excess: Excess | None = None
        last_end = -math.inf
        for i in range(len(d.t0)):
            a, b = d.t0[i], d.t1[i]
            k0 = bisect.bisect_right(breaks, a - DAY_S)
            k1 = bisect.bisect_left(breaks, b - DAY_S)
            shifted = (x + DAY_S for x in breaks[k0:k1])
            # A limit change a rounding error before the end of a piece is at its end (the
            # piece was delivered under the old one), one a rounding error after its start is
            # at its start (under the new one): their times come from different sums, a
            # piece's start from interpolating along the line.
            changes = [
                c for c in limits.changes(drug, a, b) if a + _TIME_EPS_S < c < b - _TIME_EPS_S
            ]
            times = sorted({a, b, *shifted, *changes})
            slack = self.slack_steps * self.resolution_ul * d.conc[i] / UL_PER_ML
            windows = [cum.window(t) for t in times]
            first: tuple[float, float, float] | None = None
            peak, within = 0.0, False
            for j in range(len(times) - 1):
                middle = 0.5 * (times[j] + times[j + 1])
                limit = limits.at(drug, min(max(middle, a + _TIME_EPS_S), b - _TIME_EPS_S))
                over = limit * (1.0 + self.rel_tol) + slack
                for t, w in ((times[j], windows[j]), (times[j + 1], windows[j + 1])):
                    fraction = w / limit
                    if fraction > report.max_fraction:
                        report.max_fraction = fraction
                        report.max_fraction_t_s = t
                        report.max_fraction_drug = drug
                    if w > over:
                        peak = max(peak, fraction)
                    elif w > limit * (1.0 + self.rel_tol):
                        within = True
                if first is None and max(windows[j], windows[j + 1]) > over:
                    # W is linear here: the first moment it passed the limit, exactly.
                    w0, w1 = windows[j], windows[j + 1]
                    t = times[j]
                    if w0 <= over:
                        t += (over - w0) / (w1 - w0) * (times[j + 1] - times[j])
                    first = (t, max(w0, over), limit)
            if first is None:
                report.within_slack += within
                continue
            if open_excess is not None and last_end == a:
                # The same run of delivery goes on over the limit: one excess, its peak kept.
                worst = max(open_excess.peak_ratio, peak)
                report.excesses[-1] = open_excess = replace(open_excess, peak_ratio=worst)
            else:
                t, w, limit = first
                open_excess = Excess(t, drug, w, limit, slack, d.tag[i], peak)
                report.excesses.append(open_excess)
            last_end = b
