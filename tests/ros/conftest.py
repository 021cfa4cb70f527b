"""Fixtures for tests that run real ROS 2 nodes (rclpy, DDS on loopback)."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:  # The workspace must be built (make test does it); say so plainly if it is not.
    import rclpy
    from pump_rig_interfaces.msg import PumpState  # noqa: F401
except ImportError as exc:  # pragma: no cover - environment problem, not a test result
    raise pytest.UsageError(
        f"ROS tests need the built workspace ({exc}); run them with `make test`"
    ) from exc

from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile

from pump_rig.cli.stack import Stack, StackOptions
from pump_rig.nodes.contract import TOPICS_BY_NAME, message_class

REPO = Path(__file__).resolve().parents[2]
PROGRAM = REPO / "config" / "programs" / "baclofen_constant.yaml"
_names = itertools.count()


def unique_namespace() -> str:
    return f"/t{os.getpid()}_{next(_names)}"


class Probe:
    """A test-side node that watches rig topics and calls rig services."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = Node(f"probe_{next(_names)}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received: dict[str, list[Any]] = {}
        self._publishers: dict[str, Any] = {}

    def full(self, name: str) -> str:
        return name if name.startswith("/") else f"{self.namespace}/{name}"

    def watch(self, topic: str) -> list[Any]:
        if topic not in self.received:
            spec = TOPICS_BY_NAME[topic]
            self.received[topic] = []
            self.node.create_subscription(
                message_class(spec.type_name),
                self.full(topic),
                self.received[topic].append,
                QoSProfile(
                    depth=1000, reliability=spec.qos.reliability, durability=spec.qos.durability
                ),
            )
        return self.received[topic]

    def publish(self, topic: str, msg: Any) -> None:
        if topic not in self._publishers:
            spec = TOPICS_BY_NAME[topic]
            self._publishers[topic] = self.node.create_publisher(
                message_class(spec.type_name), self.full(topic), spec.qos
            )
        self._publishers[topic].publish(msg)

    def wait_for(
        self, condition: Callable[[], Any], timeout_s: float = 20.0, what: str = "condition"
    ) -> Any:
        """Spin until ``condition()`` is truthy; fail with ``what`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = condition()
            if result:
                return result
            self.executor.spin_once(timeout_sec=0.02)
        raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")

    def call(self, srv_type: Any, name: str, request: Any, timeout_s: float = 10.0) -> Any:
        client: Any = self.node.create_client(srv_type, self.full(name))
        assert client.wait_for_service(timeout_sec=timeout_s), f"no service {self.full(name)}"
        future = client.call_async(request)
        self.wait_for(future.done, timeout_s, f"answer from {self.full(name)}")
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def last(messages: list[Any]) -> Any:
    return messages[-1] if messages else None


@pytest.fixture
def namespace() -> str:
    return unique_namespace()


@pytest.fixture
def probe(namespace: str) -> Iterator[Probe]:
    p = Probe(namespace)
    yield p
    p.close()


@pytest.fixture
def make_stack(tmp_path: Path, namespace: str) -> Iterator[Callable[..., Stack]]:
    """Start a whole rig in this process; stopped at the end of the test."""
    stacks: list[Stack] = []

    def make(**options: Any) -> Stack:
        from rclpy.parameter import Parameter

        extra = options.pop("extra", {})
        link = Parameter("port_link", Parameter.Type.STRING, str(tmp_path / f"pump{len(stacks)}"))
        extra.setdefault("mock_hardware", []).append(link)
        stack = Stack(StackOptions(namespace=namespace, extra=extra, **options))
        stacks.append(stack)
        stack.start()
        return stack

    yield make
    for stack in stacks:
        stack.shutdown()
