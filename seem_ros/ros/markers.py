"""RViz markers for the instances of one image (visualization_msgs/MarkerArray), stamped like the image.

Each array starts with a DELETEALL marker, so objects of the previous image disappear. Per instance:
  namespace "seem_labels", TEXT_VIEW_FACING: "#<track> <label> <score>", just above the object when it has
      3-D information, else on the ray through the centre of its box at LABEL_DEPTH metres;
  namespace "seem_boxes", CUBE (only with 3-D information): centred on the centroid, sized by the extent.
Marker ids are the instance ids; colours are those of the overlay image.
"""

from __future__ import annotations

from geometry_msgs.msg import Point, Pose, Vector3
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from seem_ros.engine.visualize import instance_color
from seem_ros.msg import InstanceMask, InstanceMaskArray
from seem_ros.ros.depth import Intrinsics

LABEL_NAMESPACE = "seem_labels"
BOX_NAMESPACE = "seem_boxes"
LABEL_DEPTH = 1.0  # metres along the viewing ray, for labels of instances without 3-D information
TEXT_HEIGHT = 0.05  # metres
MIN_BOX_SIZE = 0.005  # metres; RViz refuses zero-sized cubes
BOX_ALPHA = 0.4


def instance_label(instance: InstanceMask) -> str:
    """The text of an instance's label marker, as in the overlay: "#3 cup 0.91" (no "#" when untracked)."""
    text = f"{instance.label} {instance.score:.2f}"
    return f"#{instance.track_id} {text}" if instance.track_id else text


def instance_markers(result: InstanceMaskArray, intrinsics: Intrinsics | None) -> MarkerArray:
    """Markers of every instance in `result`, in result.header (stamp and optical frame).

    intrinsics: the camera's, to place labels of instances without 3-D information; None = a nominal camera
    with focal length = image width and the principal point at the image centre.
    """
    if intrinsics is None:
        intrinsics = Intrinsics(
            fx=float(max(result.width, 1)),
            fy=float(max(result.width, 1)),
            cx=result.width / 2.0,
            cy=result.height / 2.0,
        )
    markers = [Marker(header=result.header, action=Marker.DELETEALL)]
    for instance in result.instances:
        red, green, blue = instance_color(instance.track_id or instance.instance_id)
        color = ColorRGBA(r=red / 255.0, g=green / 255.0, b=blue / 255.0, a=1.0)
        if instance.has_3d:
            centroid, extent = instance.centroid, instance.extent
            label_position = Point(x=centroid.x, y=centroid.y - extent.y / 2.0 - TEXT_HEIGHT, z=centroid.z)
            markers.append(
                Marker(
                    header=result.header,
                    ns=BOX_NAMESPACE,
                    id=int(instance.instance_id),
                    type=Marker.CUBE,
                    action=Marker.ADD,
                    pose=Pose(position=centroid),
                    scale=Vector3(
                        x=max(extent.x, MIN_BOX_SIZE),
                        y=max(extent.y, MIN_BOX_SIZE),
                        z=max(extent.z, MIN_BOX_SIZE),
                    ),
                    color=ColorRGBA(r=color.r, g=color.g, b=color.b, a=BOX_ALPHA),
                )
            )
        else:
            roi = instance.roi
            u = roi.x_offset + (roi.width - 1) / 2.0  # pixel centres are at integer coordinates
            v = roi.y_offset + (roi.height - 1) / 2.0
            label_position = Point(
                x=(u - intrinsics.cx) * LABEL_DEPTH / intrinsics.fx,
                y=(v - intrinsics.cy) * LABEL_DEPTH / intrinsics.fy,
                z=LABEL_DEPTH,
            )
        markers.append(
            Marker(
                header=result.header,
                ns=LABEL_NAMESPACE,
                id=int(instance.instance_id),
                type=Marker.TEXT_VIEW_FACING,
                action=Marker.ADD,
                pose=Pose(position=label_position),
                scale=Vector3(z=TEXT_HEIGHT),
                color=color,
                text=instance_label(instance),
            )
        )
    return MarkerArray(markers=markers)
