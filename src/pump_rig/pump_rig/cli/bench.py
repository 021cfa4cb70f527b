"""``pumprig bench therapy``: 30 days of intrathecal therapy through the whole stack, timed.

A flex schedule, two patient boluses a day, two refills (the second changes the
concentration, with a bridge) and one suspension, run on mock hardware with the same nodes,
topics, services and serial protocol as ``pumprig up``. Prints the prescribed and the delivered
dose per day, the worst daily error and the wall time. A benchmark, not a test: it prints
figures and fails only if the stack itself fails.
"""

from __future__ import annotations

import argparse
import calendar
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rclpy.parameter import Parameter

from pump_rig.cli.client import RigClient
from pump_rig.cli.stack import Stack, StackOptions, package_share
from pump_rig.core.pump_types import SECONDS_PER_DAY, SECONDS_PER_HOUR
from pump_rig.nodes.ros_time import now_s as ros_now_s

# Monday 2026-01-05 00:00 UTC: days of the run are whole calendar days.
BENCH_START_S = float(calendar.timegm((2026, 1, 5, 0, 0, 0)))


def bench_program_file() -> Path:
    """The month's program: a weekday/weekend flex schedule with patient boluses."""
    return package_share() / "config" / "programs" / "baclofen_flex.yaml"


# The bench syringe holds what the month delivers (~15 mL): a full BD Plastipak 30 mL
# (21.59 mm bore, New Era NE-1000 manual syringe table) instead of the demo's 10 mL.
BENCH_SYRINGE_ID_MM = 21.59
BENCH_SYRINGE_UL = 30000.0
_BENCH_SYRINGE = [
    Parameter("bench.inner_diameter_mm", Parameter.Type.DOUBLE, BENCH_SYRINGE_ID_MM),
    Parameter("bench.syringe_volume_ul", Parameter.Type.DOUBLE, BENCH_SYRINGE_UL),
    Parameter("bench.loaded_volume_ul", Parameter.Type.DOUBLE, BENCH_SYRINGE_UL),
]


_ACTION_HOLD_WALL_S = 5.0  # the longest the clock is held slow for one scenario action


@dataclass(frozen=True)
class Action:
    at_s: float  # since the start of the run
    what: str
    call: Callable[[RigClient], str]


def _bolus(client: RigClient) -> str:
    from pump_rig_interfaces.srv import RequestBolus

    answer = client.call(RequestBolus, "request_bolus", RequestBolus.Request())
    return f"bolus {'granted' if answer.granted else 'DENIED'}: {answer.message}"


def _refill(volume_ul: float, concentration: float, bridge: bool) -> Callable[[RigClient], str]:
    def call(client: RigClient) -> str:
        from pump_rig_interfaces.srv import Refill

        request = Refill.Request(
            volume_ul=volume_ul,
            drug="baclofen",
            concentration_ug_per_ml=concentration,
            bridge=bridge,
        )
        response = client.call(Refill, "refill", request)
        return f"refill {'ok' if response.success else 'REFUSED'}: {response.message}"

    return call


def _trigger(name: str) -> Callable[[RigClient], str]:
    def call(client: RigClient) -> str:
        from std_srvs.srv import Trigger

        response = client.call(Trigger, name, Trigger.Request())
        return f"{name}: {response.message}"

    return call


def scenario(days: float) -> list[Action]:
    day, hour = SECONDS_PER_DAY, SECONDS_PER_HOUR
    actions = []
    for d in range(math.ceil(days)):
        actions.append(Action(d * day + 9.5 * hour, "patient bolus", _bolus))
        actions.append(Action(d * day + 15.25 * hour, "patient bolus", _bolus))
    if days > 10:
        actions.append(Action(10 * day + 11 * hour, "refill", _refill(12000.0, 500.0, False)))
    if days > 15:
        actions.append(Action(15 * day + 10.2 * hour, "suspend", _trigger("suspend")))
        actions.append(Action(15 * day + 12.2 * hour, "resume", _trigger("resume")))
    if days > 20:
        actions.append(Action(20 * day + 11 * hour, "refill", _refill(10000.0, 1000.0, True)))
    return sorted((a for a in actions if a.at_s < days * day), key=lambda a: a.at_s)


