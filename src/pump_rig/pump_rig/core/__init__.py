"""Pure-Python core of pump_rig: no rclpy imports, time always passed in (seconds)."""
