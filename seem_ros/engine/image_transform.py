"""Camera images into the model: decoding compressed frames within a pixel limit, checking RGB arrays, and
resizing to the model input as the SEEM demo does (shortest side, PIL bicubic)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from seem_ros.engine.errors import InputError


@dataclass(frozen=True)
class ResizeShortestSide:
    """Resize so the shorter side is `short_side` pixels (torchvision `Resize(int)` rounding), keeping
    the aspect ratio; if `max_long_side` is set, shrink further so the longer side fits it."""

    short_side: int
    max_long_side: int | None = None

    def __post_init__(self) -> None:
        if self.short_side < 32:
            raise ValueError(f"short_side must be at least 32 pixels, got {self.short_side}")
        if self.max_long_side is not None and self.max_long_side < self.short_side:
            raise ValueError(
                f"max_long_side {self.max_long_side} is smaller than short_side {self.short_side}"
            )

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the image of (height, width) is resized to."""
        short, long = min(height, width), max(height, width)
        new_short, new_long = self.short_side, int(self.short_side * long / short)
        if self.max_long_side is not None and new_long > self.max_long_side:
            new_short, new_long = max(1, int(self.max_long_side * new_short / new_long)), self.max_long_side
        return (new_short, new_long) if height <= width else (new_long, new_short)

    def apply_image(self, rgb: np.ndarray) -> np.ndarray:
        """rgb: (H, W, 3) uint8. Returns (h, w, 3) uint8, bicubic (PIL, antialiased when shrinking)."""
        height, width = rgb.shape[:2]
        new_height, new_width = self.output_size(height, width)
        if (new_height, new_width) == (height, width):
            return rgb
        resized = Image.fromarray(rgb).resize((new_width, new_height), Image.Resampling.BICUBIC)
        return np.asarray(resized)


def validate_rgb(rgb: np.ndarray, max_pixels: int | None = None) -> None:
    """Raise InputError unless rgb is a non-empty (H, W, 3) uint8 array within max_pixels."""
    if not isinstance(rgb, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"image must be HxWx3 uint8 RGB, got {rgb.shape} {rgb.dtype}")
    if rgb.shape[0] < 8 or rgb.shape[1] < 8:
        raise InputError(f"image is too small: {rgb.shape[1]}x{rgb.shape[0]} pixels (at least 8x8)")
    check_pixel_count(rgb.shape[1], rgb.shape[0], max_pixels)


class ImageTooLarge(InputError):
    """An image with more pixels than the limit."""


def check_pixel_count(width: int, height: int, max_pixels: int | None) -> None:
    """Raise ImageTooLarge when a width x height image exceeds max_pixels (None = no limit)."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(
            f"image of {width} x {height} has {width * height} pixels, more than the limit {max_pixels}; "
            "raise max_image_pixels or send smaller images"
        )


def decode_compressed(data: bytes, max_pixels: int | None = None, described_as: str = "") -> np.ndarray:
    """(H, W, 3) uint8 RGB decoded from compressed image bytes (JPEG, PNG, ... anything cv2.imdecode reads).

    max_pixels: refuse images with more pixels than this (ImageTooLarge). The size is read from the file
    header before decoding, so a small file that would decode to a huge image costs no memory; with a
    limit, only formats whose header Pillow reads (JPEG, PNG, ...) are accepted. described_as: how error
    messages name the image's format (e.g. "format 'jpeg'").
    """
    suffix = f", {described_as}" if described_as else ""
    if len(data) == 0:
        raise InputError(f"empty compressed image ({described_as or 'no data'})")
    if max_pixels is not None:
        try:
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
        except Image.DecompressionBombError as error:
            message = f"compressed image{suffix} declares more than the limit {max_pixels} pixels ({error})"
            raise ImageTooLarge(message) from None
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise InputError(
                f"could not read the size of a compressed image of {len(data)} bytes{suffix}: {error}"
            ) from None
        check_pixel_count(width, height, max_pixels)
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"could not decode compressed image of {len(data)} bytes{suffix}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
