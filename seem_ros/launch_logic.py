"""What launch/seem.launch.py decides, as plain Python: which nodes run, with which parameters and remaps.

The launch file turns the plan into launch_ros Nodes; tests turn the same plan into `--ros-args` command lines
and start the nodes as processes (no launch package needed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

PACKAGE = "seem_ros"

ParameterValue = bool | int | float | str | list[str] | tuple[str, ...]


@dataclass(frozen=True)
class ArgumentSpec:
    """One launch argument; values arrive as strings."""

    name: str
    default: str
    description: str
    choices: tuple[str, ...] | None = None


LAUNCH_ARGUMENTS: tuple[ArgumentSpec, ...] = (
    ArgumentSpec(
        "camera_topic",
        "/camera/image_raw",
        "sensor_msgs/Image topic to segment (camera_info is its sibling).",
    ),
    ArgumentSpec(
        "cameras",
        "",
        "Several cameras served by one model: name=image_topic pairs separated by commas "
        "(front=/front/color/image_raw,wrist=/wrist/color/image_raw); each camera's topics and services "
        "are then under its name. Empty = one camera on camera_topic.",
    ),
    ArgumentSpec("compressed", "false", "Subscribe to <camera_topic>/compressed instead.", ("true", "false")),
    ArgumentSpec(
        "depth_topic",
        "",
        "Depth image aligned to the colour image (16UC1 mm or 32FC1 m; camera_info is its sibling): "
        "instances get 3-D centroids and extents. Empty = no depth.",
    ),
    ArgumentSpec("preset", "", "Model preset; empty = the value in params_file."),
    ArgumentSpec("checkpoint", "", "Checkpoint file; empty = the value in params_file."),
    ArgumentSpec("device", "", "auto, cpu, cuda or cuda:N; empty = the value in params_file."),
    ArgumentSpec("params_file", "", "Parameters of seem_node; empty = config/seem.yaml of the package."),
    ArgumentSpec("rviz", "false", "Start RViz with config/seem.rviz.", ("true", "false")),
    ArgumentSpec(
        "speech", "false", "Start seem_speech_node, which turns speech into prompts.", ("true", "false")
    ),
    ArgumentSpec(
        "speech_params_file", "", "Parameters of seem_speech_node; empty = its defaults (Whisper base)."
    ),
)


@dataclass(frozen=True)
class LaunchArguments:
    """Typed launch arguments; see LAUNCH_ARGUMENTS for their meaning."""

    camera_topic: str = "/camera/image_raw"
    cameras: tuple[tuple[str, str], ...] = ()
    compressed: bool = False
    depth_topic: str = ""
    preset: str = ""
    checkpoint: str = ""
    device: str = ""
    params_file: str = ""
    rviz: bool = False
    speech: bool = False
    speech_params_file: str = ""

    @classmethod
    def from_strings(cls, values: dict[str, str]) -> LaunchArguments:
        """Parse launch-argument strings (missing ones take their defaults). Raises ValueError."""
        known = {spec.name: spec for spec in LAUNCH_ARGUMENTS}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown launch arguments {unknown}; known: {', '.join(known)}")
        merged = {name: values.get(name, spec.default).strip() for name, spec in known.items()}
        for name, spec in known.items():
            if spec.choices is not None and merged[name].lower() not in spec.choices:
                raise ValueError(
                    f"launch argument {name}:={merged[name]!r} must be one of {', '.join(spec.choices)}"
                )
        if not merged["camera_topic"]:
            raise ValueError("launch argument camera_topic must not be empty")
        cameras = parse_cameras(merged["cameras"])
        if cameras and merged["depth_topic"]:
            raise ValueError(
                "launch argument depth_topic is for one camera; with cameras, remap each camera's "
                "<name>/depth and set use_depth in params_file"
            )
        return cls(
            camera_topic=merged["camera_topic"],
            cameras=cameras,
            compressed=merged["compressed"].lower() == "true",
            depth_topic=merged["depth_topic"],
            preset=merged["preset"],
            checkpoint=merged["checkpoint"],
            device=merged["device"],
            params_file=merged["params_file"],
            rviz=merged["rviz"].lower() == "true",
            speech=merged["speech"].lower() == "true",
            speech_params_file=merged["speech_params_file"],
        )


def parse_cameras(text: str) -> tuple[tuple[str, str], ...]:
    """(name, image topic) pairs of "front=/front/image_raw,wrist=/wrist/image_raw"; () for ""."""
    cameras = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, topic = (piece.strip() for piece in item.partition("="))
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) or not topic:
            raise ValueError(
                f"launch argument cameras: {item!r} is not name=image_topic (a name of letters, digits "
                "and '_', starting with a letter)"
            )
        cameras.append((name, topic))
    names = [name for name, _ in cameras]
    if len(set(names)) != len(names):
        raise ValueError(f"launch argument cameras names a camera twice: {text!r}")
    return tuple(cameras)


@dataclass(frozen=True)
class NodeSpec:
    """A node to start. module: Python module runnable with `python -m` (None for non-Python nodes)."""

    package: str
    executable: str
    name: str
    module: str | None = None
    params_files: tuple[str, ...] = ()
    parameters: tuple[tuple[str, ParameterValue], ...] = ()
    remappings: tuple[tuple[str, str], ...] = ()
    arguments: tuple[str, ...] = ()

    def ros_arguments(self) -> list[str]:
        """`--ros-args ...` equivalent to what launch_ros passes for this node."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        for params_file in self.params_files:
            args += ["--params-file", params_file]
        for name, value in self.parameters:
            args += ["-p", f"{name}:={format_parameter_value(value)}"]
        for source, target in self.remappings:
            args += ["-r", f"{source}:={target}"]
        return args

    def command(self, python: str | None = None) -> list[str]:
        """Command line starting this node: `python -m module` when python is given and the node is Python,
        else the installed executable."""
        if python is not None and self.module is not None:
            program = [python, "-m", self.module]
        else:
            program = [self.executable]
        return [*program, *self.arguments, *self.ros_arguments()]


