"""The whole serial path, for real: driver -> SerialLink (pyserial) -> pty -> emulator -> pump."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pump_rig.core.faults import FaultKind
from pump_rig.core.pump_device import (
    DeviceDisconnected,
    DeviceProtocolError,
    DeviceRejected,
    DeviceTimeout,
)
from pump_rig.core.pump_types import Direction, PumpRunState
from pump_rig.core.stepper_emulator import DEFAULT_IDENTITY, SerialFaultConfig, StepperEmulator
from pump_rig.core.stepper_protocol import (
    AckReply,
    Command,
    DeviceState,
    DeviceStatus,
    ErrorCode,
    Identify,
    StatusReply,
    decode_reply,
    encode_reply,
    encode_request,
)
from pump_rig.core.syringe_pump import PumpSnapshot
from pump_rig.drivers.pty_device import ByteDeviceTap, PtySerialDevice
from pump_rig.drivers.serial_link import SerialLink
from pump_rig.drivers.stepper_driver import StepperPumpDriver
from tests.core.pump_fixtures import (
    MAX_RATE_UL_PER_H,
    CountingPump,
    make_pump,
    on_wire,
    pump_with_history,
    whole_steps,
)

TIMEOUT_S = 0.05  # per attempt; 3 attempts per call with the default 2 retries


# ---- the rig ----------------------------------------------------------------------------------


@dataclass
class Rig:
    pump: CountingPump
    emulator: StepperEmulator
    device: PtySerialDevice
    lock: threading.Lock
    link_path: Path
    driver: StepperPumpDriver

    def configure_emulator(self, config: SerialFaultConfig) -> None:
        with self.lock:
            self.emulator.set_fault_config(config)

    def pump_snapshot(self) -> PumpSnapshot:
        with self.lock:
            return self.pump.snapshot(time.monotonic())


def make_rig(tmp_path: Path, *, watchdog_s: float | None = None) -> Rig:
    lock = threading.Lock()
    pump = make_pump()
    emulator = StepperEmulator(pump, pressure_source=lambda t_s: 1.5, seed=3, watchdog_s=watchdog_s)
    link_path = tmp_path / "osp0"
    device = PtySerialDevice(emulator, time.monotonic, lock=lock, link_path=link_path)
    device.start()
    driver = StepperPumpDriver.open(str(link_path), timeout_s=TIMEOUT_S, first_seq=100)
    return Rig(pump, emulator, device, lock, link_path, driver)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = make_rig(tmp_path)
    yield rig
    rig.driver.close()
    rig.device.close()


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


HISTORY_UL = 1.234567  # a run to this volume limit at the maximum rate takes ~45 ms


def idle_with_history(rig: Rig) -> DeviceStatus:
    """Put the pump in a known, constant state and return its (clean) status."""
    driver = rig.driver
    driver.set_volume_limit(HISTORY_UL)
    driver.set_rate(MAX_RATE_UL_PER_H)
    driver.start()
    wait_until(
        lambda: driver.read_status().state is DeviceState.IDLE, "the run to end at its limit"
    )
    driver.set_rate(120.0)
    status = driver.read_status()
    ul_per_step = rig.pump.ul_per_step
    assert status.delivered_ul == on_wire(whole_steps(HISTORY_UL, ul_per_step) * ul_per_step)
    assert status.state is DeviceState.IDLE and status.limit_reached
    assert status.rate_ul_per_h == 120.0
    return status


# ---- normal operation ---------------------------------------------------------------------------


def test_port_is_the_symlink_to_the_pty(rig: Rig) -> None:
    assert rig.device.port == str(rig.link_path)
    assert rig.link_path.readlink() == Path(rig.device.slave_path)
    assert rig.device.slave_path.startswith("/dev/pts/")


def test_identify(rig: Rig) -> None:
    assert rig.driver.read_identity() == DEFAULT_IDENTITY
    stats = rig.driver.stats
    assert stats.requests >= 1 and stats.replies == 1
    assert stats.last_rtt_s is not None and stats.mean_rtt_s is not None


def test_configure_run_status_stop(rig: Rig) -> None:
    driver = rig.driver
    assert driver.configure_syringe(14.43) == 14.43
    assert driver.set_rate(3600.0) == 3600.0
    assert driver.set_direction(Direction.INFUSE) is Direction.INFUSE
    assert driver.set_volume_limit(0.0) == 0.0
    driver.start()
    status = driver.read_status()
    assert status.state is DeviceState.RUNNING
    assert status.direction is Direction.INFUSE
    assert status.rate_ul_per_h == 3600.0
    assert status.pressure_kpa == 1.5
    assert status.inner_diameter_mm == 14.43
    assert not status.limit_reached
    wait_until(lambda: driver.read_status().delivered_ul > 0.02, "delivery to show up")
    driver.stop()
    status = driver.read_status()
    assert status.state is DeviceState.IDLE
    snap = rig.pump_snapshot()  # idle: the pump's counter no longer moves
    assert status.delivered_ul == on_wire(snap.delivered_ul)
    assert status.remaining_ul == on_wire(snap.remaining_ul)
    assert status.steps == snap.steps
    assert rig.pump.starts == 1


def test_device_rejections_are_typed_with_their_code(rig: Rig) -> None:
    driver = rig.driver
    with pytest.raises(DeviceRejected) as caught:
        driver.start()  # rate still 0
    assert caught.value.code == ErrorCode.REFUSED
    with pytest.raises(DeviceRejected) as caught:
        driver.set_rate(1e7)
    assert caught.value.code == ErrorCode.OUT_OF_RANGE
    assert "uL/h" in caught.value.message
    driver.set_rate(10.0)
    driver.start()
    with pytest.raises(DeviceRejected) as caught:
        driver.configure_syringe(10.0)
    assert caught.value.code == ErrorCode.BUSY


def test_bad_arguments_are_refused_before_anything_is_sent(rig: Rig) -> None:
    before = rig.driver.stats.requests
    for bad in (math.nan, math.inf, -1.0):
        with pytest.raises(ValueError):
            rig.driver.set_rate(bad)
    assert rig.driver.stats.requests == before


# ---- serial faults ------------------------------------------------------------------------------


def test_garbage_is_retried_and_never_yields_a_wrong_status(rig: Rig) -> None:
    expected = idle_with_history(rig)
    rig.device.set_fault(FaultKind.SERIAL_GARBAGE, True)
    good = failed = 0
    for _ in range(20):
        try:
            status = rig.driver.read_status()
        except (DeviceProtocolError, DeviceTimeout):
            failed += 1
            continue
        assert status == expected
        good += 1
    assert good >= 8
    assert rig.driver.stats.protocol_errors > 0


def test_all_replies_corrupted_gives_a_protocol_error_after_bounded_retries(rig: Rig) -> None:
    expected = idle_with_history(rig)
    rig.configure_emulator(SerialFaultConfig(garbage_probability=1.0))
    rig.device.set_fault(FaultKind.SERIAL_GARBAGE, True)
    before = rig.driver.stats
    with pytest.raises(DeviceProtocolError, match="3 attempts"):
        rig.driver.read_status()
    after = rig.driver.stats
    assert after.requests - before.requests == 3
    assert after.replies == before.replies
    rig.device.clear_faults()
    assert rig.driver.read_status() == expected


def test_dropped_replies_time_out_but_the_command_ran_once(rig: Rig) -> None:
    rig.driver.set_rate(100.0)
    rig.device.set_fault(FaultKind.SERIAL_DROP, True)
    before = rig.driver.stats
    with pytest.raises(DeviceTimeout, match="3 attempts"):
        rig.driver.start()
    after = rig.driver.stats
    assert after.requests - before.requests == 3
    assert after.timeouts - before.timeouts == 3
    rig.device.clear_faults()
    # A timeout is not "not executed": the first RUN arrived; the retries were recognised.
    assert rig.driver.read_status().state is DeviceState.RUNNING
    assert rig.pump.starts == 1


def test_some_dropped_replies_are_recovered_by_retry(rig: Rig) -> None:
    expected = idle_with_history(rig)
    rig.configure_emulator(SerialFaultConfig(drop_probability=0.5))
    rig.device.set_fault(FaultKind.SERIAL_DROP, True)
    good = 0
    for _ in range(20):
        try:
            assert rig.driver.read_status() == expected
            good += 1
        except DeviceTimeout:
            pass
    assert good >= 10
    assert rig.driver.stats.timeouts > 0


def test_a_reply_late_by_one_retry_is_accepted_and_its_copy_discarded(rig: Rig) -> None:
    expected = idle_with_history(rig)
    rig.configure_emulator(SerialFaultConfig(delay_s=0.08))
    rig.device.set_fault(FaultKind.SERIAL_DELAY, True)
    assert rig.driver.read_status() == expected  # attempt 1's reply arrives during attempt 2
    rig.device.clear_faults()
    # attempt 2 got the repeated reply too; it comes later and must be dropped as stale
    wait_until(
        lambda: rig.driver.read_status() == expected and rig.driver.stats.discarded_lines >= 1,
        "the late copy to be discarded",
    )


def test_replies_later_than_all_retries_are_never_taken_for_a_newer_answer(rig: Rig) -> None:
    idle_with_history(rig)
    rig.configure_emulator(SerialFaultConfig(delay_s=0.3))
    rig.device.set_fault(FaultKind.SERIAL_DELAY, True)
    with pytest.raises(DeviceTimeout):
        rig.driver.read_status()  # three status replies with rate 120 are still in flight
    rig.device.clear_faults()
    assert rig.driver.set_rate(77.0) == 77.0

    def newest_rate_and_all_stale_dropped() -> bool:
        assert rig.driver.read_status().rate_ul_per_h == 77.0
        return rig.driver.stats.discarded_lines >= 3

    wait_until(newest_rate_and_all_stale_dropped, "the stale replies to arrive")


class ForgingDevice(ByteDeviceTap):
    """Before every real reply, a well-formed but wrong one: previous SEQ, then same SEQ with
    another command. Both must be skipped."""

    def outbound(self, out: bytes, t_s: float) -> bytes:
        forged = b""
        bogus = DeviceStatus(DeviceState.RUNNING, Direction.WITHDRAW, 999.0, -5.0, 1.0, 7, 99.0)
        for line in out.splitlines():
            seq = decode_reply(line).seq
            assert seq is not None
            forged += encode_reply(StatusReply((seq - 1) % 65536, bogus))
            forged += encode_reply(AckReply(seq, Command.RUN))
        return forged + out


def test_stale_and_mismatched_replies_are_skipped(tmp_path: Path) -> None:
    pump = pump_with_history(42.0, idle_at_s=time.monotonic())
    delivered_ul = on_wire(whole_steps(42.0, pump.ul_per_step) * pump.ul_per_step)
    with PtySerialDevice(ForgingDevice(StepperEmulator(pump)), time.monotonic) as device:
        driver = StepperPumpDriver.open(device.port, timeout_s=TIMEOUT_S, first_seq=7)
        try:
            for _ in range(5):
                status = driver.read_status()
                assert status.delivered_ul == delivered_ul
                assert status.direction is Direction.INFUSE
            assert driver.stats.discarded_lines >= 10  # more if a retry was needed
            assert driver.stats.replies == 5
        finally:
            driver.close()


class NoisyInbound(ByteDeviceTap):
    """Corrupts one byte of the first request that reaches the firmware (host -> device)."""

    def __init__(self, inner: StepperEmulator) -> None:
        super().__init__(inner)
        self.corrupted = False

    def inbound(self, data: bytes, t_s: float) -> bytes:
        if not self.corrupted and b">" in data:
            self.corrupted = True
            index = data.index(b">") + 1
            data = data[:index] + b"9" + data[index + 1 :]
        return data


def test_a_request_damaged_on_the_way_in_is_resent_at_once() -> None:
    pump = make_pump()
    with PtySerialDevice(NoisyInbound(StepperEmulator(pump)), time.monotonic) as device:
        # a generous timeout: the retransmission must come from the device's ER 10, not it
        driver = StepperPumpDriver.open(device.port, timeout_s=5.0, first_seq=65535)
        try:
            started = time.monotonic()
            assert driver.set_rate(12.5) == 12.5
            assert time.monotonic() - started < 4.0
            stats = driver.stats
            assert (stats.requests, stats.timeouts, stats.replies) == (2, 0, 1)
            assert driver.read_status().rate_ul_per_h == 12.5  # SEQ wrapped 65535 -> 0
        finally:
            driver.close()


# ---- ports coming and going ---------------------------------------------------------------------


def test_missing_port_says_so() -> None:
    with pytest.raises(DeviceDisconnected, match=r"serial port /nonexistent/ttyOSP9 not found"):
        SerialLink.open("/nonexistent/ttyOSP9")
    with pytest.raises(DeviceDisconnected, match="not found"):
        StepperPumpDriver.open("/nonexistent/ttyOSP9")


def test_unplug_mid_run_then_replug_via_the_symlink(rig: Rig) -> None:
    driver = rig.driver
    driver.set_rate(MAX_RATE_UL_PER_H)  # a microstep every ~1.5 ms: the counter shows progress
    driver.start()
    before = driver.read_status().delivered_ul
    rig.device.set_fault(FaultKind.UNPLUG, True)
    assert not rig.link_path.exists()
    with pytest.raises(DeviceDisconnected):
        driver.read_status()
    with pytest.raises(DeviceDisconnected, match="not found"):
        driver.reconnect()
    rig.device.set_fault(FaultKind.UNPLUG, False)
    assert rig.link_path.readlink() == Path(rig.device.slave_path)
    driver.reconnect()
    status = driver.read_status()
    assert status.state is DeviceState.RUNNING  # the firmware kept going (watchdog off)
    assert status.delivered_ul > before


def test_a_closed_link_reports_disconnected(rig: Rig) -> None:
    rig.driver.close()
    with pytest.raises(DeviceDisconnected, match="not open"):
        rig.driver.read_status()


def test_watchdog_stops_the_pump_when_the_host_goes_quiet(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, watchdog_s=0.2)
    try:
        rig.driver.set_rate(100.0)
        rig.driver.start()
        wait_until(lambda: rig.pump_snapshot().state is PumpRunState.IDLE, "the watchdog")
        status = rig.driver.read_status()
        assert status.state is DeviceState.IDLE
        assert "WDOG" in status.flags
    finally:
        rig.driver.close()
        rig.device.close()


# ---- the bare link ------------------------------------------------------------------------------


def test_serial_link_transact_read_line_and_reset(rig: Rig) -> None:
    rig.driver.close()
    with SerialLink.open(rig.device.port, timeout_s=TIMEOUT_S) as link:
        line = link.transact(encode_request(Identify(5)))
        assert line == encode_reply(decode_reply(line)).rstrip(b"\n")
        assert decode_reply(line).seq == 5
        with pytest.raises(DeviceTimeout):
            link.read_line()
        link.write(encode_request(Identify(6)))
        wait_until(lambda: link.read_line(timeout_s=0.5) != b"", "a reply line")
        link.reset_input()
        with pytest.raises(ValueError):
            link.transact(b">1 STA*604B\n", timeout_s=0.0)
