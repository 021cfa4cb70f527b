"""Text views of a running rig for ``pumprig status``, ``program show`` and ``alarms``."""

from __future__ import annotations

import time
from typing import Any

from pump_rig.cli.client import RigClient, RigUnreachableError
from pump_rig.core.bag_report import PUMP_STATE_NAMES, SEVERITY_NAMES, THERAPY_STATE_NAMES

LINE_STATE_NAMES = {0: "OK", 1: "SUSPECTED", 2: "OCCLUDED", 3: "LEAK", 4: "SENSOR_FAULT"}
DOSE_ALARM = 2  # DoseStatus.ALARM


def _dose(client: RigClient) -> Any:
    dose = client.latest("dose")
    if dose is None:
        raise RigUnreachableError(
            f"no dose status on {client.full('dose')} (is the rig running in this namespace "
            f"and ROS_DOMAIN_ID?)"
        )
    return dose


def program_lines(client: RigClient) -> list[str]:
    dose = _dose(client)
    if not dose.program:
        return ["no program loaded"]
    lines = [
        f"program        {dose.program}",
        f"drug           {dose.drug} {dose.concentration_ug_per_ml:g} µg/mL"
        + (
            f" (catheter tip: {dose.tip_concentration_ug_per_ml:g} µg/mL)"
            if dose.tip_concentration_ug_per_ml != dose.concentration_ug_per_ml
            else ""
        ),
        # The dose rate is what leaves the catheter tip: during a bridge, or after a refill,
        # the tip's fluid, not the reservoir's.
        f"basal rate     {dose.basal_rate_ul_per_h:.3f} µL/h now "
        f"({dose.basal_rate_ul_per_h * 24 / 1000 * dose.tip_concentration_ug_per_ml:.3f} "
        "µg/day at the tip)",
        f"daily maximum  {dose.daily_limit_ug:g} µg",
    ]
    if dose.active_bolus:
        lines.append(f"bolus          {dose.active_bolus}")
    return lines


def _when(stamp: Any) -> str:
    t_s = stamp.sec + stamp.nanosec * 1e-9
    if t_s <= 0:
        return "unknown"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t_s))


def status_lines(client: RigClient) -> list[str]:
    dose = _dose(client)
    state = client.latest("pump/state")
    line = client.latest("occlusion")
    estop = client.latest("estop", timeout_s=0.5)
    lines = [
        f"therapy        {THERAPY_STATE_NAMES.get(dose.therapy_state, '?')}",
        *(program_lines(client) if dose.program else ["program        none"]),
        f"delivered      {dose.delivered_volume_ul:.3f} µL (prescribed "
        f"{dose.prescribed_volume_ul:.3f} µL); {dose.delivered_dose_24h_ug:.3f} µg in 24 h",
        "24 h by source "
        + (
            ", ".join(
                f"{s} {v:.3f} µg"
                for s, v in zip(dose.dose_24h_sources, dose.dose_24h_by_source_ug, strict=True)
                if v > 0
            )
            or "none"
        )
        + f"; {dose.boluses_24h} patient boluses",
        f"reservoir      {dose.reservoir_volume_ul:.1f} of {dose.reservoir_capacity_ul:g} µL; "
        + (
            f"next refill {_when(dose.next_refill)} (in {dose.days_to_refill:.1f} days)"
            if dose.days_to_refill >= 0
            else "next refill unknown"
        ),
        f"state detail   {dose.detail}",
        f"dose ledger    {dose.ledger or 'not open yet'}",
    ]
    if state is not None:
        lines.append(
            f"pump           {PUMP_STATE_NAMES.get(state.state, '?')} at "
            f"{state.flow_rate_ul_per_h:.3f} µL/h; "
            f"device counter {state.delivered_volume_ul:.3f} µL"
            + (f"; {state.detail}" if state.detail else "")
        )
    else:
        lines.append("pump           no pump/state (motor_driver not running?)")
    if line is not None:
        lines.append(
            f"line           {LINE_STATE_NAMES.get(line.state, '?')} "
            f"at {line.pressure_kpa:.2f} kPa "
            f"(baseline {line.baseline_kpa:.2f} kPa)"
        )
    lines.append(
        "estop          "
        + (f"ENGAGED by {estop.source}: {estop.reason}" if estop and estop.engaged else "released")
    )
    lines += alarm_lines(client)
    return lines


def alarm_lines(client: RigClient) -> list[str]:
    latest: dict[tuple[str, str], Any] = {}
    for alarm in client.collect("alarms", 0.5):
        latest[(alarm.source, alarm.code)] = alarm
    active = [a for a in latest.values() if a.active]
    lines = ["alarms         none active"] if not active else ["alarms"]
    lines += [
        f"  {SEVERITY_NAMES.get(a.severity, '?'):<8} {a.code:<16} {a.source}: {a.message}"
        for a in active
    ]
    # A critical alarm latches therapy even once its source has cleared it (a stall ends
    # with the next command): say what holds therapy, and how to release it.
    dose = client.latest("dose", timeout_s=1.0)
    if dose is not None and dose.therapy_state == DOSE_ALARM:
        lines.append(f"therapy held   {dose.detail} (pumprig alarms --clear, then pumprig resume)")
    return lines
