"""Drawing results for people: instance colours, tinted masks with outlines and labels (no ROS imports)."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np

from seem_ros.engine.results import InstanceResult


@lru_cache(maxsize=1024)
def instance_color(key: int) -> tuple[int, int, int]:
    """A bright RGB colour for an id; consecutive ids get well separated hues (golden-ratio steps)."""
    hue = (key * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.8, 1.0)
    return int(red * 255), int(green * 255), int(blue * 255)


def render_overlay(
    rgb: np.ndarray, instances: Sequence[InstanceResult], alpha: float = 0.5, draw_labels: bool = True
) -> np.ndarray:
    """rgb (H, W, 3) uint8 with each instance tinted, outlined and labelled; colour keyed by track id
    (or instance id when untracked). Returns a new (H, W, 3) uint8 array."""
    canvas = np.array(rgb, dtype=np.uint8, copy=True, order="C")
    labels = []
    for instance in sorted(instances, key=lambda inst: inst.score):
        x0, y0, x1, y1 = (int(v) for v in instance.bbox)
        if x1 < x0 or y1 < y0:
            continue
        color = instance_color(instance.track_id or instance.instance_id)
        crop = np.ascontiguousarray(instance.mask[y0 : y1 + 1, x0 : x1 + 1], dtype=np.uint8)
        region = canvas[y0 : y1 + 1, x0 : x1 + 1]
        selected = crop.astype(bool)
        region[selected] = (region[selected] * (1.0 - alpha) + np.array(color) * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(crop, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE, offset=(x0, y0))
        cv2.drawContours(canvas, contours, -1, color, 2, cv2.LINE_AA)
        text = f"{instance.label} {instance.score:.2f}"
        if instance.track_id:
            text = f"#{instance.track_id} {text}"
        labels.append((text, x0, y0, color))
    if draw_labels:
        for text, x0, y0, color in labels:
            _draw_label(canvas, text, x0, y0, color)
    return canvas


def _draw_label(canvas: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int]) -> None:
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1
    (text_width, text_height), baseline = cv2.getTextSize(text, font, scale, thickness)
    top = max(y - text_height - baseline - 2, 0)
    cv2.rectangle(
        canvas, (x, top), (x + text_width + 2, top + text_height + baseline + 2), (0, 0, 0), cv2.FILLED
    )
    cv2.putText(canvas, text, (x + 1, top + text_height + 1), font, scale, color, thickness, cv2.LINE_AA)
