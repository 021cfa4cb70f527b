"""The NE-1000 firmware emulator against the manual, bytes in and bytes out."""

from __future__ import annotations

import re

import pytest

from pump_rig.core.faults import FaultKind
from pump_rig.core.ne1000_emulator import NE1000Emulator
from pump_rig.core.ne1000_protocol import (
    ETX,
    STX,
    AlarmType,
    Prompt,
    Reply,
    VolumeUnits,
    decode_reply,
    encode_safe_packet,
    rate_limits_ul_per_h,
)
from pump_rig.core.pump_types import Direction, PumpRunState
from pump_rig.core.serial_faults import SerialFaultConfig
from tests.core.pump_fixtures import CountingNE1000Pump, make_ne1000_pump, ne1000_display


class Bench:
    """An emulator on a pump, with a hand-advanced clock."""

    def __init__(self, **kwargs: object) -> None:
        self.pump: CountingNE1000Pump = make_ne1000_pump()
        self.emu = NE1000Emulator(self.pump, **kwargs)  # type: ignore[arg-type]
        self.t = 0.0

    def raw(self, data: bytes, dt: float = 0.0) -> bytes:
        self.t += dt
        return self.emu.feed(data, self.t)

    def send(self, text: str, dt: float = 0.0) -> Reply:
        out = self.raw(text.encode() + b"\r", dt)
        return decode_reply(out, safe=False)

    def safe(self, data: bytes, dt: float = 0.0) -> Reply:
        return decode_reply(self.raw(encode_safe_packet(data), dt), safe=True)

    def later(self, dt: float) -> bytes:
        self.t += dt
        return self.emu.due_output(self.t)


@pytest.fixture
def bench() -> Bench:
    return Bench()


def ok(reply: Reply, prompt: Prompt = Prompt.STOPPED, data: str = "") -> None:
    assert (reply.prompt, reply.alarm, reply.error, reply.data) == (prompt, None, None, data)


def error(reply: Reply, code: str) -> None:
    assert reply.error is not None and reply.error.value == code, reply


# ---- basic mode and addressing -------------------------------------------------------------------


def test_basic_mode_strips_spaces_and_control_characters_and_upper_cases(bench: Bench) -> None:
    assert bench.raw(b" v e r\x01\r") == bytes([STX]) + b"00SNE1000V3.928" + bytes([ETX])
    assert bench.raw(b"\r") == bytes([STX]) + b"00S" + bytes([ETX])  # a status query
    ok(bench.send("dia"), data="14.43")


def test_addresses(bench: Bench) -> None:
    other = Bench(address=12)
    assert other.raw(b"VER\r") == b""  # no address: the pump at 0 is meant
    assert other.raw(b"0VER\r") == b""
    assert decode_reply(other.raw(b"12VER\r"), safe=False).address == 12
    assert other.raw(b"*VER\r") != b""  # system command: every pump obeys
    ok(other.send("12ADR13"))
    assert other.send("13").address == 13
    assert other.raw(b"12\r") == b""
    error(bench.send("ADR100"), "OOR")
    ok(bench.send("ADR"), data="00")


def test_unknown_commands_and_bad_arguments(bench: Bench) -> None:
    error(bench.send("FOO"), "")
    error(bench.send("XY"), "")
    error(bench.send("VER1"), "")
    error(bench.send("DIR UP"), "")
    error(bench.send("DIA 12345"), "OOR")  # more than 4 digits
    error(bench.send("DIA 1.2345"), "OOR")
    error(bench.send("RAT 1.0XH"), "")
    error(bench.send("RUN 99"), "OOR")
    error(bench.send("RUN 2"), "NA")  # program phases are not modelled
    error(bench.send("DIR STK"), "NA")


# ---- settings ------------------------------------------------------------------------------------


def test_diameter_selects_volume_units_and_bounds_the_rate(bench: Bench) -> None:
    ok(bench.send("DIA 14.00"))
    ok(bench.send("VOL"), data="0.000UL")
    ok(bench.send("DIA 14.01"))
    ok(bench.send("VOL"), data="0.000ML")
    error(bench.send("DIA 0.05"), "OOR")
    error(bench.send("DIA 50.01"), "OOR")
    ok(bench.send("DIA 14.43"))
    low, high = rate_limits_ul_per_h(14.43)
    assert 6.8 < low < 6.9 and 500_000 < high < 501_000
    error(bench.send("RAT 6.800 UH"), "OOR")
    ok(bench.send("RAT 6.900 UH"))
    ok(bench.send("RAT 500.0 MH"))
    error(bench.send("RAT 501.0 MH"), "OOR")
    ok(bench.send("RAT"), data="500.0MH")
    assert bench.pump.rate_ul_per_h == 500_000.0


