"""A month of therapy end to end through the emulated device, in simulated time, exactly.

The engine commands the open stepper pump's firmware emulator over a real pseudo-terminal with
the real driver (pyserial), as the motor driver node does, and accounts what the device
reports. Time is simulated and advanced by the test (each report, each schedule change, each
self-stop of the pump, each action of the scenario), so the result does not depend on the
machine's speed: `pumprig bench therapy` runs the same month through the ROS nodes at an
accelerated wall clock and reports its own figures.

What stays between prescribed and delivered is the device's own: a pump moves whole plunger
steps, and a volume-limited command (a bolus, a bridge) ends up to one step short.
"""

from __future__ import annotations

import calendar
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pump_rig.cli.bench import BENCH_SYRINGE_ID_MM, BENCH_SYRINGE_UL, bench_program_file
from pump_rig.core.program import default_drug_library, parse_program
from pump_rig.core.pump_types import SECONDS_PER_DAY, SECONDS_PER_HOUR, Direction, PumpAction
from pump_rig.core.stepper_emulator import StepperEmulator
from pump_rig.core.syringe_pump import SyringePump
from pump_rig.core.therapy_engine import CommandIntent, EngineConfig, TherapyEngine
from pump_rig.drivers.pty_device import PtySerialDevice
from pump_rig.drivers.stepper_driver import StepperPumpDriver
from tests.core.therapy_fixtures import full_syringe

T0 = float(calendar.timegm((2026, 1, 5, 0, 0, 0)))  # a Monday, 00:00 UTC
DAYS = 30
REPORT_S = 600.0  # the device's state is read at least this often
TOLERANCE = 5e-4  # 0.05 %, over the month
DAY_TOLERANCE = 1e-3  # 0.1 %, any day


@dataclass
class Bench:
    """The emulated pump on a pty, the driver on the other end, and the simulated time."""

    pump: SyringePump
    lock: threading.Lock
    driver: StepperPumpDriver
    t: float
    applied: CommandIntent | None = None

    def delivered_ul(self) -> float:
        return self.driver.status().delivered_ul  # (at self.t: the emulator's clock)

    def next_self_stop_s(self) -> float | None:
        with self.lock:
            return self.pump.next_event_s()

    def apply(self, intent: CommandIntent) -> None:
        """What the motor driver does with a new command: a rate change of a running, unlimited
        command in place; anything else stopped and started anew."""
        previous = self.applied
        self.applied = intent
        if intent.action is not PumpAction.INFUSE:
            self.driver.stop()
            return
        if (
            previous is not None
            and previous.action is PumpAction.INFUSE
            and previous.volume_limit_ul == 0.0
            and intent.volume_limit_ul == 0.0
            and self.driver.status().state == "RUNNING"
        ):
            self.driver.set_rate(intent.flow_rate_ul_per_h)
            return
        self.driver.stop()
        self.driver.set_direction(Direction.INFUSE)
        self.driver.set_volume_limit(intent.volume_limit_ul)
        self.driver.set_rate(intent.flow_rate_ul_per_h)
        self.driver.start()


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    pump = full_syringe(BENCH_SYRINGE_ID_MM, BENCH_SYRINGE_UL, T0)
    lock = threading.Lock()
    holder: list[Bench] = []
    emulator = StepperEmulator(pump, pressure_source=lambda t_s: 1.5, seed=1)
    clock: Callable[[], float] = lambda: holder[0].t if holder else T0  # noqa: E731
    device = PtySerialDevice(emulator, clock, lock=lock, link_path=tmp_path / "osp")
    device.start()
    driver = StepperPumpDriver.open(str(tmp_path / "osp"), timeout_s=1.0)
    try:
        driver.configure_syringe(BENCH_SYRINGE_ID_MM)
        holder.append(Bench(pump, lock, driver, T0))
        yield holder[0]
    finally:
        driver.close()
        device.close()


def scenario() -> dict[float, Callable[[TherapyEngine, float], object]]:
    """Two patient boluses a day, a refill on day 11, a 2 h suspension on day 16 and a refill
    at double the concentration with a bridge on day 21 (as `pumprig bench therapy`)."""
    day, hour = SECONDS_PER_DAY, SECONDS_PER_HOUR
    actions: dict[float, Callable[[TherapyEngine, float], object]] = {}
    for d in range(DAYS):
        actions[T0 + d * day + 9.5 * hour] = lambda e, t: e.request_bolus(t)
        actions[T0 + d * day + 15.25 * hour] = lambda e, t: e.request_bolus(t)
    actions[T0 + 10 * day + 11 * hour] = lambda e, t: e.refill(
        t, volume_ul=12000.0, drug="baclofen", concentration_ug_per_ml=500.0
    )
    actions[T0 + 15 * day + 10.2 * hour] = lambda e, t: e.suspend(t, "scenario")
    actions[T0 + 15 * day + 12.2 * hour] = lambda e, t: e.resume(t)
    actions[T0 + 20 * day + 11 * hour] = lambda e, t: e.refill(
        t, volume_ul=10000.0, drug="baclofen", concentration_ug_per_ml=1000.0, bridge=True
    )
    return actions


def test_a_month_through_the_device_delivers_what_was_prescribed(bench: Bench) -> None:
    program = parse_program(bench_program_file().read_text(encoding="utf-8"))
    resolution = max(EngineConfig().device_resolution_ul, bench.pump.ul_per_step)
    engine = TherapyEngine(
        t_s=T0,
        library=default_drug_library(),
        config=EngineConfig(bucket_s=900.0, device_resolution_ul=resolution),
    )
    engine.set_program(T0, program)
    actions = scenario()
    due = sorted(actions)
    end = T0 + DAYS * SECONDS_PER_DAY
    granted = 0
    while True:
        engine.on_device_volume(bench.t, bench.delivered_ul())
        while due and due[0] <= bench.t:
            answer = actions[due.pop(0)](engine, bench.t)
            granted += bool(getattr(answer, "granted", False))
        intent = engine.command(bench.t)
        if intent is not bench.applied:
            bench.apply(intent)
        if bench.t >= end:
            break
        candidates = [bench.t + REPORT_S, end]
        for t in (engine.snapshot(bench.t).next_change_s, bench.next_self_stop_s()):
            if t is not None and t > bench.t:
                candidates.append(t)
        if due:
            candidates.append(due[0])
        bench.t = min(candidates)

    assert granted == 2 * DAYS
    engine.close()
    # Every step the pump moved is in the ledger.
    assert engine.ledger.total_volume_ul == pytest.approx(bench.delivered_ul(), rel=1e-12)
    prescribed = engine.prescribed_by_day
    delivered = {d.day: d.total_dose_ug for d in engine.ledger.day_totals()}
    first = math.floor(T0 / SECONDS_PER_DAY)
    days = range(first, first + DAYS)
    total_p = math.fsum(prescribed[d] for d in days)
    total_d = math.fsum(delivered[d] for d in days)
    assert total_d == pytest.approx(total_p, rel=TOLERANCE)
    assert total_d <= total_p  # short by parts of plunger steps, never over
    # Each day too, within the steps its volume-limited commands left (up to ~5 on the day
    # of the refill with a bridge: 0.09 µL each, 0.015 % of that day's dose).
    errors = {d - first + 1: delivered[d] / prescribed[d] - 1.0 for d in days}
    assert all(-DAY_TOLERANCE <= e <= 0.0 for e in errors.values()), errors
