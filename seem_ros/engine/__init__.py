"""Inference engine: prompts, sessions, tracking memory, vocabulary cache, backends. No ROS imports."""