def test_volume_units_and_target(bench: Bench) -> None:
    ok(bench.send("VOL UL"))
    ok(bench.send("VOL 12.5"))
    ok(bench.send("VOL"), data="12.50UL")
    ok(bench.send("VOL ML"))
    ok(bench.send("VOL"), data="0.012ML")  # the same 12.5 µL, cut to 4 digits
    assert bench.emu.volume_units is VolumeUnits.ML


def test_direction(bench: Bench) -> None:
    ok(bench.send("DIR"), data="INF")
    ok(bench.send("DIR WDR"))
    ok(bench.send("DIR"), data="WDR")
    ok(bench.send("DIR REV"))
    ok(bench.send("DIR"), data="INF")


# ---- running -------------------------------------------------------------------------------------


def test_run_needs_a_rate_and_runs_to_the_volume_target(bench: Bench) -> None:
    error(bench.send("RUN"), "NA")  # the pump has no rate yet
    ok(bench.send("RAT 36.00 MH"))  # 10 µL/s
    ok(bench.send("VOL UL"))
    ok(bench.send("VOL 25"))
    ok(bench.send("RUN"), Prompt.INFUSING)
    ok(bench.send("RUN"), Prompt.INFUSING)  # already running: nothing changes
    ok(bench.send("", dt=1.0), Prompt.INFUSING)
    ok(bench.send("", dt=2.0), Prompt.STOPPED)  # target reached: the program ends
    moved = bench.pump.snapshot(bench.t).delivered_ul
    assert moved <= 25.0 and 25.0 - moved < bench.pump.ul_per_step
    ok(bench.send("DIS"), data=f"I{ne1000_display(moved):.2f}W0.000UL")
    assert bench.pump.starts == 1


def test_stop_pauses_then_stops_and_run_resumes_the_rest(bench: Bench) -> None:
    for text in ("RAT 36.00 MH", "VOL UL", "VOL 20"):
        ok(bench.send(text))
    ok(bench.send("RUN"), Prompt.INFUSING)
    ok(bench.send("STP", dt=1.0), Prompt.PAUSED)
    error(bench.send("VOL 5"), "NA")
    error(bench.send("DIA 10"), "NA")
    ok(bench.send("RUN"), Prompt.INFUSING)  # resumes: the rest of the 20 µL
    ok(bench.send("", dt=1.5), Prompt.STOPPED)
    moved = bench.pump.snapshot(bench.t).delivered_ul
    assert 20.0 - bench.pump.ul_per_step < moved <= 20.0
    ok(bench.send("STP"), Prompt.STOPPED)
    ok(bench.send("RUN"), Prompt.INFUSING)  # from stopped: the full target again
    ok(bench.send("STP", dt=0.5), Prompt.PAUSED)
    ok(bench.send("STP"), Prompt.STOPPED)


def test_rate_changes_while_pumping_are_not_kept_over_a_power_loss(bench: Bench) -> None:
    ok(bench.send("RAT 36.00 MH"))
    ok(bench.send("RUN"), Prompt.INFUSING)
    ok(bench.send("RAT 72.00"), Prompt.INFUSING)
    assert bench.pump.rate_ul_per_h == 72_000.0
    error(bench.send("RAT 1.200 MM"), "NA")  # units cannot change while pumping
    bench.emu.power_interrupt(bench.t + 0.1)
    bench.t += 0.1
    assert bench.send("RAT").alarm is AlarmType.RESET
    ok(bench.send("RAT"), data="36.00MH")
    assert bench.pump.rate_ul_per_h == 36_000.0


def test_direction_while_pumping_only_when_pumping_continuously(bench: Bench) -> None:
    ok(bench.send("RAT 36.00 MH"))
    ok(bench.send("RUN"), Prompt.INFUSING)
    ok(bench.send("DIR WDR", dt=1.0), Prompt.WITHDRAWING)
    ok(bench.send("DIS", dt=0.5), Prompt.WITHDRAWING, data=bench.send("DIS").data)
    infused, withdrawn = bench.emu.dispensed_ul
    assert 9.9 < infused <= 10.0 and 4.9 < withdrawn <= 5.0
    ok(bench.send("STP"), Prompt.PAUSED)
    ok(bench.send("STP"))
    ok(bench.send("VOL 5"))
    ok(bench.send("RUN"), Prompt.WITHDRAWING)
    error(bench.send("DIR INF"), "NA")


