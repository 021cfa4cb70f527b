"""Fuzzing the NE-1000 reply path: random and mutated byte streams into the codec and framers,
and well-formed-but-wrong digits into the Basic mode driver. Never an unhandled exception,
never a wrong delivered volume reported as valid."""

from __future__ import annotations

import contextlib
import math
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pump_rig.core.crc16 import crc16_xmodem
from pump_rig.core.ne1000_emulator import NE1000Emulator
from pump_rig.core.ne1000_protocol import (
    ETX,
    STX,
    Prompt,
    ProtocolError,
    Reply,
    Rounding,
    decode_reply,
    decode_safe_packet,
    encode_reply,
    format_number,
    parse_dispensed,
    parse_number,
    parse_rate,
)
from pump_rig.core.pump_device import DeviceError
from pump_rig.drivers.pty_device import ByteDeviceTap
from pump_rig.drivers.serial_link import LengthPrefixedFraming, StxEtxFraming
from tests.core.test_ne1000_driver import bolus, make_rig

REPLIES = [
    Reply(0, Prompt.STOPPED, data="I0.974W0.959ML"),
    Reply(0, Prompt.INFUSING, data="I12.34W0.000UL"),
    Reply(3, Prompt.STOPPED, data="3600.UH"),
    Reply(0, Prompt.STOPPED, data="NE1000V3.928"),
    Reply(0, Prompt.WITHDRAWING),
]
reply_st = st.sampled_from(REPLIES)


@settings(max_examples=300)
@given(st.binary(max_size=80), st.booleans())
def test_random_bytes_decode_or_raise_protocol_error(data: bytes, safe: bool) -> None:
    try:
        reply = decode_reply(data, safe=safe)
    except ProtocolError:
        return
    assert encode_reply(reply, safe=safe) == data  # only exact frames decode


@settings(max_examples=300)
@given(
    reply_st,
    st.integers(min_value=0, max_value=40),
    st.integers(min_value=1, max_value=255),
    st.sampled_from(["change", "insert", "delete"]),
)
def test_safe_mode_single_byte_damage_never_decodes_to_another_reply(
    reply: Reply, index: int, delta: int, how: str
) -> None:
    packet = bytearray(encode_reply(reply, safe=True))
    index %= len(packet)
    if how == "change":
        packet[index] = (packet[index] + delta) % 256
    elif how == "insert":
        packet.insert(index, delta)
    else:
        del packet[index]
    try:
        decoded = decode_reply(bytes(packet), safe=True)
    except ProtocolError:
        return
    pytest.fail(f"damaged packet {bytes(packet)!r} decoded as {decoded!r}")


@settings(max_examples=200)
@given(st.lists(st.one_of(st.binary(max_size=12), reply_st), max_size=12))
def test_length_framing_yields_only_crc_valid_packets(parts: list[bytes | Reply]) -> None:
    stream = b"".join(encode_reply(p, safe=True) if isinstance(p, Reply) else p for p in parts)
    deframer = LengthPrefixedFraming(crc16_xmodem).deframer()
    frames = []
    for start in range(0, len(stream), 7):  # arriving in chunks
        deframer.push(stream[start : start + 7])
        while (frame := deframer.pop()) is not None:
            frames.append(frame)
    deframer.take_errors()
    for frame in frames:
        decode_safe_packet(frame)  # never raises: length, ETX and CRC all agree
    wanted = [p for p in parts if isinstance(p, Reply)]
    decoded = []
    for frame in frames:
        try:
            decoded.append(decode_reply(frame, safe=True))
        except ProtocolError:
            continue
    assert len(decoded) <= len(frames)
    if all(isinstance(p, Reply) for p in parts):
        assert decoded == wanted  # clean streams lose nothing


@settings(max_examples=200)
@given(st.binary(max_size=120))
def test_stx_etx_framing_never_raises_and_frames_are_packets(stream: bytes) -> None:
    deframer = StxEtxFraming().deframer()
    deframer.push(stream)
    while (frame := deframer.pop()) is not None:
        assert frame[0] == STX and frame[-1] == ETX
        assert STX not in frame[1:-1] and ETX not in frame[1:-1]
        with contextlib.suppress(ProtocolError):
            decode_reply(frame, safe=False)
    assert deframer.take_errors() >= 0


@given(st.floats(min_value=0.0, max_value=9999.4, allow_nan=False))
def test_number_formatting_rounds_the_way_it_says(value: float) -> None:
    exact = Decimal(repr(value))
    down = format_number(value, Rounding.DOWN)
    nearest = format_number(value, Rounding.NEAREST)
    assert down.value <= exact
    assert exact - down.value < down.resolution
    assert abs(nearest.value - exact) <= nearest.resolution / 2
    assert parse_number(down.text).value == down.value
    assert sum(c.isdigit() for c in nearest.text) <= 4


@settings(max_examples=300)
@given(st.text(alphabet="0123456789.IWUMLHXYZ", max_size=20))
def test_query_parsers_raise_only_protocol_error(text: str) -> None:
    for parser in (parse_dispensed, parse_rate, parse_number):
        try:
            value = parser(text)
        except ProtocolError:
            continue
        assert value is not None
        if parser is parse_dispensed:
            assert math.isfinite(value.net_ul)  # type: ignore[union-attr]


# ---- Basic mode, at the driver: well-formed lies -------------------------------------------------


class DigitLiar(ByteDeviceTap):
    """Rewrites chosen digits of chosen replies into other digits: the frames stay perfectly
    well-formed, as a Basic mode line fault can leave them (no checksum to catch it)."""

    def __init__(self, inner: NE1000Emulator) -> None:
        super().__init__(inner)
        self.plan: dict[int, tuple[int, int]] = {}
        self.count = 0

    def outbound(self, out: bytes, t_s: float) -> bytes:
        if not out.startswith(bytes([STX])):
            return out
        self.count += 1
        change = self.plan.get(self.count)
        if change is None:
            return out
        digits = [i for i, b in enumerate(out) if 0x30 <= b <= 0x39][2:]  # keep the address
        if not digits:
            return out
        position = digits[change[0] % len(digits)]
        body = bytearray(out)
        body[position] = 0x30 + (body[position] - 0x30 + change[1]) % 10
        return bytes(body)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.dictionaries(
        st.integers(min_value=1, max_value=40),
        st.tuples(st.integers(min_value=0, max_value=20), st.integers(min_value=1, max_value=9)),
        max_size=8,
    )
)
# Found by this test: the same digit lied in two consecutive replies (the RAT query and its
# confirmation) once passed as the pump's rate.
@example(plan={3: (0, 1), 4: (0, 1)})
def test_basic_mode_driver_never_reports_a_lied_delivered_volume(
    tmp_path_factory: pytest.TempPathFactory, plan: dict[int, tuple[int, int]]
) -> None:
    liars: list[DigitLiar] = []

    def wrap(emulator: NE1000Emulator) -> DigitLiar:
        liars.append(DigitLiar(emulator))
        return liars[0]

    rig = make_rig(tmp_path_factory.mktemp("fuzz"), wrap=wrap)
    try:
        expected = bolus(rig, 6.0)
        liars[0].count = 0
        liars[0].plan = plan
        for _ in range(4):
            try:
                status = rig.driver.status()
            except DeviceError:
                continue
            assert status.delivered_ul == expected.delivered_ul
            assert status.rate_ul_per_h == expected.rate_ul_per_h
            assert status.state is expected.state
    finally:
        rig.close()
