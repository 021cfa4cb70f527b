"""A bag written from CDR bytes reads back with rosbags and summarises correctly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from pump_rig.core.bag_recording import (
    BagRecording,
    RecordingError,
    TopicQos,
    build_typestore,
    next_split_path,
)
from pump_rig.core.bag_report import ReportError, format_report, read_report

INTERFACES = Path(__file__).resolve().parents[2] / "src" / "pump_rig_interfaces"
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def typestore() -> Any:
    return build_typestore([("pump_rig_interfaces", INTERFACES)])


def _header(typestore: Any, t_s: float) -> Any:
    Time = typestore.types["builtin_interfaces/msg/Time"]
    Header = typestore.types["std_msgs/msg/Header"]
    sec = int(t_s)
    return Header(stamp=Time(sec=sec, nanosec=round((t_s - sec) * 1e9)), frame_id="")


def _write_run(path: Path, typestore: Any) -> None:
    ts = typestore
    bag = BagRecording(path, ts)
    topics = {
        "/rig/pump/state": "pump_rig_interfaces/msg/PumpState",
        "/rig/dose": "pump_rig_interfaces/msg/DoseStatus",
        "/rig/alarms": "pump_rig_interfaces/msg/Alarm",
        "/rig/estop": "pump_rig_interfaces/msg/EmergencyStop",
        "/rig/bench/faults": "pump_rig_interfaces/msg/FaultEvent",
        "/rig/pressure": "sensor_msgs/msg/FluidPressure",
    }
    for topic, type_name in topics.items():
        bag.add_topic(topic, type_name, TopicQos(depth=10, transient_local=topic.endswith("estop")))

    def put(topic: str, t_s: float, msg: Any) -> None:
        bag.write(topic, int(t_s * 1e9), ts.serialize_cdr(msg, topics[topic]))

    PumpState = ts.types["pump_rig_interfaces/msg/PumpState"]
    DoseStatus = ts.types["pump_rig_interfaces/msg/DoseStatus"]
    Alarm = ts.types["pump_rig_interfaces/msg/Alarm"]
    EmergencyStop = ts.types["pump_rig_interfaces/msg/EmergencyStop"]
    FaultEvent = ts.types["pump_rig_interfaces/msg/FaultEvent"]
    FluidPressure = ts.types["sensor_msgs/msg/FluidPressure"]

    def state(t: float, s: int, vol: float) -> Any:
        return PumpState(
            header=_header(ts, t),
            state=s,
            flow_rate_ul_per_h=20.0,
            delivered_volume_ul=vol,
            syringe_remaining_ul=1000.0,
            volume_resolution_ul=0.0,
            last_sequence=1,
            device="mock",
            detail="",
        )

    put("/rig/pump/state", T0, state(T0, 1, 100.0))
    put("/rig/pump/state", T0 + 3600, state(T0 + 3600, 1, 120.0))
    put(
        "/rig/bench/faults",
        T0 + 3600,
        FaultEvent(
            header=_header(ts, T0 + 3600),
            kind="occlusion",
            active=True,
            magnitude=0.0,
            message="injected",
        ),
    )
    for i, p in enumerate([1.5, 6.0, 12.0]):
        t = T0 + 3600 + 600 * (i + 1)
        put(
            "/rig/pressure",
            t,
            FluidPressure(header=_header(ts, t), fluid_pressure=p * 1000, variance=0.0),
        )
    t_alarm = T0 + 3600 + 1800
    put(
        "/rig/alarms",
        t_alarm,
        Alarm(
            header=_header(ts, t_alarm),
            severity=2,
            code="OCCLUSION",
            active=True,
            source="/rig/pressure_monitor",
            message="rise",
        ),
    )
    put(
        "/rig/estop",
        t_alarm,
        EmergencyStop(
            header=_header(ts, t_alarm),
            engaged=True,
            source="/rig/pressure_monitor",
            reason="OCCLUSION",
        ),
    )
    put("/rig/pump/state", t_alarm + 10, state(t_alarm + 10, 5, 130.0))

    def dose(t: float, ordered_ul: float) -> Any:
        return DoseStatus(
            header=_header(ts, t),
            therapy_state=2,
            program="p",
            drug="baclofen",
            concentration_ug_per_ml=500.0,
            basal_rate_ul_per_h=20.0,
            delivered_volume_ul=30.0,
            delivered_dose_24h_ug=15.0,
            reservoir_volume_ul=900.0,
            boluses_24h=0,
            prescribed_volume_ul=31.0,
            ordered_volume_ul=ordered_ul,
            daily_limit_ug=1000.0,
            dose_24h_sources=["basal"],
            dose_24h_by_source_ug=np.array([15.0]),
            delivered_dose_total_ug=15.0,
            tip_concentration_ug_per_ml=500.0,
            reservoir_capacity_ul=1000.0,
            days_to_refill=1.5,
            next_refill=_header(typestore, t_alarm + 1.5 * 86400).stamp,
            next_change=_header(typestore, 0.0).stamp,
            active_bolus="",
            detail="alarm: OCCLUSION",
            ledger="new /tmp/dose_journal.jsonl",
        )

    # Ordered over the run: 40 µL (the program went on while the estop held the pump).
    put("/rig/dose", T0 + 1, dose(T0 + 1, 10.0))
    put("/rig/dose", t_alarm + 20, dose(t_alarm + 20, 50.0))
    put(
        "/rig/bench/faults",
        t_alarm + 30,
        FaultEvent(
            header=_header(ts, t_alarm + 30),
            kind="occlusion",
            active=False,
            magnitude=0.0,
            message="cleared",
        ),
    )
    bag.close()


def test_bag_reads_back_with_rosbags(tmp_path: Path, typestore: Any) -> None:
    path = tmp_path / "run"
    _write_run(path, typestore)
    assert (path / "metadata.yaml").is_file()
    mcap_files = list(path.glob("*.mcap"))
    assert len(mcap_files) == 1
    assert mcap_files[0].read_bytes()[:8] == b"\x89MCAP0\r\n"
    with Reader(path) as reader:
        assert reader.message_count == 12  # every message _write_run puts
        topics = {c.topic: c.msgtype for c in reader.connections}
        assert topics["/rig/pump/state"] == "pump_rig_interfaces/msg/PumpState"
        # The bag carries the full definition, so it is readable without pump_rig installed.
        state_conn = next(c for c in reader.connections if c.topic == "/rig/pump/state")
        assert state_conn.msgdef is not None and "delivered_volume_ul" in state_conn.msgdef.data


def test_report_measures_delivery_and_detection(tmp_path: Path, typestore: Any) -> None:
    path = tmp_path / "run"
    _write_run(path, typestore)
    report = read_report(path)
    assert report.device_delivered_ul == pytest.approx(30.0)
    assert report.prescribed_volume_ul == pytest.approx(31.0)
    fault = report.first_fault()
    assert fault is not None and fault.kind == "occlusion"
    alarm = report.first_alarm_after(fault.t_s, "OCCLUSION")
    assert alarm is not None
    assert alarm.t_s - fault.t_s == pytest.approx(1800.0)
    assert report.estop_engaged_s is not None
    assert report.pump_stopped_state == "ESTOPPED"
    assert report.pump_stopped_s is not None
    assert report.pump_stopped_s - fault.t_s == pytest.approx(1810.0)
    assert report.max_pressure_kpa == pytest.approx(12.0)
    text = format_report(report)
    assert "OCCLUSION from /rig/pressure_monitor after 30 min 00.0 s" in text
    assert "stopped by the motor driver on the estop after 30 min 10.0 s" in text
    # Prescribed is what was ordered over the run, also while stopped; every fault is listed.
    assert report.ordered_ul == pytest.approx(40.0)
    assert "30.000 µL as reported by the device (75.0 % of prescribed)" in text
    assert (
        "occlusion injected at +1 h 00 min" in text and "occlusion cleared at +1 h 30 min" in text
    )


def test_existing_bag_is_never_overwritten(tmp_path: Path, typestore: Any) -> None:
    path = tmp_path / "run"
    _write_run(path, typestore)
    before = sorted((p.name, p.stat().st_size) for p in path.iterdir())
    with pytest.raises(RecordingError, match="already exists"):
        BagRecording(path, typestore)
    assert sorted((p.name, p.stat().st_size) for p in path.iterdir()) == before


def test_report_errors_name_the_bag(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="does not exist"):
        read_report(tmp_path / "nope")
    (tmp_path / "junk").mkdir()
    with pytest.raises(ReportError, match="cannot open bag"):
        read_report(tmp_path / "junk")


def test_split_names() -> None:
    assert next_split_path(Path("/r/run")) == Path("/r/run_1")
    assert next_split_path(Path("/r/run_1")) == Path("/r/run_2")
