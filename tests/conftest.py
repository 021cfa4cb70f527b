"""Test-wide settings: every test run talks DDS on loopback in a domain of its own."""

from __future__ import annotations

import os

# Before anything imports rclpy: isolate this run from other runs (and from a demo) on the
# same machine. tools/rig-env already picks one; a bare `pytest` gets one here.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 100 + 1))
