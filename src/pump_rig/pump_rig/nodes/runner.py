"""Process entry point shared by the node executables."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from pump_rig.core.bag_recording import RecordingError


def run_node(factory: Callable[..., Node], args: list[str] | None = None) -> None:
    """Create the node, spin it until shutdown, and turn configuration errors into one line."""
    rclpy.init(args=args)
    node: Node | None = None
    try:
        node = factory()
        # Callbacks of a node run one at a time (the default callback group), so one thread
        # is all it can use; rclpy's MultiThreadedExecutor would busy-wait.
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, RecordingError) as exc:
        name = getattr(factory, "__name__", "node")
        print(f"{name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if node is not None:
            close: Any = getattr(node, "close", None)
            if callable(close):
                close()
            node.destroy_node()
        rclpy.try_shutdown()
