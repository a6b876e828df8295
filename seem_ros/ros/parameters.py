"""The parameters of seem_node: one table, declared with descriptors and validated once at start.

The engine's settings (model, thresholds, tracking, input size) are declared once, with their defaults,
descriptions and ranges, on `seem_ros.engine.api.SegmenterConfig`; this table takes them from there and adds
the node's own parameters (inputs, publishing, diagnostics). `config/seem.yaml` and the README's parameter
table are generated from the table (`python -m seem_ros.ros.parameters --write` rewrites both; a test checks
they are current).

All parameters are read-only after start (the model and its vocabulary are built from them); prompts and the
vocabulary change at run time through topics and services instead.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter

from seem_ros.engine.api import SegmenterConfig
from seem_ros.engine.settings import SettingSpec, declared_settings

ParameterValue = bool | int | float | str | list[str]
CAMERA_NAME_PATTERN = r"[A-Za-z][A-Za-z0-9_]*"


class ParameterSpec(SettingSpec):
    """One row of a node's parameter table: a `SettingSpec` declared as a read-only ROS parameter."""

    @classmethod
    def of(cls, spec: SettingSpec) -> ParameterSpec:
        """The ROS form of an engine setting (a tuple default becomes a string array)."""
        default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        return cls(
            spec.name, default, spec.description, spec.float_range, spec.int_range, spec.choices, spec.pattern
        )

    @property
    def type(self) -> int:
        if isinstance(self.default, bool):
            return ParameterType.PARAMETER_BOOL
        if isinstance(self.default, int):
            return ParameterType.PARAMETER_INTEGER
        if isinstance(self.default, float):
            return ParameterType.PARAMETER_DOUBLE
        if isinstance(self.default, str):
            return ParameterType.PARAMETER_STRING
        return ParameterType.PARAMETER_STRING_ARRAY

    def descriptor(self) -> ParameterDescriptor:
        constraints = ""
        if self.choices is not None:
            constraints = f"one of: {', '.join(self.choices)}"
        elif self.pattern is not None:
            constraints = f"matches {self.pattern}"
        descriptor = ParameterDescriptor(
            name=self.name,
            type=self.type,
            description=self.description,
            additional_constraints=constraints,
            read_only=True,
        )
        if self.float_range is not None:
            low, high = self.float_range
            descriptor.floating_point_range = [FloatingPointRange(from_value=low, to_value=high, step=0.0)]
        if self.int_range is not None:
            low, high = self.int_range
            descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=0)]
        return descriptor


ENGINE_PARAMETERS: tuple[ParameterSpec, ...] = tuple(
    ParameterSpec.of(spec) for spec in declared_settings(SegmenterConfig)
)
"""The engine's settings (SegmenterConfig), in its field order."""