def test_dispensed_counters_display_and_clear(bench: Bench) -> None:
    ok(bench.send("RAT 36.00 MH"))
    ok(bench.send("RUN"), Prompt.INFUSING)
    bench.send("STP", dt=1.5)
    bench.send("STP")
    infused, _ = bench.emu.dispensed_ul
    ok(bench.send("DIS"), data=f"I{ne1000_display(infused / 1000):.3f}W0.000ML")
    ok(bench.send("VOL UL"))
    assert re.fullmatch(r"I14\.9\dW0\.000UL", bench.send("DIS").data)
    ok(bench.send("CLD INF"))
    ok(bench.send("DIS"), data="I0.000W0.000UL")
    error(bench.send("CLD"), "")


def test_purge_runs_at_the_maximum_rate_until_stopped(bench: Bench) -> None:
    ok(bench.send("RAT 36.00 MH"))
    ok(bench.send("PUR"), Prompt.PURGING)
    assert bench.pump.snapshot(bench.t).flow_ul_per_h == pytest.approx(
        rate_limits_ul_per_h(14.43)[1]
    )
    error(bench.send("PUR"), "NA")
    ok(bench.send("STP", dt=0.1))
    assert bench.pump.rate_ul_per_h == 36_000.0


# ---- alarms --------------------------------------------------------------------------------------


def test_stall_raises_alarm_s_which_the_next_command_reports_instead_of_executing(
    bench: Bench,
) -> None:
    ok(bench.send("RAT 36.00 MH"))
    ok(bench.send("RUN"), Prompt.INFUSING)
    bench.t += 0.5
    bench.pump.set_stalled(bench.t, True)
    assert bench.later(0.01) == b""  # Basic mode: the pump only ever answers
    assert bench.pump.snapshot(bench.t).state is PumpRunState.IDLE
    assert bench.emu.alarm is AlarmType.STALLED
    reply = bench.send("RAT 72.00")
    assert reply.alarm is AlarmType.STALLED and reply.prompt is None
    assert bench.pump.rate_ul_per_h == 36_000.0  # not executed
    ok(bench.send(""))  # acknowledged
    assert bench.emu.alarm is None


def test_a_syringe_end_stalls_the_motor(bench: Bench) -> None:
    small = Bench()
    small.pump.load(0.0, 1.0)
    ok(small.send("RAT 36.00 MH"))
    ok(small.send("RUN"), Prompt.INFUSING)
    assert small.send("", dt=1.0).alarm is AlarmType.STALLED


def test_power_interrupt(bench: Bench) -> None:
    ok(bench.send("RAT 36.00 MH"))
    ok(bench.send("RUN"), Prompt.INFUSING)
    bench.t += 1.0
    bench.emu.power_interrupt(bench.t)
    assert bench.pump.snapshot(bench.t).state is PumpRunState.IDLE
    assert bench.emu.dispensed_ul == (0.0, 0.0)
    assert bench.send("DIS").alarm is AlarmType.RESET
    ok(bench.send("DIS"), data="I0.000W0.000ML")
    ok(bench.send("DIA"), data="14.43")  # settings are in non-volatile memory


# ---- safe mode -----------------------------------------------------------------------------------


def test_safe_mode_on_and_off_with_the_manuals_packet(bench: Bench) -> None:
    reply = bench.safe(b"SAF10")  # understood in Basic mode; answered in Safe mode
    assert reply == Reply(0, Prompt.STOPPED) and bench.emu.safe_mode
    assert bench.raw(b"VER\r") == b""  # Basic commands are not packets
    ok(bench.safe(b"0VER"), data="NE1000V3.928")
    ok(bench.safe(b"SAF"), data="10")
    manual = bytes([0x02, 0x08]) + b"SAF0" + bytes([0x55, 0x43, 0x03])
    assert bench.raw(manual) == bytes([STX]) + b"00S" + bytes([ETX])
    assert not bench.emu.safe_mode


def test_safe_mode_bad_packets_get_com(bench: Bench) -> None:
    bench.safe(b"SAF10")
    packet = bytearray(encode_safe_packet(b"0RAT1.0MH"))
    packet[4] ^= 0x01
    reply = decode_reply(bench.raw(bytes(packet)), safe=True)
    assert reply.error is not None and reply.error.value == "COM"
    assert bench.pump.rate_ul_per_h == 0.0
    no_etx = encode_safe_packet(b"0VER")[:-1] + b"\x04"
    assert decode_reply(bench.raw(no_etx), safe=True).error is not None


