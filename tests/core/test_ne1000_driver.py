"""The NE-1000 serial path for real: driver -> SerialLink (pyserial) -> pty -> emulator -> pump.

Every fault ends with a typed ``DeviceError`` or a correct value, never a wrong value.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pump_rig.core.faults import FaultKind
from pump_rig.core.ne1000_emulator import NE1000Emulator
from pump_rig.core.ne1000_protocol import (
    ETX,
    STX,
    ErrorCode,
    Reply,
    decode_reply,
    encode_reply,
)
from pump_rig.core.pump_device import (
    DeviceAlarm,
    DeviceAlarmKind,
    DeviceDisconnected,
    DeviceError,
    DeviceProtocolError,
    DeviceRejected,
    DeviceState,
    DeviceTimeout,
    PumpDevice,
    PumpIdentity,
    PumpStatus,
)
from pump_rig.core.pump_types import Direction, PumpRunState
from pump_rig.core.serial_faults import SerialFaultConfig
from pump_rig.core.syringe_pump import PumpSnapshot
from pump_rig.drivers.ne1000_driver import NE1000Driver
from pump_rig.drivers.pty_device import ByteDeviceTap, PtySerialDevice
from tests.core.pump_fixtures import CountingNE1000Pump, make_ne1000_pump

TIMEOUT_S = 0.05  # per attempt; 3 attempts per call with the default 2 retries


@dataclass
class Rig:
    pump: CountingNE1000Pump
    emulator: NE1000Emulator
    device: PtySerialDevice
    lock: threading.Lock
    link_path: Path
    driver: NE1000Driver

    def configure_emulator(self, config: SerialFaultConfig) -> None:
        with self.lock:
            self.emulator.set_fault_config(config)

    def truth(self) -> PumpSnapshot:
        with self.lock:
            return self.pump.snapshot(time.monotonic())

    def close(self) -> None:
        self.driver.close()
        self.device.close()


def make_rig(
    tmp_path: Path,
    *,
    safe_mode: bool = False,
    address: int = 0,
    wrap: Callable[[NE1000Emulator], object] | None = None,
    safe_timeout_s: int = 10,
) -> Rig:
    lock = threading.Lock()
    pump = make_ne1000_pump(t0_s=time.monotonic())
    emulator = NE1000Emulator(pump, address=address, seed=3, t0_s=pump.t_s)
    link_path = tmp_path / "ne1000"
    hosted = wrap(emulator) if wrap is not None else emulator
    device = PtySerialDevice(hosted, time.monotonic, lock=lock, link_path=link_path)  # type: ignore[arg-type]
    device.start()
    driver = NE1000Driver.open(
        str(link_path),
        timeout_s=TIMEOUT_S,
        address=address,
        safe_mode=safe_mode,
        safe_timeout_s=safe_timeout_s,
    )
    return Rig(pump, emulator, device, lock, link_path, driver)


@pytest.fixture(params=[False, True], ids=["basic", "safe"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    rig = make_rig(tmp_path, safe_mode=request.param)
    yield rig
    rig.close()


@pytest.fixture
def basic_rig(tmp_path: Path) -> Iterator[Rig]:
    rig = make_rig(tmp_path)
    yield rig
    rig.close()


@pytest.fixture
def safe_rig(tmp_path: Path) -> Iterator[Rig]:
    rig = make_rig(tmp_path, safe_mode=True)
    yield rig
    rig.close()


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


FAST_UL_PER_H = 360_000.0  # 100 µL/s: short runs in real time


def bolus(rig: Rig, volume_ul: float) -> PumpStatus:
    """Run a volume-limited bolus to its end and return the status that reports it."""
    driver = rig.driver
    driver.set_rate(FAST_UL_PER_H)
    driver.set_volume_limit(volume_ul)
    driver.start()
    wait_until(lambda: rig.truth().state is PumpRunState.IDLE, "the bolus to end")
    status = driver.status()
    assert status.state is DeviceState.IDLE and status.limit_reached
    return status


def assert_delivered_matches(rig: Rig, status: PumpStatus) -> None:
    """Delivered volume never above the plunger's, and within the display's last digit."""
    truth = rig.truth().delivered_ul
    assert status.delivered_ul <= truth + 1e-9
    assert truth - status.delivered_ul <= status.resolution_ul + rig.driver.clear_residual_ul


# ---- the seam ------------------------------------------------------------------------------------


def test_driver_is_a_pump_device(rig: Rig) -> None:
    device: PumpDevice = rig.driver  # mypy checks the structure
    assert device.port == str(rig.link_path)
    assert device.identify() == PumpIdentity("ne1000", "NE-1000", "3.928", "")


def test_identify_and_stats(rig: Rig) -> None:
    assert str(rig.driver.identify()) == "NE-1000 fw 3.928 (ne1000)"
    stats = rig.driver.stats
    assert stats.requests >= stats.replies > 0
    assert stats.mean_rtt_s is not None and stats.mean_rtt_s < TIMEOUT_S


# ---- normal operation ----------------------------------------------------------------------------


def test_configure_run_status_stop(rig: Rig) -> None:
    driver = rig.driver
    assert driver.configure_syringe(14.43) == 14.43
    assert driver.set_rate(FAST_UL_PER_H) == FAST_UL_PER_H
    assert driver.set_direction(Direction.INFUSE) is Direction.INFUSE
    assert driver.set_volume_limit(0.0) == 0.0
    driver.start()
    status = driver.status()
    assert status.state is DeviceState.RUNNING and status.direction is Direction.INFUSE
    assert status.rate_ul_per_h == FAST_UL_PER_H and status.remaining_ul is None
    wait_until(lambda: driver.status().delivered_ul > 2.0, "delivery to show")
    driver.stop()
    status = driver.status()
    assert status.state is DeviceState.IDLE and not status.limit_reached
    assert_delivered_matches(rig, status)
    assert rig.pump.starts == 1
    assert rig.emulator.dispensed_ul == (0.0, 0.0)  # cleared once the driver stopped it


def test_setpoints_are_rounded_to_the_device_and_read_back(rig: Rig) -> None:
    driver = rig.driver
    assert driver.configure_syringe(14.4349) == 14.43
    # 4 digits to nearest, in the units that keep the most: 2.058 µL/min beats 123.5 µL/h.
    assert driver.set_rate(123.456) == pytest.approx(123.48)
    assert rig.truth().rate_ul_per_h == pytest.approx(123.48)
    assert driver.set_rate(120.0) == 120.0
    assert driver.set_rate(456_789.0) == pytest.approx(456_780.0)  # 7613 µL/min
    # Volume limits round down: the pump never pumps more than asked.
    assert driver.set_volume_limit(10.0009) == 10.0
    assert driver.set_volume_limit(1234.56) == 1234.0
    assert driver.set_volume_limit(12_345.6) == 12_340.0  # mL units beyond 9999 µL
    with pytest.raises(ValueError, match="below the device's smallest"):
        driver.set_volume_limit(0.0004)  # would round to 0 = "no limit"


def test_volume_limit_stops_the_run_and_delivered_volume_is_exact(rig: Rig) -> None:
    total = 0.0
    for volume in (5.0, 12.5, 0.75):
        before = rig.truth().delivered_ul
        status = bolus(rig, volume)
        moved = rig.truth().delivered_ul - before
        assert moved <= volume  # whole steps, never above the limit
        assert volume - moved < rig.pump.ul_per_step + 1e-9
        assert_delivered_matches(rig, status)
        rig.driver.stop()
        total += moved
    status = rig.driver.status()
    # Clearing the counters after each run drops what is below their last digit, no more.
    assert status.delivered_ul <= total + 1e-9
    assert total - status.delivered_ul <= rig.driver.clear_residual_ul + 1e-9
    assert rig.driver.clear_residual_ul <= 0.001 + 0.01 + 0.001


def test_rate_can_change_while_running(rig: Rig) -> None:
    driver = rig.driver
    driver.set_rate(3600.0)
    driver.start()
    assert driver.set_rate(7200.0) == 7200.0
    assert driver.status().rate_ul_per_h == 7200.0
    assert rig.truth().rate_ul_per_h == 7200.0
    with pytest.raises(DeviceRejected) as caught:
        driver.configure_syringe(10.0)  # DIA while pumping
    assert caught.value.code == "NA"
    assert driver.set_direction(Direction.INFUSE) is Direction.INFUSE  # unchanged: fine
    driver.stop()


def test_device_rejections_are_typed_with_their_code(rig: Rig) -> None:
    with pytest.raises(DeviceRejected) as caught:
        rig.driver.set_rate(900_000.0)  # above 500 mL/h for 14.43 mm
    assert caught.value.code == "OOR"
    with pytest.raises(DeviceRejected) as caught:
        rig.driver.configure_syringe(60.0)
    assert caught.value.code == "OOR"
    before = rig.driver.stats.requests
    for bad in (math.nan, math.inf, -1.0, 0.0):
        with pytest.raises(ValueError):
            rig.driver.set_rate(bad)
    assert rig.driver.stats.requests == before


def test_withdraw_counts_down(rig: Rig) -> None:
    bolus(rig, 20.0)
    rig.driver.stop()
    rig.driver.set_direction(Direction.WITHDRAW)
    status = bolus(rig, 5.0)
    assert status.direction is Direction.WITHDRAW
    assert_delivered_matches(rig, status)
    assert 14.9 < status.delivered_ul < 15.01


def test_another_pump_address(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, address=7)
    try:
        assert rig.driver.address == 7
        assert_delivered_matches(rig, bolus(rig, 2.0))
    finally:
        rig.close()


# ---- serial faults -------------------------------------------------------------------------------


def idle_with_history(rig: Rig) -> PumpStatus:
    """A finished bolus, left on the counters (not stopped by the driver): a known state."""
    status = bolus(rig, 7.0)
    assert_delivered_matches(rig, status)
    return status


def test_garbage_and_partial_frames_never_yield_a_wrong_status(rig: Rig) -> None:
    expected = idle_with_history(rig)
    rig.configure_emulator(SerialFaultConfig(garbage_probability=0.3, partial_probability=0.2))
    rig.device.set_fault(FaultKind.SERIAL_GARBAGE, True)
    good = 0
    for _ in range(8):
        try:
            status = rig.driver.status()
        except (DeviceProtocolError, DeviceTimeout):
            continue
        assert status.delivered_ul == expected.delivered_ul
        assert status.rate_ul_per_h == expected.rate_ul_per_h
        assert status.state is DeviceState.IDLE
        good += 1
    assert good >= 3
    assert rig.driver.stats.protocol_errors > 0


def test_only_partial_frames_give_a_typed_error(rig: Rig) -> None:
    expected = idle_with_history(rig)
    rig.configure_emulator(SerialFaultConfig(partial_probability=1.0))
    rig.device.set_fault(FaultKind.SERIAL_GARBAGE, True)
    with pytest.raises((DeviceProtocolError, DeviceTimeout)):
        rig.driver.status()
    rig.device.clear_faults()
    wait_until(lambda: rig.driver.status() == expected, "a clean status again")


def test_all_replies_corrupted_gives_a_protocol_error(rig: Rig) -> None:
    expected = idle_with_history(rig)
    rig.configure_emulator(SerialFaultConfig(garbage_probability=1.0))
    rig.device.set_fault(FaultKind.SERIAL_GARBAGE, True)
    with pytest.raises(DeviceProtocolError, match="corrupted"):
        rig.driver.status()
    rig.device.clear_faults()
    assert rig.driver.status() == expected


class DropAfter(ByteDeviceTap):
    """Drops the reply to the first request containing ``trigger`` and the ``more`` replies
    after it (the commands themselves reach the firmware)."""

    def __init__(self, inner: NE1000Emulator, trigger: bytes, more: int) -> None:
        super().__init__(inner)
        self.trigger = trigger
        self.to_drop = 0
        self.more = more
        self.armed = True

    def feed(self, data: bytes, t_s: float) -> bytes:
        out = self.inner.feed(data, t_s)
        if self.armed and self.trigger in data:
            self.armed = False
            self.to_drop = 1 + self.more
        if out and self.to_drop:
            self.to_drop -= 1
            return b""
        return out


@pytest.mark.parametrize("more", [0, 2, 1000])
def test_a_lost_run_reply_is_verified_not_resent(tmp_path: Path, more: int) -> None:
    rig = make_rig(tmp_path, wrap=lambda emulator: DropAfter(emulator, b"RUN", more))
    try:
        rig.driver.set_rate(3600.0)
        if more < 1000:
            rig.driver.start()  # the prompt and counters tell that the RUN was executed
        else:
            with pytest.raises(DeviceTimeout):
                rig.driver.start()  # nothing can be verified: an error, never a second RUN
        assert rig.pump.starts == 1
        assert rig.truth().state is PumpRunState.RUNNING
    finally:
        rig.close()


def test_runs_under_dropped_replies_start_once_each(rig: Rig) -> None:
    rig.driver.set_rate(3600.0)
    rig.configure_emulator(SerialFaultConfig(drop_probability=0.3))
    rig.device.set_fault(FaultKind.SERIAL_DROP, True)
    for _ in range(3):
        starts = rig.pump.starts
        with contextlib.suppress(DeviceError):
            rig.driver.start()
        assert rig.pump.starts - starts <= 1  # never a second RUN for one start()
        for _ in range(5):
            try:
                rig.driver.stop()
                break
            except DeviceError:
                continue
    rig.device.clear_faults()
    rig.driver.stop()
    assert_delivered_matches(rig, rig.driver.status())


def test_a_late_reply_is_used_and_its_copy_discarded(rig: Rig) -> None:
    expected = idle_with_history(rig)
    rig.configure_emulator(SerialFaultConfig(delay_s=0.08))
    rig.device.set_fault(FaultKind.SERIAL_DELAY, True)
    assert rig.driver.status() == expected
    rig.device.clear_faults()
    wait_until(
        lambda: rig.driver.status() == expected and rig.driver.stats.discarded_lines >= 1,
        "late copies to be discarded",
    )


def test_replies_later_than_all_retries_are_never_taken_for_a_newer_answer(rig: Rig) -> None:
    idle_with_history(rig)
    rig.configure_emulator(SerialFaultConfig(delay_s=0.3))
    rig.device.set_fault(FaultKind.SERIAL_DELAY, True)
    with pytest.raises(DeviceTimeout):
        rig.driver.status()  # replies with the old rate are still in flight
    rig.device.clear_faults()
    assert rig.driver.set_rate(77.0) == 77.0
    for _ in range(5):
        assert rig.driver.status().rate_ul_per_h == 77.0
    assert rig.driver.stats.discarded_lines >= 1


class ForgingDevice(ByteDeviceTap):
    """Before every real reply, a well-formed reply from another address. All skipped."""

    def outbound(self, out: bytes, t_s: float) -> bytes:
        if not out:
            return out
        forged = encode_reply(Reply(5, prompt=decode_reply(out, safe=False).prompt), safe=False)
        forged_dis = bytes([STX]) + b"05SI9.999W0.000UL" + bytes([ETX])
        return forged + forged_dis + out


def test_replies_from_another_address_are_skipped(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, wrap=ForgingDevice)
    try:
        status = bolus(rig, 3.0)
        assert_delivered_matches(rig, status)
        assert rig.driver.stats.discarded_lines >= 10
    finally:
        rig.close()


class NoisyInbound(ByteDeviceTap):
    """Corrupts one byte of the first Safe packet's data after the session started."""

    def __init__(self, inner: NE1000Emulator) -> None:
        super().__init__(inner)
        self.armed = False
        self.corrupted = 0

    def inbound(self, data: bytes, t_s: float) -> bytes:
        if self.armed and len(data) > 4 and data[0] == STX:
            self.armed = False
            self.corrupted += 1
            data = data[:3] + bytes([data[3] ^ 0x20]) + data[4:]
        return data


