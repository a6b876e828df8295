"""ROS 2 layer: node, parameters and message conversions."""
