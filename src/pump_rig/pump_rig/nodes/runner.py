"""Process entry point shared by the node executables."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rclpy
from rclpy.exceptions import NameValidationException, ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from pump_rig.core.bag_recording import RecordingError
from pump_rig.nodes.dds_profile import use_rig_dds_profile


def run_node(factory: Callable[..., Node], args: list[str] | None = None) -> None:
    """Create the node, spin it until shutdown, and turn configuration errors into one line."""
    use_rig_dds_profile()
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
    except (ValueError, RecordingError, ParameterException, NameValidationException) as exc:
        # Bad configuration: one line naming the problem, exit status 2, nothing started.
        print(f"{Path(sys.argv[0]).name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception:
        # A signal can shut the context down while the executor is between waits; rclpy then
        # raises RCLError ("context is not valid") instead of ExternalShutdownException.
        if rclpy.ok():
            raise
    finally:
        # `ros2 launch` without a terminal forwards SIGINT to nodes that already got it from
        # the process group; a second signal must not interrupt closing the bag or stopping
        # the pump half way.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if node is not None:
            close: Any = getattr(node, "close", None)
            if callable(close):
                close()
            node.destroy_node()
        rclpy.try_shutdown()