def test_safe_mode_request_damaged_on_the_way_in_gets_com_and_is_resent(tmp_path: Path) -> None:
    noisy: list[NoisyInbound] = []

    def wrap(emulator: NE1000Emulator) -> NoisyInbound:
        noisy.append(NoisyInbound(emulator))
        return noisy[0]

    rig = make_rig(tmp_path, safe_mode=True, wrap=wrap)
    try:
        noisy[0].armed = True
        before = rig.driver.stats
        assert rig.driver.set_rate(12.5) == 12.5
        after = rig.driver.stats
        assert noisy[0].corrupted == 1
        assert after.timeouts == before.timeouts  # COM made it resend at once
    finally:
        rig.close()


def test_safe_mode_crc_errors_never_yield_a_wrong_status(safe_rig: Rig) -> None:
    expected = idle_with_history(safe_rig)
    safe_rig.configure_emulator(SerialFaultConfig(garbage_probability=1.0))
    safe_rig.device.set_fault(FaultKind.SERIAL_GARBAGE, True)
    for _ in range(5):
        with pytest.raises((DeviceProtocolError, DeviceTimeout)):
            safe_rig.driver.status()
    safe_rig.device.clear_faults()
    assert safe_rig.driver.status() == expected


class DigitFlipper(ByteDeviceTap):
    """Basic mode's worst case: changes one digit of DIS data into another digit, leaving a
    perfectly well-formed frame (no checksum to catch it), in every ``period``-th reply."""

    def __init__(self, inner: NE1000Emulator, period: int = 3) -> None:
        super().__init__(inner)
        self.period = period
        self.count = 0

    def outbound(self, out: bytes, t_s: float) -> bytes:
        if b"W" not in out or not out.startswith(bytes([STX])):
            return out
        self.count += 1
        if self.count % self.period:
            return out
        body = bytearray(out)
        digits = [i for i, b in enumerate(body) if 0x30 <= b <= 0x39][2:]  # not the address
        position = digits[self.count % len(digits)]
        body[position] = 0x30 + (body[position] - 0x30 + 1 + self.count % 8) % 10
        return bytes(body)


