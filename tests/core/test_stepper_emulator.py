"""The open syringe pump firmware emulator, bytes in / bytes out, driving the real pump model."""

from __future__ import annotations

import math

import pytest

from pump_rig.core.faults import FaultKind
from pump_rig.core.pump_types import Direction, PumpRunState
from pump_rig.core.stepper_emulator import (
    DEFAULT_IDENTITY,
    SerialFaultConfig,
    StepperEmulator,
)
from pump_rig.core.stepper_protocol import (
    MAX_REQUEST_CHARS,
    AckReply,
    Command,
    DeviceState,
    ErrorCode,
    ErrorReply,
    GetStatus,
    Identify,
    IdentityReply,
    ProtocolError,
    Reply,
    Request,
    Run,
    SetDiameter,
    SetDirection,
    SetRate,
    SetVolumeLimit,
    StatusReply,
    Stop,
    crc16_ccitt,
    decode_reply,
    encode_request,
    trim_to_frame_start,
)
from tests.core.pump_fixtures import (
    SYRINGE_UL,
    CountingPump,
    make_pump,
    on_wire,
    pump_with_history,
    whole_steps,
)

# ---- helpers ----------------------------------------------------------------------------------


def replies(out: bytes) -> list[Reply]:
    return [decode_reply(line) for line in out.splitlines()]


def one(out: bytes) -> Reply:
    got = replies(out)
    assert len(got) == 1, out
    return got[0]


def send(emu: StepperEmulator, request: Request, t_s: float) -> Reply:
    return one(emu.feed(encode_request(request), t_s))


def status(emu: StepperEmulator, seq: int, t_s: float) -> StatusReply:
    reply = send(emu, GetStatus(seq), t_s)
    assert isinstance(reply, StatusReply)
    return reply


def error(reply: Reply, code: ErrorCode, seq: int | None) -> ErrorReply:
    assert isinstance(reply, ErrorReply), reply
    assert reply.code is code
    assert reply.seq == seq
    return reply


def framed(body: bytes) -> bytes:
    return body + b"*" + f"{crc16_ccitt(body):04X}".encode() + b"\n"


@pytest.fixture
def pump() -> CountingPump:
    return make_pump()


@pytest.fixture
def emu(pump: CountingPump) -> StepperEmulator:
    return StepperEmulator(pump)


# ---- commands -----------------------------------------------------------------------------------


def test_identify_reports_model_firmware_serial_and_protocol(emu: StepperEmulator) -> None:
    reply = send(emu, Identify(1), 0.0)
    assert reply == IdentityReply(1, DEFAULT_IDENTITY)
    assert reply.identity.protocol == 1


def test_configure_run_and_status_follow_the_pump(emu: StepperEmulator, pump: CountingPump) -> None:
    assert send(emu, SetDiameter(1, 4.78), 0.0) == AckReply(1, Command.SET_DIAMETER, 4.78)
    assert send(emu, SetRate(2, 360.0), 0.0) == AckReply(2, Command.SET_RATE, 360.0)
    assert send(emu, SetDirection(3, Direction.INFUSE), 0.0) == AckReply(
        3, Command.SET_DIRECTION, Direction.INFUSE
    )
    assert send(emu, SetVolumeLimit(4, 0.0), 0.0) == AckReply(4, Command.SET_VOLUME_LIMIT, 0.0)
    assert send(emu, Run(5), 10.0) == AckReply(5, Command.RUN)
    ul_per_step = pump.ul_per_step  # of the 4.78 mm syringe now set
    st = status(emu, 6, 20.0).status  # 10 s at 360 µL/h = 1 µL, in whole microsteps
    steps = whole_steps(1.0, ul_per_step)
    assert st.state is DeviceState.RUNNING
    assert st.direction is Direction.INFUSE
    assert st.rate_ul_per_h == 360.0
    assert st.flow_ul_per_h == 360.0
    assert st.delivered_ul == on_wire(steps * ul_per_step)
    assert st.remaining_ul == on_wire(SYRINGE_UL - steps * ul_per_step)
    assert st.steps == steps
    assert st.inner_diameter_mm == 4.78
    assert st.pressure_kpa is None
    assert st.flags == frozenset()
    assert send(emu, Stop(7), 30.0) == AckReply(7, Command.STOP)
    st = status(emu, 8, 100.0).status  # stopped after 20 s: 2 µL
    steps = whole_steps(2.0, ul_per_step)
    assert st.state is DeviceState.IDLE
    assert st.delivered_ul == on_wire(steps * ul_per_step)
    assert st.steps == steps
    assert pump.starts == 1


