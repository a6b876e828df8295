"""seem_ros: SEEM (Segment Everything Everywhere All at Once) for ROS 2 robots."""
