"""The generated seem_ros message and service types: import, fields, constants, serialization round trip."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Vector3
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image, RegionOfInterest
from std_msgs.msg import Header

import seem_ros
import seem_ros.engine.results
from seem_ros.msg import InstanceMask, InstanceMaskArray, PanopticSegment
from seem_ros.srv import SegmentImage, SetVocabulary


def _instance(instance_id: int) -> InstanceMask:
    """A fully filled instance; floats are exact in float32 so round trips compare equal."""
    return InstanceMask(
        instance_id=instance_id,
        track_id=4_000_000_000,
        label="coffee cup",
        class_id=-1,
        score=0.75,
        roi=RegionOfInterest(x_offset=10, y_offset=20, width=3, height=2),
        mask_rle=[0, 2, 1, 3],
        prompt_type=InstanceMask.PROMPT_CLICK,
        prompt_text="",
        has_3d=True,
        centroid=Point(x=0.1, y=-0.2, z=1.5),
        extent=Vector3(x=0.08, y=0.1, z=0.08),
    )


def test_generated_and_source_modules_share_one_package():
    assert seem_ros.msg.InstanceMask is InstanceMask
    assert seem_ros.engine.results.FrameResult is not None
    assert len(seem_ros.__path__) >= 1


def test_prompt_type_constants():
    assert [
        InstanceMask.PROMPT_TEXT,
        InstanceMask.PROMPT_CLICK,
        InstanceMask.PROMPT_BOX,
        InstanceMask.PROMPT_SCRIBBLE,
        InstanceMask.PROMPT_MASK,
        InstanceMask.PROMPT_REFERRING_IMAGE,
        InstanceMask.PROMPT_PANOPTIC,
    ] == ["text", "click", "box", "scribble", "mask", "referring_image", "panoptic"]


def test_instance_mask_array_round_trip():
    message = InstanceMaskArray(
        header=Header(stamp=Time(sec=12, nanosec=345), frame_id="camera_color_optical_frame"),
        width=640,
        height=480,
        instances=[_instance(1), _instance(2)],
        segments=[PanopticSegment(id=1, class_id=0, label="person", is_thing=True, area=1234, score=0.875)],
    )
    decoded = deserialize_message(serialize_message(message), InstanceMaskArray)
    assert decoded == message
    assert decoded.instances[0].track_id == 4_000_000_000
    assert np.array_equal(np.asarray(decoded.instances[1].mask_rle), [0, 2, 1, 3])
    assert decoded.instances[0].centroid.z == 1.5


def test_set_vocabulary_round_trip():
    request = SetVocabulary.Request(names=["cup", "table", "wall"], thing_names=["cup"])
    assert deserialize_message(serialize_message(request), SetVocabulary.Request) == request
    response = SetVocabulary.Response(success=False, message="names must not be empty")
    assert deserialize_message(serialize_message(response), SetVocabulary.Response) == response


def test_segment_image_round_trip():
    image = Image(height=1, width=2, encoding="rgb8", step=6, data=bytes(range(6)))
    request = SegmentImage.Request(image=image, text="the mug")
    assert deserialize_message(serialize_message(request), SegmentImage.Request) == request
    response = SegmentImage.Response(
        success=True,
        message="1 instance",
        result=InstanceMaskArray(width=2, height=1, instances=[_instance(1)]),
    )
    assert deserialize_message(serialize_message(response), SegmentImage.Response) == response
