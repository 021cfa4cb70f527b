"""Talking to a running rig from the command line: service calls and topic snapshots."""

from __future__ import annotations

import time
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.node import Node
from rclpy.qos import QoSProfile

from pump_rig.nodes.contract import TOPICS_BY_NAME


class RigUnreachableError(Exception):
    """No rig answered: not running, another namespace, or another ROS_DOMAIN_ID."""


class RigClient:
    def __init__(self, namespace: str = "/rig", context: Context | None = None) -> None:
        self.namespace = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self.context = context or Context()
        if not self.context.ok():
            rclpy.init(context=self.context)
        self.node = Node(
            f"pumprig_cli_{time.monotonic_ns() % 1_000_000}",
            context=self.context,
            start_parameter_services=False,
        )

    def full(self, name: str) -> str:
        return name if name.startswith("/") else f"{self.namespace}/{name}"

    def call(self, srv_type: Any, name: str, request: Any, timeout_s: float = 5.0) -> Any:
        """Call a service; RigUnreachableError when nobody serves it within the timeout."""
        client: Any = self.node.create_client(srv_type, self.full(name))
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                raise RigUnreachableError(
                    f"service {self.full(name)} not available (is the rig running in this "
                    f"namespace and ROS_DOMAIN_ID?)"
                )
            future = client.call_async(request)
            rclpy.spin_until_future_complete(
                self.node, future, timeout_sec=timeout_s, executor=self._executor()
            )
            if not future.done():
                raise RigUnreachableError(
                    f"service {self.full(name)} did not answer in {timeout_s:g} s"
                )
            return future.result()
        finally:
            self.node.destroy_client(client)

    def latest(self, topic: str, timeout_s: float = 3.0) -> Any | None:
        """The next (or latched) message on a rig topic, or None if none arrives in time."""
        spec = TOPICS_BY_NAME[topic]
        msg_type = _message_class(spec.type_name)
        received: list[Any] = []
        qos = QoSProfile(
            depth=spec.qos.depth, reliability=spec.qos.reliability, durability=spec.qos.durability
        )
        sub = self.node.create_subscription(msg_type, self.full(topic), received.append, qos)
        try:
            deadline = time.monotonic() + timeout_s
            executor = self._executor()
            while not received and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.05)
            return received[-1] if received else None
        finally:
            self.node.destroy_subscription(sub)

    def collect(self, topic: str, duration_s: float) -> list[Any]:
        """Every message on ``topic`` (latched ones included) during ``duration_s``."""
        spec = TOPICS_BY_NAME[topic]
        received: list[Any] = []
        sub = self.node.create_subscription(
            _message_class(spec.type_name), self.full(topic), received.append, spec.qos
        )
        try:
            deadline = time.monotonic() + duration_s
            executor = self._executor()
            while time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.05)
            return received
        finally:
            self.node.destroy_subscription(sub)

    def _executor(self) -> Any:
        if not hasattr(self, "_exec"):
            from rclpy.executors import SingleThreadedExecutor

            self._exec = SingleThreadedExecutor(context=self.context)
            self._exec.add_node(self.node)
        return self._exec

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def _message_class(type_name: str) -> Any:
    from pump_rig.nodes.telemetry_recorder import message_class

    return message_class(type_name)