def test_delivered_counter_keeps_six_decimals() -> None:
    # 4.32 L delivered (43.2 h at the maximum rate): the counter of months of therapy.
    volume_ul = 4_320_000.123456
    pump = pump_with_history(volume_ul, idle_at_s=0.0, syringe_volume_ul=5_000_000.0)
    exact_ul = whole_steps(volume_ul, pump.ul_per_step) * pump.ul_per_step
    assert pump.snapshot(0.0).delivered_ul == exact_ul
    reported = status(StepperEmulator(pump), 1, 0.0).status.delivered_ul
    assert reported == on_wire(exact_ul)
    assert abs(reported - exact_ul) <= 5e-7
    assert round(reported, 5) != reported  # the sixth decimal is really carried


def test_volume_limit_sets_the_limit_flag(emu: StepperEmulator, pump: CountingPump) -> None:
    send(emu, SetRate(1, 3600.0), 0.0)
    send(emu, SetVolumeLimit(2, 5.0), 0.0)
    send(emu, Run(3), 0.0)
    st = status(emu, 4, 100.0).status
    assert st.state is DeviceState.IDLE
    assert st.limit_reached and "LIMIT" in st.flags
    steps = whole_steps(5.0, pump.ul_per_step)  # the run ends on the last whole step in 5 µL
    assert st.delivered_ul == on_wire(steps * pump.ul_per_step)
    assert st.steps == steps
    assert st.volume_limit_ul == 5.0


def test_rate_can_change_while_running_but_diameter_and_direction_cannot(
    emu: StepperEmulator,
) -> None:
    send(emu, SetRate(1, 100.0), 0.0)
    send(emu, Run(2), 0.0)
    assert send(emu, SetRate(3, 200.0), 1.0) == AckReply(3, Command.SET_RATE, 200.0)
    error(send(emu, SetDiameter(4, 10.0), 1.0), ErrorCode.BUSY, 4)
    error(send(emu, SetDirection(5, Direction.WITHDRAW), 1.0), ErrorCode.BUSY, 5)
    # Setting the direction it already has is idempotent, not an error.
    assert send(emu, SetDirection(6, Direction.INFUSE), 1.0) == AckReply(
        6, Command.SET_DIRECTION, Direction.INFUSE
    )


def test_run_and_stop_are_idempotent(emu: StepperEmulator, pump: CountingPump) -> None:
    send(emu, SetRate(1, 100.0), 0.0)
    assert send(emu, Run(2), 0.0) == AckReply(2, Command.RUN)
    assert send(emu, Run(3), 1.0) == AckReply(3, Command.RUN)
    assert pump.starts == 1  # running already: no restart, volume-limit count untouched
    assert send(emu, Stop(4), 2.0) == AckReply(4, Command.STOP)
    assert send(emu, Stop(5), 3.0) == AckReply(5, Command.STOP)
    assert pump.stops == 1


def test_out_of_range_and_refused_errors_carry_ascii_messages(emu: StepperEmulator) -> None:
    reply = error(send(emu, SetRate(1, 2e6), 0.0), ErrorCode.OUT_OF_RANGE, 1)
    assert reply.message.isascii() and "µ" not in reply.message
    assert "maximum 100000.0 uL/h" in reply.message  # the pump's own message, µ sanitized
    error(send(emu, SetDiameter(2, 80.0), 0.0), ErrorCode.OUT_OF_RANGE, 2)
    error(send(emu, Run(3), 0.0), ErrorCode.REFUSED, 3)  # rate still 0
    # The real pump's messages hold no '<' or '>'; the firmware's own about them do.
    reply = error(one(emu.feed(framed(b">4 RAT <1"), 0.0)), ErrorCode.FRAME, None)
    assert "'?' and '?'" in reply.message  # '<' and '>' sanitized


