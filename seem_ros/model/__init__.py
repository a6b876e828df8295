"""Pure PyTorch implementation of SEEM v1. No ROS imports below this package."""
