"""Conversions between ROS time and the core's float seconds."""

from __future__ import annotations

from builtin_interfaces.msg import Time as TimeMsg
from rclpy.clock import Clock
from rclpy.clock_type import ClockType
from rclpy.node import Node
from rclpy.time import Time


def now_s(node: Node) -> float:
    """The node's ROS time (simulated when use_sim_time is set) in seconds."""
    return node.get_clock().now().nanoseconds * 1e-9


def stamp_to_s(stamp: TimeMsg) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def s_to_stamp(t_s: float) -> TimeMsg:
    return Time(nanoseconds=round(t_s * 1e9)).to_msg()


def clock_valid(node: Node) -> bool:
    """False until a node using sim time has received its first /clock (ROS time is 0 then).

    Nothing time-based may start before: a watchdog would see a jump of decades, and integrals
    would start at the epoch.
    """
    return bool(node.get_clock().now().nanoseconds > 0)


def wall_clock() -> Clock:
    """A steady clock for timers that must run in wall time whatever use_sim_time says
    (diagnostics, discovery, the mock's own update loop)."""
    return Clock(clock_type=ClockType.STEADY_TIME)