NODE_PARAMETERS: tuple[ParameterSpec, ...] = (
    # Lifecycle and cameras
    ParameterSpec(
        "autostart",
        True,
        "Configure and activate at start; false = wait for lifecycle transitions (ros2 lifecycle set "
        "<node> configure, then activate).",
    ),
    ParameterSpec(
        "cameras",
        [],
        "Camera namespaces served by one model, each with its own inputs, prompts, tracks, outputs and "
        "services under it ([front, wrist]: front/image, front/prompt, front/instances, ...; the node's "
        "own prompt topic takes commands naming a camera); empty = one camera on the plain names (image, "
        "prompt, instances, ...).",
    ),
    ParameterSpec(
        "max_batch_cameras",
        4,
        "Most cameras whose frames one inference step takes (the longest-waiting first; frames of one size "
        "share a batched pass).",
        int_range=(1, 64),
    ),
    # Input
    ParameterSpec(
        "camera_name",
        "",
        "Without cameras: the name operators give the camera in commands ('in the front camera find the "
        "cup'); empty = the first part of the resolved image topic (/front/image_raw: front).",
    ),
    ParameterSpec(
        "compressed", False, "Subscribe to image/compressed (sensor_msgs/CompressedImage) instead of image."
    ),
    ParameterSpec(
        "rectified_images",
        "auto",
        "Whether the camera images are rectified: clicked_point is then projected through CameraInfo P "
        "without distortion, else through K and D (raw images); auto = rectified when the resolved image "
        "topic's name has a part starting with 'image_rect' (image_rect, image_rect_color).",
        choices=("auto", "true", "false"),
    ),
    ParameterSpec(
        "max_rate",
        0.0,
        "Most frames processed per second; 0 = as fast as the model runs.",
        float_range=(0.0, 1000.0),
    ),
    ParameterSpec(
        "max_image_age",
        0.0,
        "Drop frames whose header stamp is older than this when inference starts, seconds; 0 = never.",
        float_range=(0.0, 3600.0),
    ),
    ParameterSpec(
        "use_depth",
        False,
        "Subscribe to depth (16UC1 mm or 32FC1 m, aligned to the colour image) and depth/camera_info; "
        "instances get a 3-D centroid and extent.",
    ),
    ParameterSpec(
        "depth_max_time_difference",
        0.05,
        "Largest stamp difference between a colour image and the depth image used with it, seconds; "
        "also the longest wait for that depth image.",
        float_range=(0.0, 1.0),
    ),
    # Output
    ParameterSpec(
        "panoptic_encoding", "32SC1", "Encoding of the panoptic id image.", choices=("32SC1", "mono16")
    ),
    ParameterSpec(
        "overlay_alpha", 0.5, "Opacity of the instance colours in overlay.", float_range=(0.0, 1.0)
    ),
    ParameterSpec("overlay_labels", True, "Draw class label and score of each instance in overlay."),
    ParameterSpec("publish_overlay", True, "Publish the colour overlay image (overlay)."),
    ParameterSpec("publish_panoptic", True, "Publish the panoptic id image (panoptic)."),
    ParameterSpec("publish_semantic", True, "Publish the semantic label image (semantic)."),
    ParameterSpec(
        "publish_markers", False, "Publish a label and, with depth, a 3-D box per instance (markers)."
    ),
    ParameterSpec(
        "diagnostics_period", 1.0, "Seconds between diagnostics messages.", float_range=(0.1, 60.0)
    ),
    ParameterSpec(
        "error_log_period",
        5.0,
        "Least seconds between two log lines about the same kind of bad input.",
        float_range=(0.0, 3600.0),
    ),
)


PARAMETERS: tuple[ParameterSpec, ...] = ENGINE_PARAMETERS + NODE_PARAMETERS


@dataclass(frozen=True)
class NodeSettings:
    """Validated values of every parameter in PARAMETERS: the engine's as a SegmenterConfig, the node's by
    name (same names as NODE_PARAMETERS)."""

    segmenter: SegmenterConfig
    autostart: bool
    cameras: tuple[str, ...]
    max_batch_cameras: int
    camera_name: str
    compressed: bool
    rectified_images: str
    max_rate: float
    max_image_age: float
    use_depth: bool
    depth_max_time_difference: float
    panoptic_encoding: str
    overlay_alpha: float
    overlay_labels: bool
    publish_overlay: bool
    publish_panoptic: bool
    publish_semantic: bool
    publish_markers: bool
    diagnostics_period: float
    error_log_period: float


class ParameterError(ValueError):
    """A parameter value that stops the node from starting; the message names the parameter."""


def declare_parameters(node: Node, specs: Sequence[ParameterSpec]) -> dict[str, ParameterValue]:
    """Declare `specs` on `node` (read-only, with descriptors) and return their checked values by name
    (string arrays as tuples); raise ParameterError naming the first refused one."""
    values: dict[str, ParameterValue] = {}
    for spec in specs:
        try:
            if spec.type == ParameterType.PARAMETER_STRING_ARRAY:
                value = tuple(_declare_string_array(node, spec))
            else:
                value = node.declare_parameter(spec.name, spec.default, spec.descriptor()).value
        except (InvalidParameterTypeException, InvalidParameterValueException) as error:
            raise ParameterError(f"parameter '{spec.name}': {error}. {spec.description}") from error
        reason = spec.check(value)
        if reason is not None:
            raise ParameterError(f"parameter '{spec.name}' = {value!r} {reason}. {spec.description}")
        values[spec.name] = value
    return values