@pytest.mark.parametrize("period", [2, 3, 5])
def test_basic_mode_flipped_digits_never_pass_as_delivered_volume(
    tmp_path: Path, period: int
) -> None:
    flippers: list[DigitFlipper] = []

    def wrap(emulator: NE1000Emulator) -> DigitFlipper:
        flippers.append(DigitFlipper(emulator, period=1_000_000))
        return flippers[0]

    rig = make_rig(tmp_path, wrap=wrap)
    try:
        expected = idle_with_history(rig)
        flippers[0].period = period
        good = 0
        for _ in range(12):
            try:
                status = rig.driver.status()
            except DeviceProtocolError:
                continue
            assert status.delivered_ul == expected.delivered_ul
            good += 1
        assert good >= (0 if period == 2 else 6)  # every other read flipped: no agreement
    finally:
        rig.close()


# ---- alarms --------------------------------------------------------------------------------------


def test_stall_alarm_stops_and_is_reported_until_cleared(rig: Rig) -> None:
    driver = rig.driver
    driver.set_rate(3600.0)
    driver.start()
    with rig.lock:
        rig.pump.set_stalled(time.monotonic(), True)
    wait_until(lambda: rig.truth().state is PumpRunState.IDLE, "the firmware to stop the motor")
    status = driver.status()
    assert status.state is DeviceState.STALLED and status.alarm is DeviceAlarmKind.STALLED
    assert not status.limit_reached
    assert_delivered_matches(rig, status)
    assert driver.status().alarm is DeviceAlarmKind.STALLED  # latched until cleared
    with rig.lock:
        rig.pump.set_stalled(time.monotonic(), False)
    driver.clear_alarm()
    status = driver.status()
    assert status.alarm is None and status.state is DeviceState.IDLE
    driver.start()
    assert driver.status().state is DeviceState.RUNNING