def run_therapy_bench(args: argparse.Namespace) -> None:
    days = float(args.days)
    work = Path(tempfile.mkdtemp(prefix="pumprig_bench_"))
    program = bench_program_file()
    print(
        f"pumprig bench therapy: {days:g} days at x{args.speed:g} through the full stack "
        f"on mock hardware (work dir {work})"
    )
    wall0 = time.monotonic()
    stack = Stack(
        StackOptions(
            namespace=args.namespace,
            speed=args.speed,
            program=program,
            journal=work / "dose_journal.jsonl",
            extra={
                "mock_hardware": [
                    Parameter("sim_start_s", Parameter.Type.DOUBLE, BENCH_START_S),
                    *_BENCH_SYRINGE,
                ],
                "motor_driver": [
                    Parameter(
                        "syringe_inner_diameter_mm", Parameter.Type.DOUBLE, BENCH_SYRINGE_ID_MM
                    )
                ],
                "dosing_controller": [
                    Parameter("journal_bucket_s", Parameter.Type.DOUBLE, 900.0),
                ],
            },
        )
    )
    client: RigClient | None = None
    log: list[str] = []
    try:
        t0 = BENCH_START_S
        pending = scenario(days)
        end_s = days * SECONDS_PER_DAY
        # Run past the end until the device has reported beyond it (the pump reports about
        # once a simulated second in a slow window), so the last day is complete.
        settle_s = 2.0
        if stack.mock is not None:
            # The clock stops at each action and at the end and runs slowly from there, so a
            # request lands on time and the pump's command change costs simulated seconds,
            # not the hundreds of simulated seconds a few serial exchanges take at full speed.
            for action in pending:
                stack.mock.clock.slow_at(t0 + action.at_s)
            stack.mock.clock.slow_at(t0 + end_s)
            settle_s = min(stack.mock.clock.event_window_s, 5.0)
        stack.start()
        client = RigClient(args.namespace)
        controller = stack.node("dosing_controller")
        shown_day = -1
        while (now := stack.sim_now_s()) - t0 < end_s + settle_s:
            if pending and now - t0 >= pending[0].at_s:
                log.append(_run_action(stack, controller, client, pending.pop(0), t0))
            if (day := int((now - t0) // SECONDS_PER_DAY)) != shown_day and day < days:
                shown_day = day
                print(f"  day {day + 1}/{math.ceil(days)} at {time.monotonic() - wall0:.1f} s")
            time.sleep(0.002)
        engine = controller.engine
        engine.command(stack.sim_now_s())  # bring the books up to the end
        truth_ul = stack.mock.pump_snapshot().delivered_ul if stack.mock else math.nan
    finally:
        if client is not None:
            client.close()
        stack.shutdown()
    wall_s = time.monotonic() - wall0
    _print_results(engine, log, truth_ul, wall_s, days, args.speed)


def _run_action(stack: Stack, controller: Any, client: RigClient, action: Action, t0: float) -> str:
    """Run a scenario action at its time, with the clock held slow meanwhile (a service call
    takes milliseconds of wall time: hours at full speed)."""
    clock = stack.mock.clock if stack.mock is not None else None
    if clock is not None:
        clock.hold_slow(_ACTION_HOLD_WALL_S, "bench action")
    try:
        # The controller's ROS time comes from /clock, a tick behind the mock's clock: wait
        # for it to reach the action's time, so the controller files the action at its time.
        deadline = time.monotonic() + _ACTION_HOLD_WALL_S
        while ros_now_s(controller) - t0 < action.at_s and time.monotonic() < deadline:
            time.sleep(0.001)
        at_day = (ros_now_s(controller) - t0) / SECONDS_PER_DAY
        return f"  day {at_day:6.3f}: {action.call(client)}"
    finally:
        if clock is not None:
            clock.release_slow("bench action")


def _print_results(
    engine: Any, log: list[str], truth_ul: float, wall_s: float, days: float, speed: float
) -> None:
    shown = log if len(log) <= 12 else [*log[:6], f"  ... {len(log) - 12} more", *log[-6:]]
    print("\n".join(shown))
    prescribed = engine.prescribed_by_day
    delivered = {t.day: t for t in engine.ledger.day_totals()}
    first_day = math.floor(BENCH_START_S / SECONDS_PER_DAY)  # the bench program is UTC
    run_days = range(first_day, first_day + math.ceil(days))
    print()
    print(
        f"{'day':>4} {'date':>10} {'prescribed µg':>14} {'delivered µg':>13} {'error':>9}  sources"
    )
    worst, worst_n = 0.0, 0  # the signed error of largest size, and its day
    sums: tuple[list[float], list[float]] = ([], [])
    for n, day in enumerate(run_days, start=1):
        p = prescribed.get(day, 0.0)
        total = delivered.get(day)
        d = total.total_dose_ug if total else 0.0
        sums[0].append(p)
        sums[1].append(d)
        err = (d - p) / p if p > 0 else math.nan
        # Day 1 starts when the controller has applied the program: not a whole day.
        if n > 1 and abs(err) > abs(worst):
            worst, worst_n = err, n
        parts = (
            ", ".join(f"{k} {v:.1f}" for k, v in sorted(total.dose_ug.items()) if v > 0)
            if total
            else ""
        )
        date = time.strftime("%Y-%m-%d", time.gmtime(day * SECONDS_PER_DAY))
        print(f"{n:>4} {date:>10} {p:>14.3f} {d:>13.3f} {err:>+9.4%}  {parts}")
    p_sum, d_sum = math.fsum(sums[0]), math.fsum(sums[1])
    ledger_ul = engine.ledger.total_volume_ul
    print()
    print(f"worst daily error      {worst:+.4%} (day {worst_n}; whole days 2..{len(run_days)})")
    print(
        f"whole run              prescribed {p_sum:.3f} µg, delivered {d_sum:.3f} µg "
        f"({(d_sum - p_sum) / p_sum:+.4%})"
    )
    print(
        f"device vs ledger       ledger {ledger_ul:.3f} µL, mock plunger {truth_ul:.3f} µL "
        f"({(ledger_ul - truth_ul) / truth_ul:+.5%})"
    )
    print(f"wall time              {wall_s:.1f} s for {days:g} days (x{days * 86400 / wall_s:.0f})")
