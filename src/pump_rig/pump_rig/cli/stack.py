"""The whole rig in one process (``pumprig up`` / ``pumprig demo``).

The same node classes as the separate executables, each spun by its own single-threaded
executor on its own thread (as if in its own process: a node blocked on serial I/O cannot delay
another, and rclpy's MultiThreadedExecutor busy-waits on busy callback groups), with the
parameters of a ROS parameter file (``config/mock.yaml`` by default). Mock hardware by default;
with a real ``port`` the mock is left out and the motor driver talks to that device.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from pump_rig.nodes.dosing_controller import DosingController
from pump_rig.nodes.mock_hardware import MockHardware
from pump_rig.nodes.motor_driver import MotorDriver
from pump_rig.nodes.pressure_monitor import PressureMonitor
from pump_rig.nodes.telemetry_recorder import TelemetryRecorder


def package_share() -> Path:
    """share/pump_rig when installed, else the repository (running from a source tree)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("pump_rig"))
    except Exception:
        return Path(__file__).resolve().parents[4]


def default_config() -> Path:
    return package_share() / "config" / "mock.yaml"


def private_clock_args(namespace: str) -> list[str]:
    """Remap /clock into the rig's namespace for every node of the rig (the mock publishes
    it, the others listen): two accelerated rigs in one ROS domain then keep their own
    simulated time instead of driving each other's. A rig in the root namespace keeps
    /clock."""
    ns = "/" + namespace.strip("/")
    return [] if ns == "/" else ["-r", f"/clock:={ns}/clock"]


@dataclass
class StackOptions:
    namespace: str = "/rig"
    config: Path | None = None
    speed: float | None = None
    program: Path | None = None
    record: Path | None = None
    journal: Path | None = None  # dose journal ('' parameter default: under $ROS_HOME)
    port: str | None = None  # a real device: no mock
    controller: bool = True  # False: something else commands the pump (tests, manual runs)
    # True: an existing journal is kept as a dated copy and a new ledger starts (mock runs);
    # False: the params file decides (journal_on_start, 'resume' by default).
    new_ledger: bool = False
    extra: dict[str, list[Parameter[Any]]] = field(default_factory=dict)  # per-node overrides


class Stack:
    """Builds and runs the nodes; ``start()`` spins them on a background thread."""

    def __init__(self, options: StackOptions, context: Context | None = None) -> None:
        self.options = options
        self.context = context or Context()
        if not self.context.ok():
            rclpy.init(context=self.context)
        config = options.config or default_config()
        if not config.is_file():
            raise ValueError(f"config file {config} not found")
        self._cli_args = [
            "--ros-args",
            "--params-file",
            str(config),
            *private_clock_args(options.namespace),
        ]
        sim = options.speed is not None and options.speed != 1.0
        self._common = [Parameter("use_sim_time", Parameter.Type.BOOL, True)] if sim else []
        self.nodes: list[Node] = []
        self.mock: MockHardware | None = None
        try:
            self._build()
        except BaseException:
            self.shutdown()
            raise
        self._executors: list[SingleThreadedExecutor] = []
        self._threads: list[threading.Thread] = []

    def _make(
        self, factory: Callable[..., Node], name: str, overrides: list[Parameter[Any]]
    ) -> Node:
        node = factory(
            namespace=self.options.namespace,
            context=self.context,
            cli_args=self._cli_args,
            parameter_overrides=self._common + overrides + self.options.extra.get(name, []),
        )
        self.nodes.append(node)
        return node

    def _build(self) -> None:
        opts = self.options
        port = opts.port
        if port is None:
            mock_overrides = []
            if opts.speed is not None:
                mock_overrides.append(Parameter("speed", Parameter.Type.DOUBLE, float(opts.speed)))
            self.mock = self._make(MockHardware, "mock_hardware", mock_overrides)  # type: ignore[assignment]
            assert self.mock is not None
            port = self.mock.port
        controller_overrides = []
        if opts.program is not None:
            controller_overrides.append(
                Parameter("program_file", Parameter.Type.STRING, str(opts.program))
            )
        if opts.journal is not None:
            controller_overrides.append(
                Parameter("journal_path", Parameter.Type.STRING, str(opts.journal))
            )
        if opts.new_ledger:
            controller_overrides.append(Parameter("journal_on_start", Parameter.Type.STRING, "new"))
        self._make(PressureMonitor, "pressure_monitor", [])
        self._make(MotorDriver, "motor_driver", [Parameter("port", Parameter.Type.STRING, port)])
        if opts.controller:
            self._make(DosingController, "dosing_controller", controller_overrides)
        if opts.record is not None:
            self._make(
                TelemetryRecorder,
                "telemetry_recorder",
                [Parameter("bag_path", Parameter.Type.STRING, str(opts.record))],
            )

    def node(self, name: str) -> Any:
        return next(n for n in self.nodes if n.get_name() == name)

    def start(self) -> None:
        for node in self.nodes:
            executor = SingleThreadedExecutor(context=self.context)
            executor.add_node(node)
            thread = threading.Thread(
                target=self._spin, args=(executor,), name=node.get_name(), daemon=True
            )
            self._executors.append(executor)
            self._threads.append(thread)
            thread.start()

    def _spin(self, executor: SingleThreadedExecutor) -> None:
        try:
            executor.spin()
        except Exception:  # context shut down while spinning
            if self.context.ok():
                raise

    def sim_now_s(self) -> float:
        if self.mock is not None:
            return self.mock.sim_now_s()
        return self.nodes[0].get_clock().now().nanoseconds * 1e-9

    def shutdown(self) -> None:
        """Stop spinning, then stop the pump, close the journal and the bag (no callback runs
        on a closed node). Safe to call twice."""
        for executor in getattr(self, "_executors", []):
            executor.shutdown(timeout_sec=5.0)
        for thread in getattr(self, "_threads", []):
            thread.join(timeout=5.0)
        for node in reversed(self.nodes):
            close = getattr(node, "close", None)
            if callable(close):
                close()
        for node in self.nodes:
            node.destroy_node()
        self.nodes = []
        rclpy.try_shutdown(context=self.context)
