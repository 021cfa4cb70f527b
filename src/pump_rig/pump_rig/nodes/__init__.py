"""ROS 2 node shells: they wire core objects to parameters, topics, services and timers."""