def format_parameter_value(value: ParameterValue) -> str:
    """A value as written after `-p name:=` (YAML): true/false, numbers, strings, [a, b] lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        mantissa, exponent_mark, exponent = repr(value).partition("e")
        if exponent_mark and "." not in mantissa:
            mantissa += ".0"  # YAML reads 1e-06 as a string, 1.0e-06 as a float
        return mantissa + exponent_mark + exponent
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml_string(item) for item in value) + "]"
    return value


def _yaml_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def sibling_camera_info(image_topic: str) -> str:
    """The CameraInfo topic next to an image topic (image_transport's convention)."""
    parent = PurePosixPath(image_topic).parent
    return str(parent / "camera_info") if str(parent) not in (".", "") else "camera_info"


def camera_remappings(camera_topic: str, compressed: bool, name: str = "") -> tuple[tuple[str, str], ...]:
    """Remap seem_node's inputs to a camera: the image (or its /compressed) and the sibling camera_info;
    name: the camera's namespace in a node serving several ("" = the only camera)."""
    prefix = f"{name}/" if name else ""
    image = (f"{prefix}image", camera_topic)
    if compressed:
        image = (f"{prefix}image/compressed", f"{camera_topic}/compressed")
    return (image, (f"{prefix}camera_info", sibling_camera_info(camera_topic)))


def depth_remappings(depth_topic: str) -> tuple[tuple[str, str], ...]:
    """Remap seem_node's depth inputs to a depth camera: the image and its sibling camera_info."""
    return (("depth", depth_topic), ("depth/camera_info", sibling_camera_info(depth_topic)))


def plan_nodes(args: LaunchArguments, share_dir: Path) -> list[NodeSpec]:
    """The nodes to start for `args`; share_dir holds config/ (the package's share directory or the repo)."""
    params_file = args.params_file or str(share_dir / "config" / "seem.yaml")
    parameters: list[tuple[str, ParameterValue]] = [("compressed", args.compressed)]
    parameters += [
        (name, value)
        for name, value in (("preset", args.preset), ("checkpoint", args.checkpoint), ("device", args.device))
        if value
    ]
    if args.cameras:
        parameters.append(("cameras", [name for name, _ in args.cameras]))
        remappings = tuple(
            pair for name, topic in args.cameras for pair in camera_remappings(topic, args.compressed, name)
        )
    else:
        remappings = camera_remappings(args.camera_topic, args.compressed)
    if args.depth_topic:
        parameters.append(("use_depth", True))
        remappings += depth_remappings(args.depth_topic)
    nodes = [
        NodeSpec(
            package=PACKAGE,
            executable="seem_node",
            name="seem_node",
            module="seem_ros.ros.seem_node",
            params_files=(params_file,),
            parameters=tuple(parameters),
            remappings=remappings,
        )
    ]
    if args.speech:
        nodes.append(
            NodeSpec(
                package=PACKAGE,
                executable="seem_speech_node",
                name="seem_speech_node",
                module="seem_ros.ros.speech_node",
                params_files=(args.speech_params_file,) if args.speech_params_file else (),
            )
        )
    if args.rviz:
        nodes.append(
            NodeSpec(
                package="rviz2",
                executable="rviz2",
                name="rviz2",
                arguments=("-d", str(share_dir / "config" / "seem.rviz")),
            )
        )
    return nodes