def test_a_command_answered_with_an_alarm_raises_it(rig: Rig) -> None:
    rig.driver.set_rate(3600.0)
    with rig.lock:
        rig.emulator.power_interrupt(time.monotonic())
    with pytest.raises(DeviceAlarm) as caught:
        rig.driver.start()  # RUN answered A?R: not executed
    assert caught.value.alarm is DeviceAlarmKind.POWER_RESET
    assert rig.pump.starts == 0


def test_power_interrupt_mid_run_counts_what_is_known(rig: Rig) -> None:
    driver = rig.driver
    driver.set_rate(FAST_UL_PER_H)
    driver.start()
    wait_until(lambda: driver.status().delivered_ul > 20.0, "some delivery")
    read = driver.status().delivered_ul
    with rig.lock:
        rig.emulator.power_interrupt(time.monotonic())
    truth = rig.truth().delivered_ul
    status = driver.status()
    assert status.alarm is DeviceAlarmKind.POWER_RESET and status.state is DeviceState.IDLE
    assert status.counter_lost_ul > 0.0
    assert read <= status.delivered_ul <= truth + 1e-9
    assert truth - status.delivered_ul <= status.counter_lost_ul + status.resolution_ul
    driver.clear_alarm()
    status = driver.status()
    assert status.alarm is None and status.counter_lost_ul > 0.0  # the bound stays


