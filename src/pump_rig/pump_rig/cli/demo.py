"""``pumprig demo``: 24 h of simulated constant-rate therapy with an occlusion at hour 12.

Runs the whole stack on mock hardware at high speed, injects the fault through the same ROS
service a user would call, records everything, and summarises the run from the bag alone.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pump_rig.cli.client import RigClient
from pump_rig.cli.stack import Stack, StackOptions, package_share
from pump_rig.core.bag_report import format_report, read_report
from pump_rig.core.faults import FaultKind

DEMO_PROGRAM = "config/programs/baclofen_constant.yaml"
PROGRESS_EVERY_H = 3.0


# The demo watches the simulated clock from wall time (the mock publishes it every 50 ms):
# one look must not cover more than this share of the time from the fault to the end.
_WALL_STEP_S = 0.05
_MAX_STEP_SHARE = 0.05


class DemoError(ValueError):
    """The demo could not show what it is for (one line, exit non-zero)."""


def max_speed(hours: float, fault_at_h: float) -> float:
    """The fastest speed at which the fault still lands and the line's response is seen."""
    return _MAX_STEP_SHARE * (hours - fault_at_h) * 3600.0 / _WALL_STEP_S


def run_demo(args: argparse.Namespace) -> None:
    fault = FaultKind.parse(args.fault)
    if args.fault_at >= args.hours:
        raise ValueError(f"--fault-at {args.fault_at:g} h is not before the end ({args.hours:g} h)")
    fastest = max_speed(args.hours, args.fault_at)
    if args.speed > fastest:
        before_end_h = args.hours - args.fault_at
        raise DemoError(
            f"--speed {args.speed:g}: at most x{fastest:.0f} for a fault {before_end_h:g} h "
            "before the end (the demo follows the simulated clock every 50 ms of wall time)"
        )
    bag = Path(args.runs) / time.strftime("demo_%Y%m%d_%H%M%S")
    program = package_share() / DEMO_PROGRAM
    print(
        f"pumprig demo: {args.hours:g} h of simulated therapy at x{args.speed:g}, "
        f"{fault.value} at hour {args.fault_at:g}; recording to {bag}"
    )
    wall0 = time.monotonic()
    stack = Stack(
        StackOptions(
            namespace=args.namespace,
            speed=args.speed,
            program=program,
            record=bag,
            # A fresh dose ledger per demo, next to its bag.
            journal=bag.with_name(bag.name + "_ledger") / "dose_journal.jsonl",
        )
    )
    client: RigClient | None = None
    try:
        stack.start()
        client = RigClient(args.namespace)
        t0 = stack.sim_now_s()
        injected = False
        next_progress_h = PROGRESS_EVERY_H
        while (elapsed_h := (stack.sim_now_s() - t0) / 3600.0) < args.hours:
            if not injected and elapsed_h >= args.fault_at:
                from pump_rig_interfaces.srv import InjectFault

                response = client.call(
                    InjectFault, "inject_fault", InjectFault.Request(kind=fault.value)
                )
                print(f"  hour {elapsed_h:5.2f}: {response.message}")
                injected = True
            if elapsed_h >= next_progress_h:
                dose = client.latest("dose", timeout_s=1.0)
                if dose is not None:
                    print(
                        f"  hour {elapsed_h:5.2f}: delivered {dose.delivered_volume_ul:8.3f} µL of "
                        f"{dose.ordered_volume_ul:8.3f} µL prescribed"
                    )
                next_progress_h += PROGRESS_EVERY_H
            time.sleep(0.02)
    finally:
        if client is not None:
            client.close()
        stack.shutdown()
    wall_s = time.monotonic() - wall0
    if not injected:
        raise DemoError(
            f"the {fault.value} was never injected (the run ended first): lower --speed"
        )
    report = read_report(bag)
    if report.controller_delivered_ul <= 0.0:
        raise DemoError(f"nothing was delivered in {args.hours:g} h (see pumprig report {bag})")
    print()
    print(format_report(report))
    print(
        f"{'wall time':<11} {wall_s:.1f} s for {args.hours:g} h simulated "
        f"(x{args.hours * 3600.0 / wall_s:.0f} overall)"
    )
    print(f"{'bag':<11} {bag}  (pumprig report {bag})")
