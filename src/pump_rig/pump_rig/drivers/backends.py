"""Pump families the rig can drive, by the name the ``backend`` parameter takes.

A family is a driver (``core.pump_device.PumpDevice``) and the byte-level emulator of the same
device, so that every backend's real pyserial path runs against its emulator on a pty (mock
hardware, ``pumprig emulate``, tests). Adding a family: its codec, emulator and driver
modules, one ``Backend`` entry below and a profile in ``hardware/pumps/``; nothing else
changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pump_rig.core.faults import FaultKind
from pump_rig.core.pump_device import DeviceError, PumpDevice
from pump_rig.core.serial_faults import SerialFaultConfig
from pump_rig.core.stepper_emulator import PressureSource, PumpMechanics
from pump_rig.core.syringe_pump import DEFAULT_MECHANICS, MechanicsSpec
from pump_rig.drivers.pty_device import ByteDevice


@dataclass(frozen=True)
class DeviceOptions:
    """How to reach a device. ``baud`` 0 = the family's default."""

    port: str
    baud: int = 0
    reply_timeout_s: float = 0.2
    address: int = 0
    safe_mode: bool = False
    mechanics: MechanicsSpec = DEFAULT_MECHANICS


@dataclass(frozen=True)
class EmulatorOptions:
    """What an emulator drives (the plunger) and reports (a pressure channel, if fitted)."""

    pump: PumpMechanics
    pressure_source: PressureSource | None = None
    seed: int = 0
    address: int = 0
    safe_mode: bool = False
    t0_s: float = 0.0  # the emulator's power-up time (simulation time)
    # The serial number it reports, where its protocol has one ('' = the emulator's default):
    # two emulated pumps must not look like one device to a controller.
    serial_number: str = ""


class DeviceEmulator(ByteDevice, Protocol):
    """What every backend's emulator is: bytes in and out, with tunable serial faults
    (``core.serial_faults.EmulatesSerialFaults`` provides them)."""

    @property
    def fault_config(self) -> SerialFaultConfig: ...
    def set_fault_config(self, config: SerialFaultConfig) -> None: ...
    @property
    def active_faults(self) -> frozenset[FaultKind]: ...


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    default_baud: int
    has_pressure_channel: bool
    open: Callable[[DeviceOptions], PumpDevice]
    emulator: Callable[[EmulatorOptions], DeviceEmulator]


def _open_stepper(options: DeviceOptions) -> PumpDevice:
    from pump_rig.drivers.stepper_driver import StepperPumpDriver

    return StepperPumpDriver.open(
        options.port,
        baud=options.baud or STEPPER.default_baud,
        timeout_s=options.reply_timeout_s,
        mechanics=options.mechanics,
    )


def _stepper_emulator(options: EmulatorOptions) -> DeviceEmulator:
    from dataclasses import replace

    from pump_rig.core.stepper_emulator import DEFAULT_IDENTITY, StepperEmulator

    identity = DEFAULT_IDENTITY
    if options.serial_number:
        identity = replace(identity, serial=options.serial_number)
    return StepperEmulator(
        options.pump,
        pressure_source=options.pressure_source,
        seed=options.seed,
        identity=identity,
    )


STEPPER = Backend(
    name="stepper",
    description="open stepper syringe pump (hardware/open_syringe_pump_protocol.md)",
    default_baud=115200,
    has_pressure_channel=True,
    open=_open_stepper,
    emulator=_stepper_emulator,
)


def _open_ne1000(options: DeviceOptions) -> PumpDevice:
    from pump_rig.drivers.ne1000_driver import DEFAULT_BAUD, NE1000Driver

    return NE1000Driver.open(
        options.port,
        baud=options.baud or DEFAULT_BAUD,
        timeout_s=options.reply_timeout_s,
        address=options.address,
        safe_mode=options.safe_mode,
    )


def _ne1000_emulator(options: EmulatorOptions) -> DeviceEmulator:
    from pump_rig.core.ne1000_emulator import NE1000Emulator

    return NE1000Emulator(
        options.pump,
        address=options.address,
        seed=options.seed,
        safe_mode=options.safe_mode,
        t0_s=options.t0_s,
    )


NE1000 = Backend(
    name="ne1000",
    description="New Era NE-1000 family syringe pump (hardware/new_era_ne1000.md)",
    default_baud=19200,
    has_pressure_channel=False,
    open=_open_ne1000,
    emulator=_ne1000_emulator,
)

BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (NE1000, STEPPER)}


def find_backend(name: str) -> Backend:
    """The backend called ``name``; ``DeviceError`` naming the known ones otherwise."""
    try:
        return BACKENDS[name.strip().lower()]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise DeviceError(f"unknown pump backend {name!r}; known backends: {known}") from None
