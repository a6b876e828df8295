"""seem_ros.launch_logic and what must agree with it: launch file, setup.py, CMakeLists.txt, seem.yaml."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from seem_ros.launch_logic import (
    LAUNCH_ARGUMENTS,
    LaunchArguments,
    NodeSpec,
    camera_remappings,
    depth_remappings,
    format_parameter_value,
    plan_nodes,
)
from seem_ros.ros.parameters import PARAMETERS

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARE = Path("/opt/ros/share/seem_ros")


def test_defaults_start_only_seem_node():
    (node,) = plan_nodes(LaunchArguments(), SHARE)
    assert (node.package, node.executable, node.name) == ("seem_ros", "seem_node", "seem_node")
    assert node.params_files == (str(SHARE / "config" / "seem.yaml"),)
    assert node.parameters == (("compressed", False),)
    assert node.remappings == (("image", "/camera/image_raw"), ("camera_info", "/camera/camera_info"))


def test_model_arguments_override_the_params_file():
    args = LaunchArguments(preset="focalt_tiny", checkpoint="/models/tiny.safetensors", device="cuda:1")
    (node,) = plan_nodes(args, SHARE)
    assert dict(node.parameters) == {
        "compressed": False,
        "preset": "focalt_tiny",
        "checkpoint": "/models/tiny.safetensors",
        "device": "cuda:1",
    }


def test_custom_params_file():
    (node,) = plan_nodes(LaunchArguments(params_file="/robot/seem.yaml"), SHARE)
    assert node.params_files == ("/robot/seem.yaml",)


def test_optional_nodes():
    nodes = plan_nodes(LaunchArguments(rviz=True, speech=True), SHARE)
    assert [node.executable for node in nodes] == ["seem_node", "seem_speech_node", "rviz2"]
    assert nodes[1].params_files == ()
    rviz = nodes[2]
    assert rviz.package == "rviz2"
    assert rviz.module is None
    assert rviz.arguments == ("-d", str(SHARE / "config" / "seem.rviz"))


def test_params_files_reach_both_nodes():
    args = LaunchArguments(
        params_file="/robot/seem.yaml", speech=True, speech_params_file="/robot/speech.yaml"
    )
    seem_node, speech_node = plan_nodes(args, SHARE)
    assert seem_node.params_files == ("/robot/seem.yaml",)
    assert speech_node.params_files == ("/robot/speech.yaml",)
    assert speech_node.ros_arguments()[3:] == ["--params-file", "/robot/speech.yaml"]


def test_depth_topic_enables_depth_and_remaps_it():
    (node,) = plan_nodes(LaunchArguments(depth_topic="/camera/aligned_depth_to_color/image_raw"), SHARE)
    assert dict(node.parameters) == {"compressed": False, "use_depth": True}
    assert node.remappings == (
        ("image", "/camera/image_raw"),
        ("camera_info", "/camera/camera_info"),
        ("depth", "/camera/aligned_depth_to_color/image_raw"),
        ("depth/camera_info", "/camera/aligned_depth_to_color/camera_info"),
    )
    assert depth_remappings("depth") == (("depth", "depth"), ("depth/camera_info", "camera_info"))


@pytest.mark.parametrize(
    ("topic", "compressed", "expected"),
    [
        (
            "/camera/color/image_raw",
            False,
            (("image", "/camera/color/image_raw"), ("camera_info", "/camera/color/camera_info")),
        ),
        (
            "/cam/image",
            True,
            (("image/compressed", "/cam/image/compressed"), ("camera_info", "/cam/camera_info")),
        ),
        ("image_raw", False, (("image", "image_raw"), ("camera_info", "camera_info"))),
        ("/image_raw", False, (("image", "/image_raw"), ("camera_info", "/camera_info"))),
    ],
)
def test_camera_remappings(topic: str, compressed: bool, expected: tuple):
    assert camera_remappings(topic, compressed) == expected


def test_several_cameras_share_one_node():
    args = LaunchArguments.from_strings(
        {"cameras": "front=/front/color/image_raw, wrist = /wrist/image", "compressed": "true"}
    )
    assert args.cameras == (("front", "/front/color/image_raw"), ("wrist", "/wrist/image"))
    (node,) = plan_nodes(args, SHARE)
    assert dict(node.parameters)["cameras"] == ["front", "wrist"]
    assert node.remappings == (
        ("front/image/compressed", "/front/color/image_raw/compressed"),
        ("front/camera_info", "/front/color/camera_info"),
        ("wrist/image/compressed", "/wrist/image/compressed"),
        ("wrist/camera_info", "/wrist/camera_info"),
    )
    assert "cameras:=['front', 'wrist']" in " ".join(node.ros_arguments())


def test_from_strings():
    args = LaunchArguments.from_strings({"camera_topic": "/cam/image", "rviz": "True", "device": "cpu"})
    assert args == LaunchArguments(camera_topic="/cam/image", rviz=True, device="cpu")
    args = LaunchArguments.from_strings({"depth_topic": " /cam/depth ", "speech_params_file": "/s.yaml"})
    assert args == LaunchArguments(depth_topic="/cam/depth", speech_params_file="/s.yaml")
    assert LaunchArguments.from_strings({}) == LaunchArguments()
    assert (
        LaunchArguments.from_strings({spec.name: spec.default for spec in LAUNCH_ARGUMENTS})
        == LaunchArguments()
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rviz": "yes"}, "rviz:='yes' must be one of true, false"),
        ({"camera": "/x"}, "unknown launch arguments \\['camera'\\]"),
        ({"camera_topic": " "}, "camera_topic must not be empty"),
        ({"speech": "maybe"}, "speech:='maybe' must be one of true, false"),
        ({"cameras": "front"}, "'front' is not name=image_topic"),
        ({"cameras": "2nd=/x"}, "is not name=image_topic"),
        ({"cameras": "a=/x,a=/y"}, "names a camera twice"),
        ({"cameras": "a=/x", "depth_topic": "/d"}, "depth_topic is for one camera"),
    ],
)
def test_from_strings_errors(values: dict[str, str], message: str):
    with pytest.raises(ValueError, match=message):
        LaunchArguments.from_strings(values)


def test_command_line():
    spec = NodeSpec(
        package="seem_ros",
        executable="seem_node",
        name="segmenter",
        module="seem_ros.ros.seem_node",
        params_files=("/p.yaml",),
        parameters=(
            ("preset", "focalt_tiny"),
            ("random_weights", True),
            ("score_threshold", 0.5),
            ("max_instances", 5),
            ("vocabulary", ("cup", "it's")),
        ),
        remappings=(("image", "/cam/image"),),
    )
    ros_args = [
        "--ros-args", "-r", "__node:=segmenter", "--params-file", "/p.yaml",
        "-p", "preset:=focalt_tiny", "-p", "random_weights:=true", "-p", "score_threshold:=0.5",
        "-p", "max_instances:=5", "-p", "vocabulary:=['cup', 'it''s']", "-r", "image:=/cam/image",
    ]  # fmt: skip
    assert spec.command() == ["seem_node", *ros_args]
    assert spec.command(python="/venv/bin/python") == [
        "/venv/bin/python",
        "-m",
        "seem_ros.ros.seem_node",
        *ros_args,
    ]


def test_parameter_values_parse_back_as_yaml():
    for value in (True, False, 3, 0.25, 1e-06, 2e20, "cuda:0", ["a b", "it's"]):
        assert yaml.safe_load(format_parameter_value(value)) == value


def test_launch_file_declares_every_argument_and_uses_the_plan():
    source = (REPO_ROOT / "launch" / "seem.launch.py").read_text()
    tree = ast.parse(source)
    functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    assert "plan_nodes" in source and "LAUNCH_ARGUMENTS" in source


def _setup_py_scripts() -> dict[str, str]:
    source = (REPO_ROOT / "setup.py").read_text()
    return dict(re.findall(r'"([\w-]+) = ([\w.]+:\w+)"', source))


def _cmake_executables() -> dict[str, str]:
    source = (REPO_ROOT / "CMakeLists.txt").read_text()
    return dict(re.findall(r'"(\w+)=([\w.]+:\w+)"', source))


def test_executables_match_setup_py_and_cmake():
    scripts = _setup_py_scripts()
    executables = _cmake_executables()
    assert executables, "CMakeLists.txt lists no executables"
    for name, target in executables.items():
        assert scripts[name] == target
    nodes = plan_nodes(LaunchArguments(speech=True), SHARE)
    for node in nodes:
        assert executables[node.executable] == f"{node.module}:main"


def test_seem_yaml_lists_every_parameter_with_its_default():
    document = yaml.safe_load((REPO_ROOT / "config" / "seem.yaml").read_text())
    values = document["/**"]["ros__parameters"]
    assert list(values) == [spec.name for spec in PARAMETERS]
    for spec in PARAMETERS:
        assert values[spec.name] == spec.default, spec.name
