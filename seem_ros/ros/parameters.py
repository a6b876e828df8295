"""The parameters of seem_node: one table, declared with descriptors and validated once at start.

All parameters are read-only after start (the model and its vocabulary are built from them); prompts and the
vocabulary change at run time through topics and services instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter

from seem_ros.engine.api import SegmenterConfig

ParameterValue = bool | int | float | str | list[str]


@dataclass(frozen=True)
class ParameterSpec:
    """One row of the table. Exactly one of float_range, int_range, choices, pattern may be set."""

    name: str
    default: ParameterValue
    description: str
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    choices: tuple[str, ...] | None = None
    pattern: str | None = None

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

    def check(self, value: ParameterValue) -> str | None:
        """The reason `value` is refused, or None. (Types and ranges are also enforced by rclpy.)"""
        if self.float_range is not None and not self.float_range[0] <= value <= self.float_range[1]:
            return f"must be in [{self.float_range[0]}, {self.float_range[1]}]"
        if self.int_range is not None and not self.int_range[0] <= value <= self.int_range[1]:
            return f"must be in [{self.int_range[0]}, {self.int_range[1]}]"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}"
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return f"must match {self.pattern}"
        return None


PARAMETERS: tuple[ParameterSpec, ...] = (
    # Model
    ParameterSpec(
        "preset",
        "focalt_v1",
        "Model preset: architecture and default vocabulary (focalt_v1, focall_v1, samvitb_v1, samvitl_v1, "
        "focalt_tiny).",
        pattern=r"[A-Za-z0-9_\-]+",
    ),
    ParameterSpec(
        "checkpoint", "", "Checkpoint file (.safetensors or .pt); empty = the preset's default file."
    ),
    ParameterSpec(
        "device",
        "auto",
        "Torch device: auto (cuda when available, else cpu), cpu, cuda or cuda:N.",
        pattern=r"auto|cpu|cuda(:\d+)?",
    ),
    ParameterSpec("backend", "torch", "Inference backend.", choices=("torch", "onnx")),
    ParameterSpec(
        "random_weights", False, "Use seeded random weights instead of a checkpoint (tests and smoke runs)."
    ),
    ParameterSpec(
        "vocabulary", [], "Class names for panoptic and semantic output; empty = the preset's vocabulary."
    ),
    ParameterSpec(
        "thing_names", [], "Names from vocabulary segmented as countable instances; empty = all of them."
    ),
    ParameterSpec(
        "score_threshold",
        0.8,
        "Minimum confidence of a reported instance or segment.",
        float_range=(0.0, 1.0),
    ),
    ParameterSpec(
        "mask_threshold", 0.5, "Pixel probability above which it is in a mask.", float_range=(0.0, 1.0)
    ),
    ParameterSpec(
        "overlap_threshold",
        0.8,
        "Fraction of a mask that must stay visible after overlaps are resolved (panoptic).",
        float_range=(0.0, 1.0),
    ),
    ParameterSpec("max_instances", 100, "Most instances reported per image.", int_range=(1, 1000)),
    ParameterSpec(
        "short_side",
        512,
        "Model input: images are resized so their shorter side has this many pixels.",
        int_range=(64, 2048),
    ),
    ParameterSpec(
        "precision", "fp32", "fp32, or fp16 (autocast, CUDA devices only).", choices=("fp32", "fp16")
    ),
    ParameterSpec(
        "panoptic", True, "Segment every frame over the vocabulary, also while targets are tracked."
    ),
    # Tracking
    ParameterSpec("max_tracks", 8, "Most targets tracked at once.", int_range=(1, 64)),
    ParameterSpec(
        "track_min_score",
        0.3,
        "A target whose mask score is below this on a frame is lost for that frame.",
        float_range=(0.0, 0.99),
    ),
    ParameterSpec(
        "max_lost_frames", 30, "A target lost for more consecutive frames is dropped.", int_range=(0, 100000)
    ),
    # Input
    ParameterSpec(
        "camera_name",
        "",
        "Name operators give this camera in commands ('in the front camera find the cup'); empty = the first "
        "part of the resolved image topic (/front/image_raw: front).",
    ),
    ParameterSpec(
        "compressed", False, "Subscribe to image/compressed (sensor_msgs/CompressedImage) instead of image."
    ),
    ParameterSpec(
        "max_rate",
        0.0,
        "Most frames processed per second; 0 = as fast as the model runs.",
        float_range=(0.0, 1000.0),
    ),
    ParameterSpec(
        "max_image_pixels", 16_777_216, "Larger images are refused with a log line.", int_range=(64, 1 << 28)
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


@dataclass(frozen=True)
class NodeSettings:
    """Validated values of every parameter in PARAMETERS (same names)."""

    preset: str
    checkpoint: str
    device: str
    backend: str
    random_weights: bool
    vocabulary: tuple[str, ...]
    thing_names: tuple[str, ...]
    score_threshold: float
    mask_threshold: float
    overlap_threshold: float
    max_instances: int
    short_side: int
    precision: str
    panoptic: bool
    max_tracks: int
    track_min_score: float
    max_lost_frames: int
    camera_name: str
    compressed: bool
    max_rate: float
    max_image_pixels: int
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

    def segmenter_config(self) -> SegmenterConfig:
        return SegmenterConfig(
            preset=self.preset,
            checkpoint=self.checkpoint,
            device=self.device,
            backend=self.backend,
            random_weights=self.random_weights,
            vocabulary=self.vocabulary,
            thing_names=self.thing_names,
            score_threshold=self.score_threshold,
            mask_threshold=self.mask_threshold,
            overlap_threshold=self.overlap_threshold,
            max_instances=self.max_instances,
            short_side=self.short_side,
            precision=self.precision,
            panoptic=self.panoptic,
            max_tracks=self.max_tracks,
            track_min_score=self.track_min_score,
            max_lost_frames=self.max_lost_frames,
            max_image_pixels=self.max_image_pixels,
        )


class ParameterError(ValueError):
    """A parameter value that stops the node from starting; the message names the parameter."""


def declare_and_read(node: Node) -> NodeSettings:
    """Declare every parameter on `node` and return the validated values; raise ParameterError otherwise."""
    values: dict[str, ParameterValue] = {}
    for spec in PARAMETERS:
        default = (
            Parameter.Type.STRING_ARRAY if spec.type == ParameterType.PARAMETER_STRING_ARRAY else spec.default
        )
        try:
            value = node.declare_parameter(spec.name, default, spec.descriptor()).value
        except (InvalidParameterTypeException, InvalidParameterValueException) as error:
            raise ParameterError(f"parameter '{spec.name}': {error}. {spec.description}") from error
        if spec.type == ParameterType.PARAMETER_STRING_ARRAY:
            value = tuple(value or ())
        reason = spec.check(value)
        if reason is not None:
            raise ParameterError(f"parameter '{spec.name}' = {value!r} {reason}. {spec.description}")
        values[spec.name] = value
    unknown_things = set(values["thing_names"]) - set(values["vocabulary"])
    if values["vocabulary"] and unknown_things:
        raise ParameterError(
            f"parameter 'thing_names' lists {sorted(unknown_things)}, which are not in 'vocabulary'"
        )
    return NodeSettings(**{field.name: values[field.name] for field in fields(NodeSettings)})
