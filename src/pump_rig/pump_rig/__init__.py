"""pump_rig: ROS 2 control stack for an intrathecal drug pump bench rig."""
