"""Talking to a running rig from the command line: service calls and topic snapshots."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.node import Node

from pump_rig.nodes.contract import rig_subscription

# How long a repeated read of a topic takes in what has arrived since the previous one.
REFRESH_S = 0.1


class RigUnreachableError(Exception):
    """No rig answered: not running, another namespace, or another ROS_DOMAIN_ID."""


class RigClient:
    def __init__(
        self,
        namespace: str = "/rig",
        context: Context | None = None,
        discovery_timeout_s: float = 10.0,
    ) -> None:
        # One discovery window for the client's life: a topic nobody publishes costs at most
        # what is left of it, not a full timeout per topic.
        self._discovery_deadline = time.monotonic() + discovery_timeout_s
        self._inboxes: dict[str, list[Any]] = {}
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
            discovery_left_s = self._discovery_deadline - time.monotonic()
            if not client.wait_for_service(timeout_sec=max(timeout_s, discovery_left_s)):
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
        """The newest (or latched) message on a rig topic, or None if none arrives in time.

        ``timeout_s`` counts from the moment a publisher is discovered: on a loaded machine DDS
        discovery alone can take seconds, and it must not be mistaken for a silent rig.
        """
        received = self._subscription(topic)
        if self._await_publisher(topic):
            if received:
                # Seen this topic before: take in whatever has arrived since.
                self._spin_until(lambda: False, REFRESH_S)
            else:
                self._spin_until(lambda: bool(received), timeout_s)
        del received[:-1]  # a long-lived client keeps only what the next call can return
        return received[-1] if received else None

    def collect(self, topic: str, duration_s: float) -> list[Any]:
        """Every message on ``topic`` (latched ones included) during ``duration_s``."""
        received = self._subscription(topic)
        if self._await_publisher(topic):
            self._spin_until(lambda: False, duration_s)
        return list(received)

    def _subscription(self, topic: str) -> list[Any]:
        """One subscription per topic for the client's lifetime; returns its inbox."""
        if topic not in self._inboxes:
            inbox: list[Any] = []
            rig_subscription(self.node, topic, inbox.append, name=self.full(topic))
            self._inboxes[topic] = inbox
        return self._inboxes[topic]

    def _await_publisher(self, topic: str) -> bool:
        name = self.full(topic)
        return self._spin_until(
            lambda: self.node.count_publishers(name) > 0,
            self._discovery_deadline - time.monotonic(),
        )

    def _spin_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        executor = self._executor()
        while not done():
            if time.monotonic() >= deadline:
                return False
            executor.spin_once(timeout_sec=0.05)
        return True

    def _executor(self) -> Any:
        if not hasattr(self, "_exec"):
            from rclpy.executors import SingleThreadedExecutor

            self._exec = SingleThreadedExecutor(context=self.context)
            self._exec.add_node(self.node)
        return self._exec

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
