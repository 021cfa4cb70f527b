"""``pumprig``: run the rig and talk to it.

Every subcommand prints one clear line and exits non-zero on bad input or when the rig cannot
be reached; nothing running is changed by a rejected request.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_FAILED = 1


class CliError(Exception):
    """A request that cannot be carried out; the message is printed as one line."""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0 (got {text})")
    return value


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pumprig", description="Run and operate the pump_rig intrathecal pump bench rig."
    )
    parser.add_argument("-n", "--namespace", default="/rig", help="rig namespace (default: /rig)")
    parser.add_argument(
        "--wait",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="how long to wait for a running rig to be discovered (default: 10 s)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run the whole stack in one process (mock hardware by default)")
    up.add_argument(
        "--config", type=_existing_file, help="ROS parameter file (default: config/mock.yaml)"
    )
    up.add_argument("--speed", type=_positive_float, help="simulated seconds per wall second")
    up.add_argument(
        "--duration",
        type=_positive_float,
        metavar="SIM_S",
        help="stop after this much simulated time (default: run until Ctrl-C)",
    )
    up.add_argument("--record", type=Path, metavar="DIR", help="record a bag under DIR")
    up.add_argument("--program", type=_existing_file, help="therapy program to start with")
    up.add_argument("--port", help="serial port of a real pump (no mock hardware)")
    up.add_argument(
        "--journal",
        type=Path,
        metavar="FILE",
        help="dose journal (default: $ROS_HOME/pump_rig/domain<N>/<namespace>/"
        "dose_journal.jsonl; with --speed, a fresh one under runs/, since simulated time is "
        "not today's)",
    )
    up.add_argument(
        "--resume",
        action="store_true",
        help="go on with the ledger the journal holds (the default with --port); without it a "
        "mock rig starts a new ledger and keeps an existing journal as a dated copy",
    )

    demo = sub.add_parser("demo", help="24 h of simulated therapy with an occlusion at hour 12")
    demo.add_argument(
        "--speed",
        type=_positive_float,
        default=1800.0,
        help="simulated seconds per wall second (default: 1800)",
    )
    demo.add_argument("--hours", type=_positive_float, default=24.0, help="simulated hours (24)")
    demo.add_argument(
        "--fault-at",
        type=_positive_float,
        default=12.0,
        metavar="HOURS",
        help="when the occlusion is injected (hour 12)",
    )
    demo.add_argument("--fault", default="occlusion", help="fault kind to inject (occlusion)")
    demo.add_argument("--runs", type=Path, default=Path("runs"), help="where the bag goes (runs/)")

    sub.add_parser("status", help="therapy, pump, line and alarm state of a running rig")

    program = sub.add_parser("program", help="therapy program of a running rig")
    program_sub = program.add_subparsers(dest="program_command", required=True, metavar="ACTION")
    program_set = program_sub.add_parser("set", help="validate a program file and apply it")
    program_set.add_argument("file", type=Path, metavar="FILE")
    program_set.add_argument(
        "--override-titration",
        metavar="REASON",
        help="apply a daily-dose rise above the drug's titration limit (recorded with REASON)",
    )
    program_sub.add_parser("show", help="the program running now")

    bolus = sub.add_parser("bolus", help="patient bolus (default), or a clinician/prime/bridge one")
    kind = bolus.add_mutually_exclusive_group()
    kind.add_argument("--clinician", type=_positive_float, metavar="DOSE_UG", help="dose in µg")
    kind.add_argument("--prime", type=_positive_float, metavar="VOLUME_UL", help="volume in µL")
    kind.add_argument("--bridge", action="store_true", help="flush old drug at a constant dose")
    bolus.add_argument(
        "--duration", type=_positive_float, metavar="MIN", help="minutes (clinician, prime)"
    )
    bolus.add_argument("--request-id", default="", help="retrying with the same id is safe")

    refill = sub.add_parser("refill", help="refill the reservoir (reports the volume discarded)")
    refill.add_argument("volume_ul", type=_positive_float, metavar="VOLUME_UL")
    refill.add_argument("--drug", required=True)
    refill.add_argument("--concentration", type=_positive_float, required=True, metavar="UG_PER_ML")
    refill.add_argument("--withdrawn", type=float, default=0.0, metavar="UL", help="measured")
    plan = refill.add_mutually_exclusive_group()
    plan.add_argument(
        "--bridge",
        action="store_true",
        help="keep the dose rate while old drug leaves the line (a new drug: at its old program)",
    )
    plan.add_argument(
        "--flush",
        action="store_true",
        help="the line was emptied outside the patient and holds saline (prime it after)",
    )

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench.add_argument(
        "what",
        choices=["therapy", "serial", "safety"],
        help="therapy: 30 days through the stack; serial: each backend's command round trip; "
        "safety: random therapy sequences against an independent dose oracle",
    )
    bench.add_argument(
        "--backend", action="append", default=[], help="serial: only this backend (repeatable)"
    )
    bench.add_argument(
        "--calls", type=int, default=500, help="serial: calls timed per figure (500)"
    )
    bench.add_argument("--days", type=_positive_float, default=30.0, help="simulated days (30)")
    bench.add_argument(
        "--minutes", type=_positive_float, default=40.0, help="safety: how long to run (40)"
    )
    bench.add_argument("--seed", type=int, default=0, help="safety: first sequence's seed (0)")
    bench.add_argument(
        "--jobs", type=int, default=0, help="safety: worker processes (0 = one per core)"
    )
    bench.add_argument(
        "--speed", type=_positive_float, default=100000.0, help="simulated s per wall s (100000)"
    )

    sub.add_parser("suspend", help="suspend therapy (pump stops)")
    sub.add_parser("resume", help="resume therapy (refused while a critical alarm is active)")

    alarms = sub.add_parser("alarms", help="list latched alarms")
    alarms.add_argument(
        "--clear",
        action="store_true",
        help="clear alarms and release the estop (therapy then needs resume)",
    )

    journal = sub.add_parser("journal", help="the dosing controller's dose journal")
    journal_sub = journal.add_subparsers(dest="journal_command", required=True, metavar="ACTION")
    accept = journal_sub.add_parser(
        "accept-rollback",
        help="accept a journal that lost its last records (dosing is refused until then)",
    )
    accept.add_argument("--reason", required=True, help="why the loss is accepted (journaled)")
    confirm = journal_sub.add_parser(
        "confirm-device",
        help="confirm the pump now on the port replaces the one the ledger counts on",
    )
    confirm.add_argument("--reason", required=True, help="why the device changed (journaled)")
    for action, text in (
        ("show", "what the journal holds: records, program, delivered dose, who holds it"),
        ("verify", "check checksums, numbering, id and high-water mark (exit 1 if damaged)"),
        ("reset", "keep the journal as a dated copy so the next start begins a new ledger"),
    ):
        offline = journal_sub.add_parser(action, help=text)
        offline.add_argument(
            "--file",
            type=Path,
            metavar="JOURNAL",
            help="the journal (default: the rig's, $ROS_HOME/pump_rig/domain<ROS_DOMAIN_ID>/"
            "<namespace>/dose_journal.jsonl)",
        )

    fault = sub.add_parser("fault", help="inject or clear mock-hardware faults")
    fault_sub = fault.add_subparsers(dest="fault_command", required=True, metavar="ACTION")
    inject = fault_sub.add_parser("inject", help="inject a fault")
    inject.add_argument("kind", metavar="KIND")
    inject.add_argument("--magnitude", type=float, default=0.0, help="kind-specific size")
    fault_sub.add_parser("clear", help="clear all injected faults")

    record = sub.add_parser("record", help="record the rig topics of a running rig to a bag")
    record.add_argument("--output", type=Path, default=Path("runs"), help="directory (runs/)")

    report = sub.add_parser("report", help="summarise a recorded bag")
    report.add_argument("bag", type=Path, metavar="BAG")

    from pump_rig.drivers.backends import BACKENDS

    emulate = sub.add_parser(
        "emulate", help="a virtual pump on a pseudo-terminal, for any serial client (no ROS)"
    )
    emulate.add_argument(
        "backend",
        choices=sorted(BACKENDS),
        metavar="BACKEND",
        help="pump family: " + ", ".join(sorted(BACKENDS)),
    )
    emulate.add_argument(
        "--link", type=Path, required=True, metavar="PATH", help="made a symlink to the pty"
    )
    emulate.add_argument(
        "--diameter", type=_positive_float, metavar="MM", help="syringe inner diameter (14.43)"
    )
    emulate.add_argument(
        "--fill", type=_positive_float, metavar="UL", help="volume in the syringe (10000)"
    )
    emulate.add_argument(
        "--address", type=_address, default=0, help="network address, 0-99 (New Era; 0)"
    )
    emulate.add_argument("--safe-mode", action="store_true", help="start in Safe mode (New Era)")
    emulate.add_argument("--seed", type=int, default=0, help="random seed of sensor noise")
    return parser


def _address(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= 99:
        raise argparse.ArgumentTypeError(f"must be within 0-99 (got {value})")
    return value


# -- commands that talk to a running rig ---------------------------------------------------
def _client(args: argparse.Namespace) -> Any:
    from pump_rig.cli.client import RigClient

    return RigClient(args.namespace, discovery_timeout_s=args.wait)


def _trigger(args: argparse.Namespace, service: str) -> str:
    from std_srvs.srv import Trigger

    client = _client(args)
    try:
        response = client.call(Trigger, service, Trigger.Request())
    finally:
        client.close()
    if not response.success:
        raise CliError(response.message)
    return str(response.message)


def cmd_suspend(args: argparse.Namespace) -> None:
    print(_trigger(args, "suspend"))


def cmd_resume(args: argparse.Namespace) -> None:
    print(_trigger(args, "resume"))


def cmd_program(args: argparse.Namespace) -> None:
    from pump_rig.cli.status import program_lines

    if args.program_command == "show":
        client = _client(args)
        try:
            print("\n".join(program_lines(client)))
        finally:
            client.close()
        return
    from pump_rig_interfaces.srv import SetProgram

    from pump_rig.core.program import load_program_file

    program = load_program_file(args.file)  # a bad file is refused here, before any ROS traffic
    request = SetProgram.Request(program_yaml=args.file.read_text())
    if args.override_titration:
        request.override_titration_limit = True
        request.override_reason = args.override_titration
    response = _call(args, SetProgram, "set_program", request)
    if not response.success:
        raise CliError(response.message)
    print(f"{program.name}: {response.message}")


def _call(args: argparse.Namespace, srv: Any, name: str, request: Any) -> Any:
    client = _client(args)
    try:
        return client.call(srv, name, request)
    finally:
        client.close()


def cmd_bolus(args: argparse.Namespace) -> None:
    from pump_rig_interfaces.srv import ClinicianBolus, RequestBolus

    if args.clinician is None and args.prime is None and not args.bridge:
        if args.duration is not None:
            raise CliError("--duration is for --clinician and --prime boluses")
        answer = _call(
            args, RequestBolus, "request_bolus", RequestBolus.Request(request_id=args.request_id)
        )
        wait = answer.next_allowed_in_s
        after = f" (next allowed in {wait / 60:.1f} min)" if wait > 0 else ""
        if not answer.granted:
            raise CliError(f"{answer.message}{after}")
        print(f"{answer.message}{after}")
        return
    request = ClinicianBolus.Request()
    if args.bridge:
        request.kind = "bridge"
    else:
        if args.duration is None:
            raise CliError("--duration MIN is needed for a clinician or prime bolus")
        request.duration_s = args.duration * 60.0
        if args.clinician is not None:
            request.kind, request.dose_ug = "clinician", args.clinician
        else:
            request.kind, request.volume_ul = "prime", args.prime
    response = _call(args, ClinicianBolus, "clinician_bolus", request)
    if not response.success:
        raise CliError(response.message)
    print(response.message)


def cmd_refill(args: argparse.Namespace) -> None:
    from pump_rig_interfaces.srv import Refill

    request = Refill.Request(
        volume_ul=args.volume_ul,
        drug=args.drug,
        concentration_ug_per_ml=args.concentration,
        withdrawn_ul=args.withdrawn,
        bridge=args.bridge,
        flush=args.flush,
    )
    response = _call(args, Refill, "refill", request)
    if not response.success:
        raise CliError(response.message)
    when = response.next_refill.sec
    print(response.message)
    if response.days_to_refill >= 0 and when > 0:
        date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))
        print(f"next refill {date} (in {response.days_to_refill:.1f} days)")


def cmd_journal(args: argparse.Namespace) -> None:
    if args.journal_command == "confirm-device":
        from pump_rig_interfaces.srv import ConfirmDeviceChange

        if not args.reason.strip():
            raise CliError("--reason: must say why the device changed")
        answer = _call(
            args,
            ConfirmDeviceChange,
            "dosing_controller/confirm_device_change",
            ConfirmDeviceChange.Request(reason=args.reason),
        )
        if not answer.success:
            raise CliError(answer.message)
        print(answer.message)
        return
    if args.journal_command != "accept-rollback":
        from pump_rig.cli import journal

        path = journal.journal_path(args.namespace, args.file)
        try:
            if args.journal_command == "show":
                print("\n".join(journal.show_lines(path)))
            elif args.journal_command == "verify":
                print(journal.verify_line(path))
            else:
                print(journal.reset_line(path))
        except journal.JournalCommandError as exc:
            raise CliError(str(exc)) from None
        return
    from pump_rig_interfaces.srv import AcceptJournalRollback

    if not args.reason.strip():
        raise CliError("--reason: must say why the loss is accepted")
    request = AcceptJournalRollback.Request(reason=args.reason)
    response = _call(
        args, AcceptJournalRollback, "dosing_controller/accept_journal_rollback", request
    )
    if not response.success:
        raise CliError(response.message)
    print(response.message)


def cmd_bench(args: argparse.Namespace) -> None:
    if args.what == "safety":
        from pump_rig.cli.bench_safety import run_safety_bench

        if args.jobs < 0:
            raise CliError(f"--jobs must be 0 (one per core) or more (got {args.jobs})")
        raise SystemExit(run_safety_bench(args.minutes, args.seed, args.jobs or None))
    if args.what == "serial":
        from pump_rig.cli.bench_serial import run_serial_bench

        if args.calls < 1:
            raise CliError(f"--calls must be at least 1 (got {args.calls})")
        run_serial_bench(args.backend, args.calls)
        return
    from pump_rig.cli.bench import run_therapy_bench

    run_therapy_bench(args)


def cmd_status(args: argparse.Namespace) -> None:
    from pump_rig.cli.status import status_lines

    client = _client(args)
    try:
        print("\n".join(status_lines(client)))
    finally:
        client.close()


def cmd_alarms(args: argparse.Namespace) -> None:
    from pump_rig.cli.status import alarm_lines

    if args.clear:
        # The monitor first: it refuses while the line is still unsafe, and then nothing is
        # cleared anywhere. Then the controller, which stays stopped until `pumprig resume`.
        print(_trigger(args, "pressure_monitor/clear_alarms"))
        print(_trigger(args, "dosing_controller/clear_alarms"))
        return
    client = _client(args)
    try:
        print("\n".join(alarm_lines(client)))
    finally:
        client.close()


def cmd_fault(args: argparse.Namespace) -> None:
    from pump_rig.core.faults import FaultKind

    client = _client(args)
    try:
        if args.fault_command == "inject":
            from pump_rig_interfaces.srv import InjectFault

            kind = FaultKind.parse(args.kind)
            request = InjectFault.Request(kind=kind.value, magnitude=args.magnitude)
            response = client.call(InjectFault, "inject_fault", request)
            if not response.success:
                raise CliError(response.message)
            print(response.message)
        else:
            from std_srvs.srv import Trigger

            print(client.call(Trigger, "clear_faults", Trigger.Request()).message)
    finally:
        client.close()


def cmd_report(args: argparse.Namespace) -> None:
    from pump_rig.core.bag_report import format_report, read_report

    print(format_report(read_report(args.bag)))


# -- commands that run nodes ---------------------------------------------------------------
def _stop_on_signals(stop: Callable[[], None]) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop())


def cmd_up(args: argparse.Namespace) -> None:
    from pump_rig.cli.stack import Stack, StackOptions

    record = args.record / time.strftime("rig_%Y%m%d_%H%M%S") if args.record else None
    journal = args.journal
    if journal is None and args.speed is not None and args.speed != 1.0:
        journal = Path("runs") / time.strftime("ledger_%Y%m%d_%H%M%S") / "dose_journal.jsonl"
    stack = Stack(
        StackOptions(
            namespace=args.namespace,
            config=args.config,
            speed=args.speed,
            program=args.program,
            record=record,
            port=args.port,
            journal=journal,
            new_ledger=args.port is None and not args.resume,
        )
    )
    stopping = {"now": False}
    _stop_on_signals(lambda: stopping.__setitem__("now", True))
    stack.start()
    t0 = stack.sim_now_s()
    where = f"mock pump on {stack.mock.port}" if stack.mock else f"pump on {args.port}"
    print(
        f"pumprig up: rig in {args.namespace}, {where}"
        + (f", recording to {record}" if record else "")
    )
    print("Ctrl-C to stop")
    try:
        while not stopping["now"]:
            if args.duration and stack.sim_now_s() - t0 >= args.duration:
                break
            time.sleep(0.05)
    finally:
        stack.shutdown()
    print("pumprig up: stopped" + (f"; bag {record}" if record else ""))


def cmd_record(args: argparse.Namespace) -> None:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from pump_rig.nodes.telemetry_recorder import TelemetryRecorder

    bag = args.output / time.strftime("rig_%Y%m%d_%H%M%S")
    rclpy.init(signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = TelemetryRecorder(
        namespace=args.namespace,
        parameter_overrides=[Parameter("bag_path", Parameter.Type.STRING, str(bag))],
    )
    stopping = {"now": False}
    _stop_on_signals(lambda: stopping.__setitem__("now", True))
    print(f"recording {args.namespace} to {bag}; Ctrl-C to stop")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stopping["now"]:
            executor.spin_once(timeout_sec=0.1)
    finally:
        node.close()
        print(f"closed {bag} ({node.message_count} messages)")
        node.destroy_node()
        rclpy.try_shutdown()


def cmd_emulate(args: argparse.Namespace) -> None:
    import threading

    from pump_rig.cli.emulate import EmulateOptions, run_emulator

    stop = threading.Event()
    _stop_on_signals(stop.set)
    run_emulator(
        EmulateOptions(
            backend=args.backend,
            link=args.link,
            inner_diameter_mm=args.diameter,
            loaded_volume_ul=args.fill,
            address=args.address,
            safe_mode=args.safe_mode,
            seed=args.seed,
        ),
        stop,
    )


def cmd_demo(args: argparse.Namespace) -> None:
    from pump_rig.cli.demo import run_demo

    run_demo(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "up": cmd_up,
    "demo": cmd_demo,
    "status": cmd_status,
    "program": cmd_program,
    "bolus": cmd_bolus,
    "refill": cmd_refill,
    "bench": cmd_bench,
    "suspend": cmd_suspend,
    "resume": cmd_resume,
    "alarms": cmd_alarms,
    "fault": cmd_fault,
    "journal": cmd_journal,
    "record": cmd_record,
    "report": cmd_report,
    "emulate": cmd_emulate,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pump_rig.nodes.dds_profile import use_rig_dds_profile

    use_rig_dds_profile()  # before any rclpy.init in this process
    from pump_rig.cli.client import RigUnreachableError
    from pump_rig.core.bag_recording import RecordingError
    from pump_rig.core.bag_report import ReportError
    from pump_rig.core.pump_device import DeviceError

    try:
        COMMANDS[args.command](args)
    except (
        CliError,
        RigUnreachableError,
        ReportError,
        RecordingError,
        DeviceError,
        ValueError,
        OSError,
    ) as exc:
        if os.environ.get("PUMPRIG_DEBUG"):
            raise
        print(f"pumprig {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        # Ctrl-C of a long command (`bench`, `demo`): the stack was shut down on the way out.
        if os.environ.get("PUMPRIG_DEBUG"):
            raise
        print(f"pumprig {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