def test_safe_mode_comm_timeout_alarm(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, safe_mode=True, safe_timeout_s=1)  # the shortest there is
    try:
        rig.driver.set_rate(3600.0)
        rig.driver.start()
        wait_until(lambda: rig.emulator.alarm is not None, "the link time-out", timeout_s=3.0)
        status = rig.driver.status()
        assert status.alarm is DeviceAlarmKind.COMM_TIMEOUT
        assert status.state is DeviceState.IDLE
    finally:
        rig.close()


# ---- ports coming and going ----------------------------------------------------------------------


def test_missing_port_says_so() -> None:
    with pytest.raises(DeviceDisconnected, match="not found"):
        NE1000Driver.open("/nonexistent/ttyNE9")


def test_unplug_mid_run_then_replug_keeps_delivered_volume_continuous(rig: Rig) -> None:
    driver = rig.driver
    driver.set_rate(FAST_UL_PER_H)
    driver.start()
    before = driver.status().delivered_ul
    rig.device.set_fault(FaultKind.UNPLUG, True)
    with pytest.raises(DeviceDisconnected):
        driver.status()
    with pytest.raises(DeviceDisconnected, match="not found"):
        driver.reconnect()
    rig.device.set_fault(FaultKind.UNPLUG, False)
    driver.reconnect()
    status = driver.status()
    assert status.state is DeviceState.RUNNING
    assert status.delivered_ul > before
    driver.stop()
    status = driver.status()
    assert_delivered_matches(rig, status)
    assert status.counter_lost_ul == 0.0


def test_a_closed_driver_reports_disconnected(rig: Rig) -> None:
    rig.driver.close()
    with pytest.raises(DeviceDisconnected, match="not open"):
        rig.driver.status()


def test_error_codes_map_to_rejections() -> None:
    assert {code.value for code in ErrorCode} == {"", "NA", "OOR", "COM", "IGN"}
