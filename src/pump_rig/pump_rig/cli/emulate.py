"""``pumprig emulate BACKEND --link PATH``: one virtual pump on a pseudo-terminal, in real time.

The same bench physics as mock_hardware (plunger, fluid line, pressure sensor) behind the
backend's byte-level emulator, with no ROS at all: PATH becomes a symlink to the pty, so any
serial client (the rig's motor_driver, a lab script, a vendor tool) can open it like a pump on
a USB adapter. Runs until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from pump_rig.core.bench_model import BenchModel, BenchParams
from pump_rig.core.bench_session import BenchSession
from pump_rig.core.rig_files import emulator_serial
from pump_rig.drivers.backends import EmulatorOptions, find_backend
from pump_rig.drivers.pty_device import PtySerialDevice

SAMPLE_PERIOD_S = 0.1  # the firmware's pressure channel refresh (stepper)


@dataclass(frozen=True)
class EmulateOptions:
    backend: str
    link: Path
    inner_diameter_mm: float | None = None
    loaded_volume_ul: float | None = None
    address: int = 0
    safe_mode: bool = False
    seed: int = 0


class EmulatedPump:
    """A backend's emulator over the bench physics, on a pty, with a real-time clock."""

    def __init__(self, options: EmulateOptions) -> None:
        backend = find_backend(options.backend)
        params = BenchParams(seed=options.seed)
        if options.inner_diameter_mm is not None:
            params = replace(params, inner_diameter_mm=options.inner_diameter_mm)
        if options.loaded_volume_ul is not None:
            volume = max(params.syringe_volume_ul, options.loaded_volume_ul)
            params = replace(
                params, syringe_volume_ul=volume, loaded_volume_ul=options.loaded_volume_ul
            )
        self.backend = backend
        # Simulation time follows the monotonic clock from the epoch time at start, so it
        # never steps back when the wall clock is adjusted.
        start_epoch_s, start_mono_s = time.time(), time.monotonic()
        self.clock: Callable[[], float] = lambda: start_epoch_s + time.monotonic() - start_mono_s
        t0 = self.clock()
        self.lock = threading.Lock()
        self.session = BenchSession(
            BenchModel(params, t0_s=t0), sample_period_s=SAMPLE_PERIOD_S, t0_s=t0
        )
        self.emulator = backend.emulator(
            EmulatorOptions(
                pump=self.session,
                pressure_source=self.session.last_sample_kpa
                if backend.has_pressure_channel
                else None,
                seed=options.seed,
                address=options.address,
                safe_mode=options.safe_mode,
                t0_s=t0,
                serial_number=emulator_serial("OSP-EMU", "emulate", options.link or ""),
            )
        )
        options.link.parent.mkdir(parents=True, exist_ok=True)
        self.device = PtySerialDevice(
            self.emulator, self.clock, lock=self.lock, link_path=options.link
        )

    def update(self) -> None:
        """Advance the physics to now. Nobody publishes the samples here (the firmware
        reports the latest): they are dropped so they do not pile up."""
        with self.lock:
            self.session.collect(self.clock())

    def run(self, stop: threading.Event) -> None:
        self.device.start()
        try:
            while not stop.wait(SAMPLE_PERIOD_S):
                self.update()
        finally:
            self.device.close()


def run_emulator(options: EmulateOptions, stop: threading.Event) -> None:
    pump = EmulatedPump(options)
    mode = ""
    if pump.backend.name == "ne1000":
        mode = f", address {options.address}, {'Safe' if options.safe_mode else 'Basic'} mode"
    print(
        f"pumprig emulate: {pump.backend.description}{mode} on {options.link} -> "
        f"{pump.device.slave_path}; Ctrl-C to stop",
        flush=True,
    )
    pump.run(stop)
    print("pumprig emulate: stopped", flush=True)