def test_pressure_channel(pump: CountingPump) -> None:
    readings: list[float | None] = [1.25, None, math.nan]
    emu = StepperEmulator(pump, pressure_source=lambda t_s: readings[int(t_s)])
    assert status(emu, 1, 0.0).status.pressure_kpa == 1.25
    st = status(emu, 2, 1.0).status
    assert st.pressure_kpa is None and st.flags == frozenset()
    st = status(emu, 3, 2.0).status
    assert st.pressure_kpa is None and st.flags == frozenset({"PFAULT"})


def test_stalled_pump_reports_stalled(emu: StepperEmulator, pump: CountingPump) -> None:
    send(emu, SetRate(1, 100.0), 0.0)
    send(emu, Run(2), 0.0)
    pump.set_stalled(0.0, True)
    st = status(emu, 3, 5.0).status
    assert st.state is DeviceState.STALLED
    assert st.flow_ul_per_h == 0.0


# ---- framing ----------------------------------------------------------------------------------


def test_partial_lines_are_assembled(emu: StepperEmulator) -> None:
    frame = encode_request(Identify(9))
    for index in range(len(frame) - 1):
        assert emu.feed(frame[index : index + 1], 0.0) == b""
    assert one(emu.feed(frame[-1:], 0.0)) == IdentityReply(9, DEFAULT_IDENTITY)


def test_several_requests_in_one_chunk_get_replies_in_order(emu: StepperEmulator) -> None:
    data = encode_request(SetRate(1, 50.0)) + encode_request(Identify(2))
    got = replies(emu.feed(data, 0.0))
    assert [r.seq for r in got] == [1, 2]


def test_crlf_terminator_and_blank_lines(emu: StepperEmulator) -> None:
    assert emu.feed(b"\r\n\n  \n", 0.0) == b""
    frame = encode_request(Identify(3)).replace(b"\n", b"\r\n")
    assert one(emu.feed(frame, 0.0)) == IdentityReply(3, DEFAULT_IDENTITY)


def test_bad_checksum_gets_an_unsequenced_error_and_does_nothing(
    emu: StepperEmulator, pump: CountingPump
) -> None:
    frame = bytearray(encode_request(SetRate(5, 100.0)))
    frame[8] = ord("7")  # the rate changes, the CRC no longer matches
    error(one(emu.feed(bytes(frame), 0.0)), ErrorCode.CHECKSUM, None)
    assert pump.snapshot(0.0).rate_ul_per_h == 0.0


def test_unknown_command_and_bad_arguments_echo_the_seq(emu: StepperEmulator) -> None:
    error(one(emu.feed(framed(b">4 FOO"), 0.0)), ErrorCode.UNKNOWN_COMMAND, 4)
    error(one(emu.feed(framed(b">5 RAT -1"), 0.0)), ErrorCode.BAD_ARGUMENT, 5)
    error(one(emu.feed(framed(b">6 RAT"), 0.0)), ErrorCode.BAD_ARGUMENT, 6)
    error(one(emu.feed(framed(b">7 DIR UP"), 0.0)), ErrorCode.BAD_ARGUMENT, 7)
    error(one(emu.feed(framed(b">007 STA"), 0.0)), ErrorCode.FRAME, None)


def test_junk_without_frame_start_gets_a_frame_error(emu: StepperEmulator) -> None:
    error(one(emu.feed(b"hello\n", 0.0)), ErrorCode.FRAME, None)


def test_noise_in_front_of_a_frame_is_skipped(emu: StepperEmulator) -> None:
    frame = b"\x00\xff>>x" + encode_request(Identify(8))
    assert one(emu.feed(frame, 0.0)) == IdentityReply(8, DEFAULT_IDENTITY)


def test_over_long_line_is_discarded_with_one_error(emu: StepperEmulator) -> None:
    out = emu.feed(b">" + b"9" * 300, 0.0)
    error(one(out), ErrorCode.TOO_LONG, None)
    assert emu.feed(b"9" * 300, 0.0) == b""  # still the same line: no second error
    assert emu.feed(b"999\n", 0.0) == b""  # its end is dropped silently
    assert one(emu.feed(encode_request(Identify(1)), 0.0)) == IdentityReply(1, DEFAULT_IDENTITY)


