"""Summary of a recorded run, read from the bag alone with rosbags (no ROS needed).

Used by ``pumprig report BAG`` and at the end of ``pumprig demo``: prescribed versus
device-delivered volume, every alarm with its delay from the fault that caused it, and how the
pump was stopped.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

SEVERITY_NAMES = {0: "INFO", 1: "WARNING", 2: "CRITICAL"}
PUMP_STATE_NAMES = {
    0: "IDLE",
    1: "RUNNING",
    2: "STALLED",
    3: "FAULT",
    4: "DISCONNECTED",
    5: "ESTOPPED",
}
THERAPY_STATE_NAMES = {0: "RUNNING", 1: "SUSPENDED", 2: "ALARM", 3: "EMPTY", 4: "NO_PROGRAM"}


class ReportError(Exception):
    """The bag cannot be read or holds nothing to report on."""


@dataclass(frozen=True)
class AlarmLine:
    t_s: float
    code: str
    severity: str
    active: bool
    source: str
    message: str


@dataclass(frozen=True)
class FaultLine:
    t_s: float
    kind: str
    active: bool


@dataclass
class RunReport:
    bag: Path
    start_s: float = math.nan
    end_s: float = math.nan
    topic_counts: dict[str, int] = field(default_factory=dict)
    program: str = ""
    drug: str = ""
    concentration_ug_per_ml: float = math.nan
    basal_rate_ul_per_h: float = math.nan
    prescribed_volume_ul: float = math.nan
    # Ordered (program and granted boluses, through alarms and stops), first and last seen;
    # bags from before DoseStatus carried it have nan.
    ordered_first_ul: float = math.nan
    ordered_last_ul: float = math.nan
    controller_delivered_ul: float = math.nan
    dose_24h_ug: float = math.nan
    therapy_state: str = ""
    device_delivered_first_ul: float = math.nan
    device_delivered_last_ul: float = math.nan
    faults: list[FaultLine] = field(default_factory=list)
    alarms: list[AlarmLine] = field(default_factory=list)
    estop_engaged_s: float | None = None
    estop_source: str = ""
    pump_stopped_s: float | None = None  # first non-RUNNING pump/state after the first fault
    pump_stopped_state: str = ""
    controller_stop_s: float | None = None  # first STOP command after the first fault
    max_pressure_kpa: float = math.nan
    detection_pressure_kpa: float = math.nan
    detection_baseline_kpa: float = math.nan

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def device_delivered_ul(self) -> float:
        return self.device_delivered_last_ul - self.device_delivered_first_ul

    @property
    def ordered_ul(self) -> float:
        """What was ordered over the run (nan: the bag does not say)."""
        return self.ordered_last_ul - self.ordered_first_ul

    @property
    def message_count(self) -> int:
        return sum(self.topic_counts.values())

    def first_fault(self) -> FaultLine | None:
        return next((f for f in self.faults if f.active), None)

    def first_alarm_after(self, t_s: float, code: str | None = None) -> AlarmLine | None:
        return next(
            (
                a
                for a in self.alarms
                if a.active and a.t_s >= t_s and (code is None or a.code == code)
            ),
            None,
        )


def _typestore_for(reader: Reader) -> Any:
    typestore = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for conn in reader.connections:
        if conn.msgtype in typestore.types or conn.msgdef is None:
            continue
        types.update(get_types_from_msg(conn.msgdef.data, conn.msgtype))
    typestore.register(types)
    return typestore


def _stamp_s(msg: Any, fallback_ns: int) -> float:
    stamp = msg.header.stamp
    t = float(stamp.sec) + float(stamp.nanosec) * 1e-9
    return t if t > 0 else fallback_ns * 1e-9


def read_report(bag: Path) -> RunReport:
    """Read a whole bag into a RunReport. ReportError when it is missing or unreadable."""
    if not bag.exists():
        raise ReportError(f"bag {bag} does not exist")
    try:
        reader = Reader(bag)
        reader.open()
    except Exception as exc:
        raise ReportError(f"cannot open bag {bag}: {exc}") from exc
    report = RunReport(bag=bag)
    counts: Counter[str] = Counter()
    try:
        typestore = _typestore_for(reader)
        for conn, timestamp_ns, raw in reader.messages():
            counts[conn.topic] += 1
            suffix = conn.topic.rsplit("/", 1)[-1]
            t_ns = int(timestamp_ns)
            if math.isnan(report.start_s):
                report.start_s = t_ns * 1e-9
            report.end_s = t_ns * 1e-9
            if conn.msgtype.startswith("pump_rig_interfaces/") or suffix == "pressure":
                msg = typestore.deserialize_cdr(raw, conn.msgtype)
                _take(report, conn.msgtype.rsplit("/", 1)[-1], msg, t_ns)
    except Exception as exc:
        raise ReportError(f"cannot read bag {bag}: {exc}") from exc
    finally:
        reader.close()
    report.topic_counts = dict(counts)
    if not counts:
        raise ReportError(f"bag {bag} holds no messages")
    return report


def _take(report: RunReport, kind: str, msg: Any, t_ns: int) -> None:
    t_s = _stamp_s(msg, t_ns)
    fault = report.first_fault()
    if kind == "DoseStatus":
        report.program, report.drug = msg.program, msg.drug
        report.concentration_ug_per_ml = msg.concentration_ug_per_ml
        report.basal_rate_ul_per_h = msg.basal_rate_ul_per_h
        report.prescribed_volume_ul = msg.prescribed_volume_ul
        ordered = float(getattr(msg, "ordered_volume_ul", math.nan))
        if math.isnan(report.ordered_first_ul):
            report.ordered_first_ul = ordered
        report.ordered_last_ul = ordered
        report.controller_delivered_ul = msg.delivered_volume_ul
        report.dose_24h_ug = msg.delivered_dose_24h_ug
        report.therapy_state = THERAPY_STATE_NAMES.get(msg.therapy_state, str(msg.therapy_state))
    elif kind == "PumpState":
        if msg.state != 4:  # DISCONNECTED states carry no device counter
            if math.isnan(report.device_delivered_first_ul):
                report.device_delivered_first_ul = msg.delivered_volume_ul
            report.device_delivered_last_ul = msg.delivered_volume_ul
        if (
            fault is not None
            and report.pump_stopped_s is None
            and msg.state != 1
            and t_s >= fault.t_s
        ):
            report.pump_stopped_s = t_s
            report.pump_stopped_state = PUMP_STATE_NAMES.get(msg.state, str(msg.state))
    elif kind == "PumpCommand":
        if (
            fault is not None
            and report.controller_stop_s is None
            and msg.action == 0
            and t_s >= fault.t_s
        ):
            report.controller_stop_s = t_s
    elif kind == "Alarm":
        report.alarms.append(
            AlarmLine(
                t_s,
                msg.code,
                SEVERITY_NAMES.get(msg.severity, str(msg.severity)),
                bool(msg.active),
                msg.source,
                msg.message,
            )
        )
    elif kind == "EmergencyStop":
        if msg.engaged and report.estop_engaged_s is None:
            report.estop_engaged_s = t_s
            report.estop_source = msg.source
    elif kind == "FaultEvent":
        report.faults.append(FaultLine(t_s, msg.kind, bool(msg.active)))
    elif kind == "OcclusionStatus":
        if msg.state >= 2 and math.isnan(report.detection_pressure_kpa):
            report.detection_pressure_kpa = msg.pressure_kpa
            report.detection_baseline_kpa = msg.baseline_kpa
    elif kind == "FluidPressure":
        pressure_kpa = msg.fluid_pressure / 1000.0
        if math.isfinite(pressure_kpa):
            report.max_pressure_kpa = (
                pressure_kpa
                if math.isnan(report.max_pressure_kpa)
                else max(report.max_pressure_kpa, pressure_kpa)
            )


def format_duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    hours, rem = divmod(seconds, 3600.0)
    minutes, secs = divmod(rem, 60.0)
    if hours >= 1:
        return f"{sign}{int(hours)} h {int(minutes):02d} min {secs:04.1f} s"
    if minutes >= 1:
        return f"{sign}{int(minutes)} min {secs:04.1f} s"
    return f"{sign}{secs:.1f} s"


def _row(label: str, text: str) -> str:
    return f"{label:<11} {text}"


def format_report(report: RunReport) -> str:
    """Human-readable summary, one fact a line."""
    lines = [_row("run", str(report.bag))]
    lines.append(
        _row(
            "span",
            f"{format_duration(report.duration_s)} of ROS time, "
            f"{report.message_count} messages on {len(report.topic_counts)} topics",
        )
    )
    if report.program:
        lines.append(
            _row(
                "program",
                f"{report.program}: {report.drug} {report.concentration_ug_per_ml:g} µg/mL at "
                f"{report.basal_rate_ul_per_h:.3f} µL/h; therapy ended {report.therapy_state}",
            )
        )
    prescribed = report.prescribed_volume_ul
    what = "over the run"
    if not math.isnan(report.ordered_ul):
        # The program and the granted boluses, also while an alarm or an empty reservoir held
        # delivery: what the patient was to get.
        prescribed = report.ordered_ul
        what = "over the run (program and granted boluses, also while stopped by alarms)"
    delivered = report.device_delivered_ul
    if not math.isnan(delivered):
        share = f" ({100.0 * delivered / prescribed:.1f} % of prescribed)" if prescribed > 0 else ""
        lines.append(_row("prescribed", f"{prescribed:.3f} µL {what}"))
        lines.append(_row("delivered", f"{delivered:.3f} µL as reported by the device{share}"))
        if not math.isnan(report.controller_delivered_ul):
            lines.append(
                _row(
                    "accounted",
                    f"{report.controller_delivered_ul:.3f} µL by the dosing controller; "
                    f"{report.dose_24h_ug:.3f} µg in the last 24 h",
                )
            )
    for event in report.faults:  # every fault injected or cleared, not only the first
        lines.append(
            _row(
                "fault",
                f"{event.kind} {'injected' if event.active else 'cleared'} at "
                f"+{format_duration(event.t_s - report.start_s)}",
            )
        )
    fault = report.first_fault()
    if fault is not None:
        first = report.first_alarm_after(fault.t_s)
        critical = next(
            (
                a
                for a in report.alarms
                if a.active and a.t_s >= fault.t_s and a.severity == "CRITICAL"
            ),
            None,
        )
        for label, line in (("first alarm", first), ("critical", critical)):
            if line is not None:
                lines.append(
                    _row(
                        label,
                        f"{line.severity} {line.code} from {line.source} after "
                        f"{format_duration(line.t_s - fault.t_s)}: {line.message}",
                    )
                )
        if not math.isnan(report.detection_pressure_kpa):
            lines.append(
                _row(
                    "detected",
                    f"at {report.detection_pressure_kpa:.2f} kPa (baseline "
                    f"{report.detection_baseline_kpa:.2f} kPa); "
                    f"peak {report.max_pressure_kpa:.2f} kPa",
                )
            )
        if report.estop_engaged_s is not None:
            lines.append(
                _row(
                    "estop",
                    f"engaged by {report.estop_source} after "
                    f"{format_duration(report.estop_engaged_s - fault.t_s)}",
                )
            )
        if report.pump_stopped_s is not None:
            how = (
                "by the motor driver on the estop"
                if report.pump_stopped_state == "ESTOPPED"
                else f"({report.pump_stopped_state})"
            )
            lines.append(
                _row(
                    "pump",
                    f"stopped {how} after {format_duration(report.pump_stopped_s - fault.t_s)}",
                )
            )
        if report.controller_stop_s is not None:
            lines.append(
                _row(
                    "controller",
                    f"commanded STOP after {format_duration(report.controller_stop_s - fault.t_s)}",
                )
            )
    active = [a for a in report.alarms if a.active]
    lines.append(_row("alarms", f"{len(active)} raised"))
    for a in active:
        lines.append(
            f"  +{format_duration(a.t_s - report.start_s):<22} {a.severity:<8} {a.code:<16} "
            f"{a.source}: {a.message}"
        )
    return "\n".join(lines)
