"""Simulated time for accelerated runs: sim = start + speed × (wall elapsed), slowed around events.

Integrate between events instead of ticking blindly: an accelerated run publishes the clock in
jumps (``speed`` × the update period, e.g. 1000 s of simulated time per 20 ms at ×50 000), and
a node reacting to an event lands one jump plus its wall latency × ``speed`` late. So the
clock can be told when things are due (:meth:`SimClock.slow_at`); the mapping from wall to
simulated time is then piecewise linear:

* at full ``speed`` up to an event time, which the clock never jumps over: the first reading
  at or after it returns the event time exactly, and the clock restarts from there at that
  reading (the wall time between the crossing and the reading is dropped);
* at ``event_speed`` for ``event_window_s`` of simulated time from the event (wall cost
  ``event_window_s / event_speed`` per event), so the reaction runs nearly in real time;
* at full ``speed`` again. An event within a window is clamped to as well and extends the
  window to its own ``event_window_s``.

:meth:`SimClock.hold_slow` keeps the clock at ``event_speed`` for up to a given wall time,
until :meth:`SimClock.release_slow`: for a reaction of unknown wall latency (the mock hardware
holds from a pump stop until the pump runs again; the therapy bench around its service calls).

When a time source publishes the clock (``hold_until_tick=True``), it reads with
:meth:`SimClock.tick_s` and everyone else with :meth:`SimClock.now_s`: an event time reached by
any reading is held (every reading returns it) until the next tick, so the published clock
always contains it, whoever read the clock first. The wall time dropped per event is then at
most one tick period.

With ``speed <= event_speed`` events change nothing.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable

EVENT_HOLD = "event"  # the hold_slow key of the hold an event starts (``event_hold_wall_s``)


class SimClock:
    """Monotonic simulated clock. With speed 1 it runs at wall rate from ``sim_start_s``.

    Thread-safe. Events are kept in a bounded heap (``MAX_PENDING_EVENTS``, the earliest are
    kept); events within ``MERGE_S`` of a pending one are the same event.
    """

    MAX_PENDING_EVENTS = 1024
    # Repeated registrations of one event computed twice may differ by float rounding (at
    # epoch times one ulp is ~0.2 µs): closer than this, they are one event.
    MERGE_S = 1e-3

    def __init__(
        self,
        speed: float,
        sim_start_s: float,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        event_speed: float = 50.0,
        event_window_s: float = 5.0,
        event_hold_wall_s: float = 0.0,
        hold_until_tick: bool = False,
    ) -> None:
        if not math.isfinite(speed) or speed <= 0:
            raise ValueError(f"speed: must be a finite number > 0 (got {speed})")
        if not math.isfinite(event_speed) or event_speed <= 0:
            raise ValueError(f"event_speed: must be a finite number > 0 (got {event_speed})")
        if not math.isfinite(event_window_s) or event_window_s < 0:
            raise ValueError(f"event_window_s: must be a finite number >= 0 (got {event_window_s})")
        if not math.isfinite(sim_start_s):
            raise ValueError(f"sim_start_s: must be finite (got {sim_start_s})")
        self.speed = speed
        self.event_speed = event_speed
        self.event_window_s = event_window_s
        self.event_hold_wall_s = event_hold_wall_s
        self.hold_until_tick = hold_until_tick
        self._monotonic = monotonic
        # Anchor of the current linear piece: (wall, sim). It moves only at piece boundaries
        # (an event reached, a window ended), so readings within a piece do not accumulate
        # rounding.
        self._wall_a = monotonic()
        self._sim_a = sim_start_s
        self._held = False  # at the event _sim_a, waiting for a tick
        self._slow_until = sim_start_s  # end of the current slow window (<= anchor: none)
        self._holds: dict[str, float] = {}  # hold_slow key -> its end, in wall time
        self._last = sim_start_s
        self._events: list[float] = []  # heap of pending event times, all > _last
        self._lock = threading.Lock()

    @property
    def slows_for_events(self) -> bool:
        """False when events would change nothing (``speed <= event_speed``)."""
        return self.speed > self.event_speed

    @property
    def pending_events(self) -> int:
        with self._lock:
            return len(self._events)

    def in_event_window(self) -> bool:
        """True while the clock runs at ``event_speed`` (as of the last reading)."""
        with self._lock:
            return self._last < self._slow_until or self._monotonic() < self._hold_end()

    def hold_slow(self, wall_s: float, key: str = "hold") -> None:
        """Run at ``event_speed`` from now for up to ``wall_s`` of wall time, or until
        :meth:`release_slow` with the same ``key``: while something is expected to react (a
        pump that has just stopped is about to be commanded again), so that its wall latency
        costs simulated seconds, not ``speed`` times as many. Holds with different keys are
        independent: the clock is slow while any is on."""
        if not self.slows_for_events or not (math.isfinite(wall_s) and wall_s > 0):
            return
        with self._lock:
            self._reanchor()
            self._holds[key] = max(self._holds.get(key, -math.inf), self._wall_a + wall_s)

    def release_slow(self, key: str = "hold") -> None:
        """End the :meth:`hold_slow` of ``key`` early (the reaction came)."""
        with self._lock:
            if key not in self._holds:
                return
            self._reanchor()
            del self._holds[key]

    def _hold_end(self) -> float:
        """Wall time at which the last hold ends (-inf: none). Lock held."""
        return max(self._holds.values(), default=-math.inf)

    def _reanchor(self) -> None:
        """Start a new linear piece at the current reading (before a change of rate). Lock
        held."""
        if self._held:
            return  # anchored at the event, which stays until the tick
        wall = self._monotonic()
        self._last = max(self._last, self._advance(wall, tick=False))
        if not self._held:
            self._wall_a, self._sim_a = max(self._wall_a, wall), self._last

    def now_s(self) -> float:
        """Simulated time now. At an event with ``hold_until_tick``, the event time until the
        next :meth:`tick_s`."""
        return self._read(tick=False)

    def tick_s(self) -> float:
        """The time source's reading (the one it publishes): like :meth:`now_s`, and it ends
        a hold at an event, so the clock runs on from the event from now."""
        return self._read(tick=True)

    def slow_at(self, t_event_s: float) -> None:
        """Slow down around ``t_event_s`` (simulated seconds). Past, already reported or
        non-finite times are ignored, and so is everything when ``speed <= event_speed``."""
        if not self.slows_for_events or not math.isfinite(t_event_s):
            return
        with self._lock:
            if t_event_s <= self._last:
                return
            events = self._events
            if any(abs(t - t_event_s) < self.MERGE_S for t in events):
                return  # already pending (the heap is small: a scan is cheap)
            if len(events) >= self.MAX_PENDING_EVENTS:
                latest = max(events)
                if t_event_s >= latest:
                    return  # full: keep the earliest, the next to matter
                events.remove(latest)
                heapq.heapify(events)
            heapq.heappush(events, t_event_s)

    def _read(self, *, tick: bool) -> float:
        with self._lock:
            wall = self._monotonic()
            if self._held:
                if not tick:
                    return self._last  # == the event time
                self._held = False
                self._wall_a = max(self._wall_a, wall)  # the clock restarts from now
            t = self._advance(wall, tick=tick)
            self._last = max(self._last, t)
            return self._last

    def _advance(self, wall: float, *, tick: bool) -> float:
        """Simulated time at ``wall``; moves the anchor over boundaries passed. Lock held."""
        while True:
            elapsed = wall - self._wall_a
            if elapsed <= 0.0:
                return self._sim_a  # the wall clock went back: hold
            in_sim_window = self._sim_a < self._slow_until
            hold_end = self._hold_end()
            holding = self._wall_a < hold_end
            rate = self.event_speed if (in_sim_window or holding) else self.speed
            # Wall time at which this linear piece ends (the rate changes), if it does, and
            # the simulated time there (exactly the window's end when that ends it).
            piece_end, piece_end_sim = math.inf, math.inf
            if in_sim_window:
                piece_end = self._wall_a + (self._slow_until - self._sim_a) / rate
                piece_end_sim = self._slow_until
            if holding and (not in_sim_window or hold_end > piece_end):
                piece_end = hold_end
                piece_end_sim = self._sim_a + rate * (piece_end - self._wall_a)
            next_event = self._events[0] if self._events else math.inf
            event_wall = self._wall_a + (next_event - self._sim_a) / rate
            if event_wall <= min(wall, piece_end):
                # Reached an event: clamp to it exactly; the clock restarts from it now (the
                # wall time since the crossing is dropped), or at the next tick when holding.
                while self._events and self._events[0] <= next_event:
                    heapq.heappop(self._events)
                self._wall_a, self._sim_a = wall, next_event
                self._held = self.hold_until_tick and not tick
                self._slow_until = max(self._slow_until, next_event + self.event_window_s)
                if self.event_hold_wall_s > 0:
                    self._holds[EVENT_HOLD] = max(
                        self._holds.get(EVENT_HOLD, -math.inf), wall + self.event_hold_wall_s
                    )
                return next_event
            if wall < piece_end:
                return self._sim_a + rate * elapsed
            # The slow piece ended before now: full speed again from its end.
            self._sim_a, self._wall_a = max(self._sim_a, piece_end_sim), piece_end
            if self._sim_a >= self._slow_until and self._wall_a >= self._hold_end():
                continue
            # (rounding left one of them a hair short: it is over)
            self._slow_until = min(self._slow_until, self._sim_a)
            self._holds.clear()
