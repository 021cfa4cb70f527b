"""The NE-1000 codec, byte for byte, from the exchanges the manual documents."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from pump_rig.core.crc16 import crc16_ccitt, crc16_ccitt_false, crc16_xmodem
from pump_rig.core.ne1000_protocol import (
    ETX,
    STX,
    AlarmType,
    Command,
    ErrorCode,
    Prompt,
    ProtocolError,
    RateUnits,
    Reply,
    Request,
    Rounding,
    VolumeUnits,
    decode_reply,
    decode_safe_packet,
    encode_reply,
    encode_request,
    encode_safe_packet,
    format_number,
    parse_command_data,
    parse_diameter,
    parse_direction,
    parse_dispensed,
    parse_number,
    parse_rate,
    parse_safe_timeout,
    parse_version,
    parse_volume,
    rate_limits_ul_per_h,
    rate_setting,
    version_for_model,
    volume_setting,
    volume_units_for_diameter,
)
from pump_rig.core.pump_types import Direction
from pump_rig.core.stepper_protocol import crc16_ccitt as stepper_crc
from pump_rig.drivers.serial_link import LengthPrefixedFraming, StxEtxFraming


def basic(body: bytes) -> bytes:
    return bytes([STX]) + body + bytes([ETX])


# ---- checksum -----------------------------------------------------------------------------------


def test_crc_variants_check_values_and_the_manuals_safe_packet() -> None:
    assert crc16_ccitt_false(b"123456789") == 0x29B1
    assert crc16_xmodem(b"123456789") == 0x31C3
    assert stepper_crc is crc16_ccitt_false  # the stepper protocol's name still works
    assert crc16_ccitt(b"SAF0", init=0) == 0x5543
    # Manual: "To return the pump to Basic mode ... (0x2) (0x8) SAF0 (0x55) (0x43) (0x3)"
    manual = bytes([0x02, 0x08]) + b"SAF0" + bytes([0x55, 0x43, 0x03])
    assert encode_request(Request(Command.SAFE_MODE, "0"), safe=True) == manual
    assert decode_safe_packet(manual) == b"SAF0"
    with pytest.raises(ValueError):
        crc16_ccitt(b"", init=0x10000)


# ---- requests -----------------------------------------------------------------------------------


def test_basic_requests() -> None:
    assert encode_request(Request(Command.DIAMETER, "14.43", address=0), safe=False) == (
        b"0DIA14.43\r"
    )
    assert encode_request(Request(Command.RATE, "2.058UM", address=12), safe=False) == (
        b"12RAT2.058UM\r"
    )
    assert encode_request(Request(Command.STATUS), safe=False) == b"\r"
    assert encode_request(Request(Command.ADDRESS, "1", system=True), safe=False) == b"*ADR1\r"
    with pytest.raises(ValueError):
        Request(Command.DIAMETER, "14 43")
    with pytest.raises(ValueError):
        Request(Command.DIAMETER, address=100)
    with pytest.raises(ValueError):
        Request(Command.STATUS, "X")
    with pytest.raises(ValueError):
        Request(Command.RUN, system=True, address=1)


def test_safe_requests_carry_length_and_crc_of_the_command_data() -> None:
    packet = encode_request(Request(Command.DISPENSED, address=0), safe=True)
    assert packet[:2] == bytes([STX, 8]) and packet[2:6] == b"0DIS"
    assert int.from_bytes(packet[6:8], "big") == crc16_xmodem(b"0DIS")
    assert packet[-1] == ETX and len(packet) == 1 + packet[1]


def test_command_data_is_split_the_way_the_pump_reads_it() -> None:
    parsed = parse_command_data(b" 0 dia 14.43\x01")
    assert (parsed.address, parsed.system, parsed.command, parsed.argument) == (
        0,
        False,
        "DIA",
        "14.43",
    )
    parsed = parse_command_data(b"*ADR1")
    assert parsed.system and parsed.address is None and parsed.command == "ADR"
    parsed = parse_command_data(b"")
    assert (parsed.address, parsed.command, parsed.argument) == (None, "", "")
    assert parse_command_data(b"7").address == 7
    assert parse_command_data(b"RAT1.5MH").argument == "1.5MH"


# ---- replies ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "reply"),
    [
        (b"00S", Reply(0, Prompt.STOPPED)),
        (b"00I", Reply(0, Prompt.INFUSING)),
        (b"07W", Reply(7, Prompt.WITHDRAWING)),
        (b"00X", Reply(0, Prompt.PURGING)),
        (b"00P", Reply(0, Prompt.PAUSED)),
        (b"00SNE1000V3.928", Reply(0, Prompt.STOPPED, data="NE1000V3.928")),
        (b"00SI0.974W0.959ML", Reply(0, Prompt.STOPPED, data="I0.974W0.959ML")),
        (b"00A?R", Reply(0, alarm=AlarmType.RESET)),
        (b"99A?S", Reply(99, alarm=AlarmType.STALLED)),
        (b"00S?OOR", Reply(0, Prompt.STOPPED, error=ErrorCode.OUT_OF_RANGE)),
        (b"00I?NA", Reply(0, Prompt.INFUSING, error=ErrorCode.NOT_APPLICABLE)),
        (b"00S?", Reply(0, Prompt.STOPPED, error=ErrorCode.UNRECOGNIZED)),
        (b"00S?COM", Reply(0, Prompt.STOPPED, error=ErrorCode.COMMUNICATION)),
        (b"00T?IGN", Reply(0, Prompt.PAUSE_PHASE, error=ErrorCode.IGNORED)),
    ],
)
def test_reply_frames_both_modes(frame: bytes, reply: Reply) -> None:
    assert encode_reply(reply, safe=False) == basic(frame)
    assert decode_reply(basic(frame), safe=False) == reply
    packet = encode_reply(reply, safe=True)
    assert packet == bytes([STX, len(frame) + 4]) + frame + crc16_xmodem(frame).to_bytes(
        2, "big"
    ) + bytes([ETX])
    assert decode_reply(packet, safe=True) == reply


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"00S",  # no STX/ETX
        basic(b""),
        basic(b"0S"),
        basic(b"00"),
        basic(b"00Q"),  # unknown prompt
        basic(b"00A?Q"),  # unknown alarm
        basic(b"00A?SX"),  # alarm with data
        basic(b"00AS"),
        basic(b"00S?XYZ"),  # unknown error
        basic(b"00S?OORX1"),
        basic(b"00Si0.974"),  # lower case
        basic(b"00S 1.0"),
        basic(b"00S\x0212"),
        basic(b"A0S"),
        basic(b"00S" + b"1" * 80),
        bytes([STX]) + b"00S",
        b"00S" + bytes([ETX]),
    ],
)
def test_malformed_basic_replies_raise_protocol_error(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_reply(frame, safe=False)


def test_safe_replies_are_checked_for_length_etx_and_crc() -> None:
    good = encode_reply(Reply(0, Prompt.STOPPED, data="14.43"), safe=True)
    assert decode_reply(good, safe=True).data == "14.43"
    bad_crc = good[:-2] + bytes([good[-2] ^ 1]) + good[-1:]
    bad_length = good[:1] + bytes([good[1] + 1]) + good[2:]
    no_etx = good[:-1] + b"\x04"
    for frame in (bad_crc, bad_length, no_etx, good[:-1], good + b"\x03", basic(b"00S")):
        with pytest.raises(ProtocolError):
            decode_reply(frame, safe=True)
    with pytest.raises(ProtocolError):
        decode_reply("00S", safe=True)  # type: ignore[arg-type]


def crc_with_byte(value: int) -> bytes:
    """A DIS reply body whose CRC holds ``value`` (ETX or STX) in one of its bytes."""
    for n in range(10_000):
        body = f"00SI{n / 1000:.3f}W0.000UL".encode()
        if value in crc16_xmodem(body).to_bytes(2, "big"):
            return body
    raise AssertionError("no such body")


@pytest.mark.parametrize("special", [ETX, STX])
def test_crc_bytes_equal_to_etx_or_stx_are_framed_by_length(special: int) -> None:
    body = crc_with_byte(special)
    reply = decode_reply(basic(body), safe=False)
    packet = encode_reply(reply, safe=True)
    assert special in packet[-3:-1]
    deframer = LengthPrefixedFraming(crc16_xmodem).deframer()
    deframer.push(b"\x00junk" + packet + packet[: len(packet) // 2])
    assert deframer.pop() == packet
    assert deframer.pop() is None
    assert deframer.take_errors() == 1  # the junk before the packet
    assert decode_reply(packet, safe=True) == reply


def test_length_framing_survives_a_corrupted_length_byte() -> None:
    good = encode_reply(Reply(0, Prompt.STOPPED, data="I1.000W0.000UL"), safe=True)
    corrupted = good[:1] + bytes([200]) + good[2:]
    deframer = LengthPrefixedFraming(crc16_xmodem).deframer()
    deframer.push(corrupted + good)
    assert deframer.pop() == good  # the long "packet" was junk: the valid one is found
    assert deframer.take_errors() >= 1


def test_stx_etx_framing_skips_junk_and_packets_cut_short() -> None:
    deframer = StxEtxFraming().deframer()
    deframer.push(b"noise" + basic(b"00S")[:3] + basic(b"00I") + b"\x03" + basic(b"00W"))
    assert deframer.pop() == basic(b"00I")
    assert deframer.pop() == basic(b"00W")
    assert deframer.pop() is None
    assert deframer.take_errors() == 3  # noise, the cut packet, the stray ETX
    deframer.push(bytes([STX]) + b"0" * 400)
    assert deframer.pop() is None
    deframer.reset()
    deframer.push(basic(b"00S"))
    assert deframer.pop() == basic(b"00S")


# ---- query replies -------------------------------------------------------------------------------


def test_query_reply_parsers() -> None:
    assert parse_diameter("14.43").value == Decimal("14.43")
    rate = parse_rate("3600.UH")
    assert rate.units is RateUnits.UL_PER_HOUR and rate.ul_per_h == 3600.0
    assert parse_rate("1.000MM").ul_per_h == 60_000.0
    assert parse_rate("2.058UM").ul_per_h == pytest.approx(123.48)
    assert parse_rate("0.500MH").ul_per_h == 500.0
    volume = parse_volume("1.000ML")
    assert volume.units is VolumeUnits.ML and volume.ul == 1000.0
    assert parse_volume("10.00UL").ul == 10.0
    assert parse_direction("INF") is Direction.INFUSE
    assert parse_direction("WDR") is Direction.WITHDRAW
    dispensed = parse_dispensed("I0.974W0.959ML")
    assert dispensed.infused_ul == 974.0 and dispensed.withdrawn_ul == 959.0
    assert dispensed.net_ul == pytest.approx(15.0)
    assert dispensed.resolution_ul == 1.0
    assert parse_dispensed("I12.34W1.000UL").resolution_ul == pytest.approx(0.01)
    version = parse_version("NE1000V3.928")
    assert (version.model, version.firmware) == ("NE-1000", "3.928")
    assert parse_version("NE500V3.919").model == "NE-500"
    assert parse_version("NE1002XV3.74").model == "NE-1002X"
    assert version_for_model("NE-300", "3.928").text == "NE300V3.928"
    assert parse_safe_timeout("10") == 10
    for parser, text in [
        (parse_rate, "3600UHX"),
        (parse_rate, "36.00UX"),
        (parse_rate, "12345.UH"),
        (parse_volume, "1.000MM"),
        (parse_direction, "REV"),
        (parse_dispensed, "I0.974W0.959"),
        (parse_dispensed, "I0.9745W0.959ML"),
        (parse_dispensed, "W0.959I0.974ML"),
        (parse_version, "NE1000"),
        (parse_safe_timeout, "256"),
        (parse_diameter, "1.2.3"),
    ]:
        with pytest.raises(ProtocolError):
            parser(text)


# ---- numbers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "rounding", "text"),
    [
        (14.43, Rounding.DOWN, "14.43"),  # decimal, not binary: 14.43 stays 14.43
        (0.1 + 0.2, Rounding.DOWN, "0.300"),
        (12.345, Rounding.DOWN, "12.34"),
        (12.345, Rounding.NEAREST, "12.35"),
        (12.341, Rounding.UP, "12.35"),
        (9.9996, Rounding.NEAREST, "10.00"),  # a carry costs a decimal
        (9.9996, Rounding.DOWN, "9.999"),
        (0.0004, Rounding.DOWN, "0.000"),
        (0.0005, Rounding.NEAREST, "0.001"),
        (1234.5, Rounding.DOWN, "1234"),
        (9999.4, Rounding.NEAREST, "9999"),
        (120, Rounding.NEAREST, "120.0"),
        (0, Rounding.NEAREST, "0.000"),
    ],
)
def test_format_number(value: float, rounding: Rounding, text: str) -> None:
    number = format_number(value, rounding)
    assert number.text == text
    assert parse_number(text).value == number.value


def test_format_number_limits_and_display_style() -> None:
    assert format_number(1234, Rounding.DOWN, display=True).text == "1234."
    assert format_number(12.3, Rounding.DOWN, display=True).text == "12.30"
    for bad in (9999.5, 10_000.0, -0.001, math.nan, math.inf, True):
        with pytest.raises(ValueError):
            format_number(bad, Rounding.NEAREST)
    for text in ("1234.", ".5", "0.974", "5"):
        parse_number(text)
    for text in ("", ".", "12345", "1.2345", "0.0001", "1,5", "-1", "1e3"):
        with pytest.raises(ProtocolError):
            parse_number(text)


def test_rate_setting_picks_the_most_precise_units() -> None:
    assert rate_setting(120.0).argument == "120.0UH"
    assert rate_setting(123.456).argument == "2.058UM"  # 123.48 µL/h beats 123.5
    assert rate_setting(15_000.0).argument == "250.0UM"  # exact; µL units preferred
    assert rate_setting(15_000.0, units=(RateUnits.ML_PER_HOUR,)).argument == "15.00MH"
    assert rate_setting(456_789.0).argument == "7613UM"
    assert rate_setting(1_234_567.0).argument == "20.58MM"
    setting = rate_setting(123.456, units=(RateUnits.UL_PER_HOUR,))
    assert setting.argument == "123.5UH" and setting.ul_per_h == 123.5
    for bad in (0.0, -1.0, math.nan, 1e12, 0.0001):
        with pytest.raises(ValueError):
            rate_setting(bad)


def test_volume_settings_round_down() -> None:
    assert volume_setting(10.0009, VolumeUnits.UL).number.text == "10.00"
    assert volume_setting(1234.56, VolumeUnits.UL).ul == 1234.0
    assert volume_setting(1234.56, VolumeUnits.ML).ul == 1234.0  # "1.234" mL
    assert volume_setting(0.0004, VolumeUnits.UL).ul == 0.0  # the caller must refuse this
    setting = volume_setting(5.5555, VolumeUnits.UL)
    assert setting.ul <= 5.5555 and setting.number.text == "5.555"
    with pytest.raises(ValueError):
        volume_setting(10_000.0, VolumeUnits.UL)


def test_units_and_rate_limits_follow_the_syringe() -> None:
    assert volume_units_for_diameter(14.0) is VolumeUnits.UL
    assert volume_units_for_diameter(14.01) is VolumeUnits.ML
    low, _ = rate_limits_ul_per_h(4.699)  # B-D 1 mL: 0.73 µL/h in the manual's table
    _, high = rate_limits_ul_per_h(26.59)  # B-D 60 mL: 1699 mL/h
    assert low == pytest.approx(0.73) and high == pytest.approx(1_699_000.0)


def test_encode_safe_packet_refuses_oversized_data() -> None:
    with pytest.raises(ValueError):
        encode_safe_packet(b"0" * 300)
