"""Segmenting image files and videos without ROS: what `seem-ros segment` and `seem-ros track` run."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from seem_ros.engine import coco_rle
from seem_ros.engine.prompts import BoxPrompt, ClickPrompt, ScribblePrompt, Target, TextPrompt, VisualPrompt
from seem_ros.engine.results import InstanceResult, mask_bbox

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class PromptSpec:
    """Prompts from the command line: texts, clicks (x, y, positive), boxes and scribbles in pixels."""

    texts: list[str] = field(default_factory=list)
    clicks: list[tuple[float, float, bool]] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    scribbles: list[list[tuple[float, float]]] = field(default_factory=list)

    def targets(self) -> list[Target]:
        """One target per text; the visual prompts form one more target, joined with the text when
        exactly one text is given (text + clicks on one object)."""
        visual: list[VisualPrompt] = [ClickPrompt(x, y, positive) for x, y, positive in self.clicks]
        visual += [BoxPrompt(*box) for box in self.boxes]
        visual += [ScribblePrompt(tuple(points)) for points in self.scribbles]
        if visual and len(self.texts) == 1:
            return [Target(text=TextPrompt(self.texts[0]), visual=tuple(visual))]
        targets = [Target(text=TextPrompt(text)) for text in self.texts]
        if visual:
            targets.append(Target(visual=tuple(visual)))
        return targets


def parse_point(text: str) -> tuple[float, float, bool]:
    """ "X,Y" or "X,Y,neg" (also "X,Y,pos")."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("neg", "pos")):
        raise ValueError(f"a point is X,Y or X,Y,neg, got {text!r}")
    x, y = _numbers(parts[:2], "a point is X,Y or X,Y,neg", text)
    return x, y, len(parts) == 2 or parts[2] == "pos"


def parse_box(text: str) -> tuple[float, float, float, float]:
    """ "X0,Y0,X1,Y1"."""
    values = _numbers(text.split(","), "a box is X0,Y0,X1,Y1", text)
    if len(values) != 4:
        raise ValueError(f"a box is X0,Y0,X1,Y1, got {text!r}")
    return values[0], values[1], values[2], values[3]


def parse_scribble(text: str) -> list[tuple[float, float]]:
    """ "X,Y;X,Y;..."."""
    points = []
    for pair in text.split(";"):
        values = _numbers(pair.split(","), "a scribble is X,Y;X,Y;...", text)
        if len(values) != 2:
            raise ValueError(f"a scribble is X,Y;X,Y;..., got {text!r}")
        points.append((values[0], values[1]))
    return points


def _numbers(parts: Sequence[str], form: str, text: str) -> list[float]:
    """The numbers of a prompt argument; ValueError naming its form and the argument otherwise."""
    try:
        return [float(part) for part in parts]
    except ValueError:
        raise ValueError(f"{form} with numbers, got {text!r}") from None


def read_rgb(path: str | Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read an image from {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_rgb(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB image in the format its suffix names (ValueError for a suffix OpenCV cannot write, or a
    path that cannot be written)."""
    if not cv2.haveImageWriter(str(path)):
        raise ValueError(f"cannot write an image to {path}: name it .png or .jpg")
    _make_parent(path)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"cannot write an image to {path}")


def _make_parent(path: str | Path) -> None:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot write {path}: {error.strerror or error}") from error


def instance_record(instance: InstanceResult) -> dict[str, object]:
    """JSON record of one mask: id, track id, label, score, bbox [x, y, width, height], area, COCO RLE."""
    x0, y0, x1, y1 = instance.bbox
    return {
        "id": instance.instance_id,
        "track_id": instance.track_id,
        "label": instance.label,
        "class_id": instance.class_id,
        "score": round(float(instance.score), 4),
        "bbox": [x0, y0, max(0, x1 - x0 + 1), max(0, y1 - y0 + 1)],
        "area": int(instance.mask.sum()),
        "prompt": instance.prompt,
        "prompt_text": instance.prompt_text,
        "segmentation": coco_rle.encode(instance.mask),
    }


def instance_from_mask(
    index: int, mask: np.ndarray, label: str, class_id: int, score: float, prompt: str, text: str = ""
) -> InstanceResult:
    return InstanceResult(index, 0, label, class_id, score, mask, mask_bbox(mask), prompt, text)


def frames_of(source: str | Path, max_frames: int | None = None, stride: int = 1) -> Iterator[np.ndarray]:
    """RGB frames of a video file or of the images in a folder (sorted by name): every `stride`-th, at most
    `max_frames` of them."""
    if stride < 1:
        raise ValueError(f"the stride must be 1 or more, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"the frame limit must be 1 or more, got {max_frames}")
    source = Path(source)
    produced = 0
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files[::stride]:
            if max_frames is not None and produced >= max_frames:
                return
            yield read_rgb(path)
            produced += 1
        return
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise ValueError(f"cannot open video {source}")
    index = 0
    try:
        while max_frames is None or produced < max_frames:
            ok, bgr = capture.read()
            if not ok:
                break
            if index % stride == 0:
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                produced += 1
            index += 1
    finally:
        capture.release()


UNWRITTEN_VIDEO_SUFFIXES = (".mkv", ".mov", ".webm", ".gif", ".mpg", ".mpeg", ".wmv", ".flv")
"""Video names `FrameWriter` refuses rather than taking them for a folder of PNG files."""


class FrameWriter:
    """Annotated frames to a video file (.mp4/.avi) or to numbered PNG files in a folder."""

    def __init__(self, destination: str | Path, fps: float = 10.0) -> None:
        if not fps > 0.0:
            raise ValueError(f"the video's frame rate must be above 0, got {fps}")
        if Path(destination).suffix.lower() in UNWRITTEN_VIDEO_SUFFIXES:
            raise ValueError(f"cannot write a {Path(destination).suffix} video: name it .mp4 or .avi")
        self.destination = Path(destination)
        self.fps = fps
        self._video: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self._count = 0

    def write(self, rgb: np.ndarray) -> None:
        if self.destination.suffix.lower() in (".mp4", ".avi"):
            height, width = rgb.shape[:2]
            if self._video is None:
                _make_parent(self.destination)
                codec = "mp4v" if self.destination.suffix.lower() == ".mp4" else "MJPG"
                self._video = cv2.VideoWriter(
                    str(self.destination), cv2.VideoWriter_fourcc(*codec), self.fps, (width, height)
                )
                if not self._video.isOpened():
                    raise ValueError(f"cannot write a video to {self.destination}")
                self._size = (width, height)
            if (width, height) != self._size:
                raise ValueError(
                    f"frame {self._count} is {width}x{height}, the video's frames are {self._size[0]}x"
                    f"{self._size[1]}: a video holds frames of one size (write PNGs to a folder)"
                )
            self._video.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        else:
            write_rgb(self.destination / f"frame_{self._count:05d}.png", rgb)
        self._count += 1

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
            self._video = None


def write_json(path: str | Path, payload: object) -> None:
    _make_parent(path)
    try:
        Path(path).write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    except OSError as error:
        raise ValueError(f"cannot write {path}: {error.strerror or error}") from error


def vocabulary_from_argument(text: str | None) -> Sequence[str]:
    if not text:
        return ()
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError("--vocab needs comma-separated class names")
    return names
