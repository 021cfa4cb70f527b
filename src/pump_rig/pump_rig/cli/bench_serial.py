"""``pumprig bench serial``: command round-trip time and status rate of each backend's driver
against its emulator on a pty (pyserial on both sides of a real pseudo-terminal, no ROS).

A pty passes bytes without a baud-rate delay, so the figures are the host's and emulator's
own cost; on a real line add the wire time (a 20-byte frame is 1.7 ms at 115200 baud, 10 ms
at 19200).
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pump_rig.cli.emulate import EmulatedPump, EmulateOptions
from pump_rig.core.pump_device import PumpDevice
from pump_rig.drivers.backends import BACKENDS, DeviceOptions, find_backend

BENCH_DIAMETER_MM = 21.59  # BD Plastipak 30 mL


def _timed(call: Callable[[], object], n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def _line(what: str, times: list[float]) -> str:
    ms = sorted(t * 1000.0 for t in times)
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    return (
        f"  {what:<22} mean {statistics.fmean(ms):7.3f} ms  median {statistics.median(ms):7.3f} ms"
        f"  p99 {p99:7.3f} ms  ({len(ms)} calls, {len(ms) / (sum(ms) / 1000.0):7.0f} /s)"
    )


def bench_backend(name: str, n: int, *, safe_mode: bool = False) -> list[str]:
    backend = find_backend(name)
    with tempfile.TemporaryDirectory(prefix="pumprig-bench-") as tmp:
        link = Path(tmp) / "pump"
        pump = EmulatedPump(EmulateOptions(backend=name, link=link, safe_mode=safe_mode))
        stop = threading.Event()
        runner = threading.Thread(target=pump.run, args=(stop,), daemon=True)
        runner.start()
        device: PumpDevice | None = None
        try:
            device = dev = backend.open(
                DeviceOptions(port=str(link), reply_timeout_s=0.5, safe_mode=safe_mode)
            )
            identity = dev.identify()
            dev.stop()
            dev.configure_syringe(BENCH_DIAMETER_MM)
            dev.set_volume_limit(0.0)
            dev.set_rate(500.0)
            dev.start()
            rates = iter([400.0 + (i % 7) for i in range(n)])
            mode = " (Safe mode)" if safe_mode else ""
            lines = [f"{name}{mode}: {identity}"]
            lines.append(_line("status()", _timed(dev.status, n)))
            lines.append(_line("set_rate() running", _timed(lambda: dev.set_rate(next(rates)), n)))
            dev.stop()
            stats = dev.stats
            lines.append(
                f"  link: {stats.requests} frames out, {stats.replies} replies, mean exchange "
                f"{(stats.mean_rtt_s or 0.0) * 1000.0:.3f} ms, {stats.timeouts} timeouts, "
                f"{stats.protocol_errors} corrupted"
            )
            return lines
        finally:
            if device is not None:
                device.close()
            stop.set()
            runner.join(timeout=5.0)


def run_serial_bench(backends: list[str], n: int) -> None:
    print(f"serial round trips over a pty, {n} calls each (perf_counter, wall time)")
    for name in backends or sorted(BACKENDS):
        print("\n".join(bench_backend(name, n)), flush=True)
        if name == "ne1000":  # the framed, CRC-checked mode too
            print("\n".join(bench_backend(name, n, safe_mode=True)), flush=True)