def test_safe_mode_inter_byte_timeout_drops_an_incomplete_packet(bench: Bench) -> None:
    bench.safe(b"SAF10")
    packet = encode_safe_packet(b"0VER")
    assert bench.raw(packet[:4]) == b""
    assert bench.raw(packet[4:], dt=0.6) == b""  # the first half was dropped
    ok(bench.safe(b"0VER"), data="NE1000V3.928")


def test_safe_mode_comm_timeout_alarm_and_auto_alarm_packet() -> None:
    bench = Bench(safe_mode=True, safe_timeout_s=2)
    assert bench.later(10.0) == b""  # not armed until the first valid packet
    ok(bench.safe(b"RAT36.00MH"))
    ok(bench.safe(b"RUN"), Prompt.INFUSING)
    assert bench.later(1.9) == b""
    auto = bench.later(0.2)
    assert decode_reply(auto, safe=True) == Reply(0, alarm=AlarmType.COMM_TIMEOUT)
    assert bench.pump.snapshot(bench.t).state is PumpRunState.IDLE
    assert bench.emu.alarm is AlarmType.COMM_TIMEOUT  # the auto packet does not acknowledge
    assert bench.safe(b"").alarm is AlarmType.COMM_TIMEOUT
    ok(bench.safe(b""))


def test_safe_mode_auto_alarm_on_stall_and_power_up() -> None:
    bench = Bench(safe_mode=True)
    bench.safe(b"RAT36.00MH")
    bench.safe(b"RUN")
    bench.t += 0.3
    bench.pump.set_stalled(bench.t, True)
    assert decode_reply(bench.later(0.01), safe=True).alarm is AlarmType.STALLED
    bench.emu.power_interrupt(bench.t)
    assert decode_reply(bench.later(0.0), safe=True).alarm is AlarmType.RESET


# ---- serial faults -------------------------------------------------------------------------------


def test_serial_faults_on_the_reply_path(bench: Bench) -> None:
    bench.emu.set_fault(FaultKind.SERIAL_DROP, True)
    assert bench.raw(b"VER\r") == b""
    bench.emu.clear_faults()
    bench.emu.set_fault_config(SerialFaultConfig(delay_s=0.3))
    bench.emu.set_fault(FaultKind.SERIAL_DELAY, True)
    assert bench.raw(b"VER\r") == b"" and bench.emu.pending_replies == 1
    assert bench.later(0.31).endswith(b"NE1000V3.928" + bytes([ETX]))
    bench.emu.clear_faults()
    bench.emu.set_fault_config(SerialFaultConfig(partial_probability=1.0))
    bench.emu.set_fault(FaultKind.SERIAL_GARBAGE, True)
    partial = bench.raw(b"VER\r")
    assert partial and ETX not in partial[1:]  # cut short: no ETX
    assert bench.emu.active_faults == {FaultKind.SERIAL_GARBAGE}
    with pytest.raises(ValueError, match="not a serial byte fault"):
        bench.emu.set_fault(FaultKind.UNPLUG, True)
    bench.emu.reset_link()
    assert bench.emu.pending_replies == 0


# ---- what public client libraries written from the manual expect ---------------------------------


def test_replies_fit_what_manual_based_clients_parse(bench: Bench) -> None:
    """Independent checks of the shapes clients such as NESP-Lib rely on: two-digit address,
    a point in every number, ``I<f>W<f><units>``, ``NE<model>V<major>.<minor>``."""
    number = r"\d+\.\d*"
    # NESP-Lib starts every session with SAF0 in a Safe packet, answered in Basic mode.
    assert bench.raw(encode_safe_packet(b"0SAF0")) == bytes([STX]) + b"00S" + bytes([ETX])
    assert re.fullmatch(r"NE\d+(X\d*)?V\d+\.\d+", bench.send("0VER").data)
    assert re.fullmatch(number, bench.send("0DIA").data)
    ok(bench.send("0RAT1.5MH"))
    assert re.fullmatch(number + "[A-Z]+", bench.send("0RAT").data)
    ok(bench.send("0VOLUL"))
    ok(bench.send("0VOL1000"))
    assert bench.send("0VOL").data == "1000.UL"
    assert re.fullmatch(f"I{number}W{number}[A-Z]+", bench.send("0DIS").data)
    ok(bench.send("0CLDINF"))
    ok(bench.send("0DIRWDR"))
    assert Direction.WITHDRAW.value == bench.send("0DIR").data
    ok(bench.send("0DIRINF"))
    ok(bench.send("0RUN"), Prompt.INFUSING)
    ok(bench.send("0STP"), Prompt.PAUSED)
    assert bench.send("0").prompt is Prompt.PAUSED
