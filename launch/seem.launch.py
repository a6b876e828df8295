"""Launch seem_node on a camera, optionally with RViz and the speech prompt node.

  ros2 launch seem_ros seem.launch.py camera_topic:=/camera/color/image_raw device:=cuda rviz:=true
  ros2 launch seem_ros seem.launch.py camera_topic:=/camera/color/image_raw \
      depth_topic:=/camera/aligned_depth_to_color/image_raw params_file:=/robot/seem.yaml \
      speech:=true speech_params_file:=/robot/seem_speech.yaml

Every node gets its parameters file (seem_node: params_file, default config/seem.yaml of the package;
seem_speech_node: speech_params_file, default none) and then the launch arguments that override it.
The choice of nodes, parameters and remappings lives in seem_ros.launch_logic (tested without launch).
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from seem_ros.launch_logic import LAUNCH_ARGUMENTS, PACKAGE, LaunchArguments, plan_nodes


def _nodes(context):
    values = {spec.name: LaunchConfiguration(spec.name).perform(context) for spec in LAUNCH_ARGUMENTS}
    share_dir = Path(get_package_share_directory(PACKAGE))
    return [
        Node(
            package=spec.package,
            executable=spec.executable,
            name=spec.name,
            parameters=[*spec.params_files, dict(spec.parameters)],
            remappings=list(spec.remappings),
            arguments=list(spec.arguments),
            output="screen",
        )
        for spec in plan_nodes(LaunchArguments.from_strings(values), share_dir)
    ]


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument(
            spec.name, default_value=spec.default, description=spec.description, choices=spec.choices
        )
        if spec.choices
        else DeclareLaunchArgument(spec.name, default_value=spec.default, description=spec.description)
        for spec in LAUNCH_ARGUMENTS
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_nodes)])
