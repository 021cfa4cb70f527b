"""``pumprig bench safety``: the randomized safety check of the therapy engine, for a while.

Generated scenarios (seeds ``seed``, ``seed + 1``, ...) run in ``jobs`` worker processes until
``minutes`` are up, each against a fresh journaled engine judged by the check's own device, line
and 24 h window models (pump_rig.verification). Then it prints what the sequences exercised,
every violation by kind with the shrunk scenario of the first of each kind (Python that can be
pasted into a regression test), and the largest true 24 h dose as a fraction of the limit in
force. Returns the exit code: 1 if any violation was found, else 0.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.pool import AsyncResult
from typing import Final

from pump_rig.verification.safety_runner import (
    SequenceResult,
    Violation,
    format_scenario,
    format_time,
    run_seed,
    shrink,
)
from pump_rig.verification.safety_scenarios import PROFILES, generate

__all__ = ["run_safety_bench"]

_PROGRESS_S: Final = 15.0


@dataclass
class _Totals:
    sequences: int = 0
    simulated_s: float = 0.0
    cpu_s: float = 0.0
    restarts_clean: int = 0
    restarts_crash: int = 0
    bolus_requests: int = 0
    grants: int = 0
    invalid_programs: int = 0
    journal_damages: int = 0
    journal_rollbacks: int = 0
    events_skipped: int = 0
    within_slack: int = 0
    max_fraction: float = 0.0
    max_where: str = ""
    notes: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    first: dict[str, tuple[int, Violation]] = field(default_factory=dict)

    def add(self, seed: int, r: SequenceResult) -> None:
        self.sequences += 1
        self.simulated_s += r.simulated_s
        self.cpu_s += r.wall_s
        self.restarts_clean += r.restarts_clean
        self.restarts_crash += r.restarts_crash
        self.bolus_requests += r.bolus_requests
        self.grants += r.grants
        self.invalid_programs += r.invalid_programs
        self.journal_damages += r.journal_damages
        self.journal_rollbacks += r.journal_rollbacks
        self.events_skipped += r.events_skipped
        self.within_slack += r.within_slack
        self.notes.update(r.notes)
        if r.max_fraction > self.max_fraction:
            self.max_fraction = r.max_fraction
            self.max_where = (
                f"seed {seed}, {r.max_fraction_drug} at {format_time(r.max_fraction_t_s)}"
            )
        for v in r.violations:
            self.by_kind[v.kind] += 1
            self.first.setdefault(v.kind, (seed, v))


def _run_seed(seed: int, profile: str) -> tuple[int, SequenceResult]:
    return seed, run_seed(seed, profile)


def _shrink_seed(seed: int, profile: str, kind: str, seconds: float) -> tuple[str, str, int, int]:
    scenario = generate(random.Random(seed), profile, seed=seed)
    small, result = shrink(scenario, kind, max_seconds=seconds)
    first = result.first(kind)
    return (
        format_scenario(small),
        str(first) if first else "",
        len(scenario.events),
        len(small.events),
    )


def run_safety_bench(
    minutes: float,
    seed: int = 0,
    jobs: int | None = None,
    profile: str = "standard",
    *,
    shrink_seconds: float = 120.0,
) -> int:
    """Run the safety check for ``minutes`` of wall time; 1 if any violation, else 0.

    ``seed``: the first scenario seed; ``jobs``: worker processes (default: every CPU);
    ``profile``: quick | standard | long (safety_scenarios.PROFILES); ``shrink_seconds``: the
    time spent shrinking the first failure of each kind.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile: one of {', '.join(PROFILES)} (got {profile!r})")
    workers = jobs or os.cpu_count() or 1
    print(
        f"pumprig bench safety: profile {profile}, seeds from {seed}, {workers} workers, "
        f"{minutes:g} min"
    )
    totals = _Totals()
    wall0 = time.monotonic()
    deadline = wall0 + minutes * 60.0
    # spawn: a worker forked from a process with DDS threads could hang.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending: deque[AsyncResult[tuple[int, SequenceResult]]] = deque()
        next_seed, last_print = seed, wall0
        while True:
            while len(pending) < 2 * workers and time.monotonic() < deadline:
                pending.append(pool.apply_async(_run_seed, (next_seed, profile)))
                next_seed += 1
            if not pending:
                break
            done_seed, result = pending.popleft().get()
            totals.add(done_seed, result)
            if time.monotonic() - last_print >= _PROGRESS_S:
                last_print = time.monotonic()
                _progress(totals, last_print - wall0)
        run_s = time.monotonic() - wall0
        _summary(totals, run_s, workers)
        shrunk = {
            kind: pool.apply_async(_shrink_seed, (first_seed, profile, kind, shrink_seconds))
            for kind, (first_seed, _v) in sorted(totals.first.items())
        }
        for kind, job in shrunk.items():
            text, violation, before, after = job.get()
            first_seed, first = totals.first[kind]
            print(f"\n{kind}: {totals.by_kind[kind]} (first: seed {first_seed}, {first})")
            print(f"  shrunk from {before} to {after} events: {violation}")
            print("\n".join("    " + line for line in text.splitlines()))
    return 1 if totals.by_kind else 0


def _progress(t: _Totals, elapsed_s: float) -> None:
    found = sum(t.by_kind.values())
    print(
        f"  [{int(elapsed_s) // 60:02d}:{int(elapsed_s) % 60:02d}] {t.sequences} sequences, "
        f"{t.simulated_s / 86400.0:.0f} simulated days, {found} violations, "
        f"max 24 h dose {t.max_fraction:.4f} × limit",
        flush=True,
    )


def _summary(t: _Totals, run_s: float, workers: int) -> None:
    days = t.simulated_s / 86400.0
    per_core = t.sequences / t.cpu_s if t.cpu_s else 0.0
    print(
        f"\nsequences         {t.sequences} in {run_s:.0f} s ({t.sequences / run_s:.2f}/s; "
        f"{per_core:.2f}/s per core, {days / max(t.cpu_s, 1e-9):.2f} simulated days/s per core)"
    )
    print(f"simulated days    {days:.1f}")
    print(f"restarts          {t.restarts_clean} clean, {t.restarts_crash} crash")
    print(f"patient boluses   {t.bolus_requests} requested, {t.grants} granted")
    print(f"invalid programs  {t.invalid_programs} refused")
    print(f"journal           {t.journal_damages} damaged, {t.journal_rollbacks} rolled back")
    print(f"events skipped    {t.events_skipped} (controller down or journal being repaired)")
    print(f"max 24 h dose     {t.max_fraction:.6f} × the limit in force ({t.max_where})")
    print(f"within one step   {t.within_slack} pieces of delivery over the limit by < 1 step")
    for note, count in sorted(t.notes.items()):
        print(f"  note: {note}: {count}")
    if not t.by_kind:
        print("violations        none")
        return
    print(f"violations        {sum(t.by_kind.values())}")
    for kind, count in t.by_kind.most_common():
        print(f"  {kind}: {count}")