def test_longest_allowed_line_is_accepted_and_one_more_is_not(emu: StepperEmulator) -> None:
    long_line = b">1 " + b"X" * (MAX_REQUEST_CHARS - 3 - 5)  # + "*CRC" = MAX chars exactly
    error(one(emu.feed(framed(long_line), 0.0)), ErrorCode.UNKNOWN_COMMAND, 1)
    too_long = b">1 " + b"X" * (MAX_REQUEST_CHARS - 3 - 4)
    error(one(emu.feed(framed(too_long), 0.0)), ErrorCode.TOO_LONG, None)


# ---- retries are safe ---------------------------------------------------------------------------


def test_repeated_request_is_answered_again_not_executed_again(
    emu: StepperEmulator, pump: CountingPump
) -> None:
    send(emu, SetRate(1, 100.0), 0.0)
    run = encode_request(Run(2))
    first = emu.feed(run, 0.0)
    send(emu, Stop(3), 0.1)
    emu.feed(run, 0.2)  # not a retry: another request came in between
    assert pump.starts == 2
    again = emu.feed(run, 0.3)  # a retry of the request just before
    assert again == first
    assert pump.starts == 2


def test_a_retried_run_after_its_limit_is_not_restarted(
    emu: StepperEmulator, pump: CountingPump
) -> None:
    send(emu, SetRate(1, 3600.0), 0.0)
    send(emu, SetVolumeLimit(2, 1.0), 0.0)
    run = encode_request(Run(3))
    first = emu.feed(run, 0.0)
    # reply lost; 1.5 s later (run ended before 1 s, on the last whole step in 1 µL) the host
    # retries the very same frame
    assert emu.feed(run, 1.5) == first
    assert pump.starts == 1
    snap = pump.snapshot(1.5)
    assert snap.state is PumpRunState.IDLE and snap.limit_reached
    assert snap.delivered_ul == whole_steps(1.0, pump.ul_per_step) * pump.ul_per_step


def test_same_seq_with_another_body_or_after_the_window_is_executed(
    emu: StepperEmulator, pump: CountingPump
) -> None:
    send(emu, SetRate(1, 10.0), 0.0)
    send(emu, SetRate(1, 20.0), 0.0)  # same SEQ, new request: a new host session
    assert pump.snapshot(0.0).rate_ul_per_h == 20.0
    send(emu, Run(2), 0.0)
    send(emu, Stop(3), 1.0)
    frame = encode_request(Run(2))
    emu.feed(frame, 1.5)
    emu.feed(frame, 10.0)  # outside the 2 s window: a new request
    assert pump.starts == 2


# ---- watchdog -----------------------------------------------------------------------------------


def test_watchdog_is_off_by_default(emu: StepperEmulator, pump: CountingPump) -> None:
    send(emu, SetRate(1, 10.0), 0.0)
    send(emu, Run(2), 0.0)
    emu.due_output(1e6)
    assert pump.snapshot(1e6).state is PumpRunState.RUNNING


def test_watchdog_stops_a_silent_hosts_pump_and_flags_it(pump: CountingPump) -> None:
    emu = StepperEmulator(pump, watchdog_s=3.0)
    send(emu, SetRate(1, 10.0), 0.0)
    send(emu, Run(2), 0.0)
    emu.due_output(2.9)
    assert pump.snapshot(2.9).state is PumpRunState.RUNNING
    status(emu, 3, 2.9)  # a valid frame re-arms the watchdog
    emu.due_output(5.8)
    assert pump.snapshot(5.8).state is PumpRunState.RUNNING
    emu.due_output(6.0)
    assert pump.snapshot(6.0).state is PumpRunState.IDLE
    st = status(emu, 4, 7.0).status
    assert st.state is DeviceState.IDLE and "WDOG" in st.flags
    send(emu, Run(5), 8.0)
    assert "WDOG" not in status(emu, 6, 8.0).status.flags


