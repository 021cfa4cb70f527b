"""Test-wide settings: every test run talks DDS on loopback in a domain of its own."""

from __future__ import annotations

import os
import tempfile

# Before anything imports rclpy: isolate this run from other runs and from a rig the user has
# running in this checkout's own domain (tools/rig-env picks 1-100 per checkout). Test runs
# take 150-229, one per process; subprocesses started by tests inherit it.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(150 + os.getpid() % 80)
# Dose journals default to $ROS_HOME/pump_rig/domain<N>/<namespace>/: keep each run's apart from the
# user's and from other runs'.
os.environ["ROS_HOME"] = tempfile.mkdtemp(prefix="pump_rig_test_ros_home_")

# The probes in this process serve and call services like the rig's own processes do.
from pump_rig.nodes.dds_profile import use_rig_dds_profile

use_rig_dds_profile()
