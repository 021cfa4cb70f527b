"""Device drivers: pyserial transport and per-protocol pump drivers (no rclpy)."""