def test_invalid_frames_do_not_feed_the_watchdog(pump: CountingPump) -> None:
    emu = StepperEmulator(pump, watchdog_s=1.0)
    send(emu, SetRate(1, 10.0), 0.0)
    send(emu, Run(2), 0.0)
    emu.feed(b"garbage\n", 0.9)
    emu.feed(framed(b">3 FOO"), 0.95)
    emu.due_output(1.1)
    assert pump.snapshot(1.1).state is PumpRunState.IDLE


# ---- serial faults ------------------------------------------------------------------------------


def test_dropped_replies_still_execute(emu: StepperEmulator, pump: CountingPump) -> None:
    emu.set_fault(FaultKind.SERIAL_DROP, True)
    assert emu.feed(encode_request(SetRate(1, 42.0)), 0.0) == b""
    assert pump.snapshot(0.0).rate_ul_per_h == 42.0
    emu.set_fault(FaultKind.SERIAL_DROP, False)
    assert status(emu, 2, 0.0).status.rate_ul_per_h == 42.0


def test_delayed_replies_come_out_when_due(emu: StepperEmulator) -> None:
    emu.set_fault_config(SerialFaultConfig(delay_s=0.3))
    emu.set_fault(FaultKind.SERIAL_DELAY, True)
    assert emu.feed(encode_request(Identify(1)), 1.0) == b""
    assert emu.pending_replies == 1
    assert emu.due_output(1.29) == b""
    assert one(emu.due_output(1.3)) == IdentityReply(1, DEFAULT_IDENTITY)
    assert emu.pending_replies == 0


def test_delayed_replies_are_also_returned_by_feed_when_due(emu: StepperEmulator) -> None:
    emu.set_fault_config(SerialFaultConfig(delay_s=0.3))
    emu.set_fault(FaultKind.SERIAL_DELAY, True)
    emu.feed(encode_request(Identify(1)), 0.0)
    emu.clear_faults()
    got = replies(emu.feed(encode_request(Identify(2)), 0.5))
    assert [r.seq for r in got] == [2, 1]  # the late one arrives after the prompt one


def test_garbage_never_yields_a_wrong_reply(pump: CountingPump) -> None:
    """Every line the host may see either fails to decode or is exactly the clean reply."""
    clean = StepperEmulator(make_pump())
    dirty = StepperEmulator(pump, seed=7)
    dirty.set_fault(FaultKind.SERIAL_GARBAGE, True)
    corrupted = intact = 0
    for seq in range(300):
        request = encode_request(SetRate(seq, float(seq)) if seq % 2 else GetStatus(seq))
        expected = clean.feed(request, seq * 1.0)
        out = dirty.feed(request, seq * 1.0)
        assert out != expected
        found = False
        for line in out.split(b"\n"):
            try:
                reply = decode_reply(trim_to_frame_start(line, b"<"))
            except ProtocolError:
                continue
            assert reply == decode_reply(expected)
            found = True
        intact += found
        corrupted += not found
    assert corrupted > 50 and intact > 50


def test_fault_switches(emu: StepperEmulator) -> None:
    emu.set_fault(FaultKind.SERIAL_GARBAGE, True)
    emu.set_fault(FaultKind.SERIAL_DELAY, True)
    assert emu.active_faults == {FaultKind.SERIAL_GARBAGE, FaultKind.SERIAL_DELAY}
    emu.clear_faults()
    assert emu.active_faults == frozenset()
    for kind in (FaultKind.UNPLUG, FaultKind.OCCLUSION):
        with pytest.raises(ValueError, match="not a serial byte fault"):
            emu.set_fault(kind, True)


def test_fault_config_is_validated() -> None:
    with pytest.raises(ValueError):
        SerialFaultConfig(delay_s=-1.0)
    with pytest.raises(ValueError):
        SerialFaultConfig(garbage_probability=1.5)


def test_reset_link_drops_partial_input_and_pending_replies(emu: StepperEmulator) -> None:
    emu.set_fault(FaultKind.SERIAL_DELAY, True)
    emu.feed(encode_request(Identify(1)), 0.0)
    emu.feed(b">2 ST", 0.0)
    emu.reset_link()
    assert emu.pending_replies == 0
    emu.clear_faults()
    assert one(emu.feed(encode_request(Identify(3)), 0.1)).seq == 3
