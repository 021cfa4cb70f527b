"""The real pump model behind the firmware emulator, built once for the serial-path tests.

The emulator and driver tests drive ``SyringePump`` itself, not an ideal plunger: volumes come
in whole microsteps, and the device reports them with ``DECIMALS`` decimals.
"""

from __future__ import annotations

import math

from pump_rig.core.pump_types import SECONDS_PER_HOUR, PumpRunState
from pump_rig.core.stepper_protocol import DECIMALS
from pump_rig.core.syringe_pump import SyringePump

DIAMETER_MM = 14.43
SYRINGE_UL = 10_000.0
MAX_RATE_UL_PER_H = 100_000.0


class CountingPump(SyringePump):
    """The real pump model, also counting the start() and stop() calls made on it.

    Counting only: every call goes to ``SyringePump`` unchanged. A start() while running or a
    stop() while idle leaves the model as it was, so only the count shows whether the
    firmware sent one.
    """

    starts = 0  # start() calls the model accepted
    stops = 0

    def start(self, t_s: float) -> None:
        super().start(t_s)
        self.starts += 1

    def stop(self, t_s: float) -> None:
        super().stop(t_s)
        self.stops += 1


def make_pump(*, syringe_volume_ul: float = SYRINGE_UL, t0_s: float = 0.0) -> CountingPump:
    """A full syringe of ``DIAMETER_MM``, idle, rate 0, infusing, no volume limit."""
    return CountingPump(
        inner_diameter_mm=DIAMETER_MM,
        syringe_volume_ul=syringe_volume_ul,
        loaded_volume_ul=syringe_volume_ul,
        max_rate_ul_per_h=MAX_RATE_UL_PER_H,
        t0_s=t0_s,
    )


def pump_with_history(
    delivered_ul: float, *, idle_at_s: float, syringe_volume_ul: float = SYRINGE_UL
) -> SyringePump:
    """A pump that, before ``idle_at_s``, infused ``delivered_ul`` down to its last whole step
    (a run at the maximum rate ended by a volume limit) and is idle at ``idle_at_s``."""
    t0_s = idle_at_s - delivered_ul / MAX_RATE_UL_PER_H * SECONDS_PER_HOUR - 1.0
    pump = make_pump(syringe_volume_ul=syringe_volume_ul, t0_s=t0_s)
    pump.set_rate(t0_s, MAX_RATE_UL_PER_H)
    pump.set_volume_limit(t0_s, delivered_ul)
    pump.start(t0_s)
    snap = pump.snapshot(idle_at_s)
    assert snap.state is PumpRunState.IDLE and snap.limit_reached
    return pump


def whole_steps(volume_ul: float, ul_per_step: float) -> int:
    """Microsteps the plunger makes for ``volume_ul``: never more than the volume."""
    return math.floor(volume_ul / ul_per_step)


def on_wire(value: float) -> float:
    """``value`` as the device reports it (``DECIMALS`` decimals)."""
    return float(f"{value:.{DECIMALS}f}")


# ---- New Era NE-1000 (added for the ne1000 backend tests) ---------------------------------------

NE1000_MAX_RATE_UL_PER_H = 2_000_000.0  # above the NE-1000's own ceiling for any diameter here


class CountingNE1000Pump(CountingPump):
    """``CountingPump`` on the NE-1000 emulator's drive train."""


def make_ne1000_pump(
    *, syringe_volume_ul: float = SYRINGE_UL, t0_s: float = 0.0
) -> CountingNE1000Pump:
    """A full syringe of ``DIAMETER_MM`` on ``NE1000_MECHANICS``, idle, rate 0, infusing."""
    from pump_rig.core.ne1000_emulator import NE1000_MECHANICS

    return CountingNE1000Pump(
        inner_diameter_mm=DIAMETER_MM,
        syringe_volume_ul=syringe_volume_ul,
        loaded_volume_ul=syringe_volume_ul,
        max_rate_ul_per_h=NE1000_MAX_RATE_UL_PER_H,
        mechanics=NE1000_MECHANICS,
        t0_s=t0_s,
    )


def ne1000_display(volume_ul: float, units_ul: float = 1.0) -> float:
    """``volume_ul`` as a DIS counter shows it (4 digits, cut), back in µL."""
    from decimal import Decimal

    from pump_rig.core.ne1000_protocol import Rounding, format_number

    shown = format_number(Decimal(repr(volume_ul)) / Decimal(repr(units_ul)), Rounding.DOWN)
    return float(shown.value * Decimal(repr(units_ul)))