def _declare_string_array(node: Node, spec: ParameterSpec) -> list[str]:
    """Declare a string-array parameter whose value is the override given, else `spec.default`, and return
    it. rclpy types an empty list as a byte array and leaves an array declared by type alone unset (then
    `ros2 param get` shows nothing and `ros2 param dump` nothing at all), so the parameter is declared
    writable by type, set to its default when no override came, and then made read-only."""
    writable = spec.descriptor()
    writable.read_only = False
    value = node.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY, writable).value
    if value is None:
        value = list(spec.default)
        node.set_parameters([Parameter(spec.name, Parameter.Type.STRING_ARRAY, value)])
    node.set_descriptor(spec.name, spec.descriptor())
    return list(value)


def declare_and_read(node: Node) -> NodeSettings:
    """Declare every parameter on `node` and return the validated values; raise ParameterError otherwise."""
    values = declare_parameters(node, PARAMETERS)
    engine = {spec.name: values[spec.name] for spec in ENGINE_PARAMETERS}
    try:
        segmenter = SegmenterConfig(**engine)
    except ValueError as error:
        raise ParameterError(f"parameters of the segmenter: {error}") from error
    node_values = {spec.name: values[spec.name] for spec in NODE_PARAMETERS}
    check_camera_names(node_values["cameras"])
    return NodeSettings(segmenter=segmenter, **node_values)


def check_camera_names(cameras: Sequence[str]) -> None:
    """Raise ParameterError unless every camera name is a distinct ROS name token (a namespace)."""
    for name in cameras:
        if not re.fullmatch(CAMERA_NAME_PATTERN, name):
            raise ParameterError(
                f"parameter 'cameras': {name!r} is not a namespace name (letters, digits and '_', "
                "starting with a letter)"
            )
    repeated = sorted({name for name in cameras if cameras.count(name) > 1})
    if repeated:
        raise ParameterError(f"parameter 'cameras' names {', '.join(repeated)} more than once")


# ------------------------------------------------------------------------------------------------ documents

README_BEGIN = "<!-- parameters -->"
README_END = "<!-- /parameters -->"
YAML_HEADER = """\
# Parameters of seem_node, generated from seem_ros/ros/parameters.py (the engine's settings are declared on
# seem_ros/engine/api.py:SegmenterConfig): python -m seem_ros.ros.parameters --write
# All are read at start; change prompts and vocabulary at run time with the prompt topic and services.
/**:
  ros__parameters:
"""


def _literal(value: ParameterValue) -> str:
    """A value as YAML and JSON both write it (strings quoted, booleans lower case, lists in brackets)."""
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def readme_table(specs: Sequence[ParameterSpec] = PARAMETERS) -> str:
    """The README's Markdown parameter table (without the markers around it)."""
    lines = ["| parameter | default | meaning |", "|---|---|---|"]
    lines += [f"| `{spec.name}` | `{_literal(spec.default)}` | {spec.documentation()} |" for spec in specs]
    return "\n".join(lines)


def seem_yaml() -> str:
    """config/seem.yaml: every parameter with its default, its documentation as a comment above it."""
    groups = (("engine (SegmenterConfig)", ENGINE_PARAMETERS), ("node", NODE_PARAMETERS))
    lines = []
    for title, specs in groups:
        lines.append(f"    # --- {title}")
        for spec in specs:
            lines += [f"    # {spec.documentation()}", f"    {spec.name}: {_literal(spec.default)}"]
    return YAML_HEADER + "\n".join(lines) + "\n"


def with_readme_table(readme: str) -> str:
    """`readme` with the text between the parameter markers replaced by `readme_table()`."""
    begin, end = readme.find(README_BEGIN), readme.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError(f"README has no {README_BEGIN} ... {README_END} block to fill")
    return readme[: begin + len(README_BEGIN)] + "\n" + readme_table() + "\n" + readme[end:]


def main(argv: Sequence[str] | None = None) -> int:
    """Print the generated parameter documents, or rewrite README.md and config/seem.yaml with --write."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite README.md and config/seem.yaml")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the package's source folder")
    args = parser.parse_args(argv)
    if not args.write:
        print(readme_table())
        print(seem_yaml(), end="")
        return 0
    readme = args.root / "README.md"
    readme.write_text(with_readme_table(readme.read_text(encoding="utf-8")), encoding="utf-8")
    (args.root / "config" / "seem.yaml").write_text(seem_yaml(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
