"""The command line without ROS: `seem-ros segment` and `seem-ros track` on real media, and COCO RLE."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from assets import MediaUnavailable, video_clip
from skimage import data

from seem_ros.engine import coco_rle

COMMON = ["--preset", "focalt_tiny", "--random-weights", "--short-side", "128", "--device", "cpu"]


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "seem_ros.cli", *arguments], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def coffee_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "coffee.png"
    cv2.imwrite(str(path), cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR))
    return path


def test_segment_every_prompt_kind_writes_overlay_and_coco_json(coffee_png: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    completed = run_cli(
        "segment", str(coffee_png), "--text", "the red cup", "--text", "the saucer",
        "--point", "300,200", "--point", "40,40,neg", "--box", "200,100,420,330",
        "--scribble", "250,150;350,250",
        "--out", str(out), "--json", *COMMON,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "RANDOM WEIGHTS" in completed.stdout
    overlay = cv2.imread(str(out))
    assert overlay.shape == (400, 600, 3)
    payload = json.loads(out.with_suffix(".json").read_text())
    masks = payload["masks"]
    assert [m["prompt"] for m in masks] == ["text", "text", "click"]
    assert [m["prompt_text"] for m in masks[:2]] == ["the red cup", "the saucer"]
    for record in masks:
        mask = coco_rle.decode(record["segmentation"])
        assert mask.shape == (400, 600)
        assert int(mask.sum()) == record["area"]
        if record["area"]:
            x, y, width, height = record["bbox"]
            ys, xs = np.nonzero(mask)
            assert (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (
                x,
                y,
                width,
                height,
            )
        assert 0.0 <= record["score"] <= 1.0


def test_segment_without_prompt_is_panoptic_over_the_given_vocabulary(
    coffee_png: Path, tmp_path: Path
) -> None:
    out = tmp_path / "panoptic.png"
    completed = run_cli(
        "segment", str(coffee_png), "--vocab", "cup,saucer,spoon,table", "--threshold", "0.0",
        "--out", str(out), "--json", str(tmp_path / "masks.json"), *COMMON,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    masks = json.loads((tmp_path / "masks.json").read_text())["masks"]
    assert masks and all(m["prompt"] == "panoptic" for m in masks)
    assert {m["label"] for m in masks} <= {"cup", "saucer", "spoon", "table"}


def test_segment_with_a_prompt_answers_only_the_prompt(coffee_png: Path, tmp_path: Path) -> None:
    """A threshold of 0 would let the panoptic pass report every query: none may appear beside the text."""
    completed = run_cli(
        "segment", str(coffee_png), "--text", "the cup", "--threshold", "0.0",
        "--out", str(tmp_path / "o.png"), "--json", *COMMON,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    masks = json.loads((tmp_path / "o.json").read_text())["masks"]
    assert [m["prompt"] for m in masks] == ["text"]


def test_segment_reports_bad_input_with_exit_status_1(coffee_png: Path, tmp_path: Path) -> None:
    missing = run_cli("segment", str(tmp_path / "none.png"), "--out", str(tmp_path / "o.png"), *COMMON)
    assert missing.returncode == 1 and "cannot read an image" in missing.stderr
    outside = run_cli(
        "segment", str(coffee_png), "--point", "900,10", "--out", str(tmp_path / "o.png"), *COMMON
    )
    assert outside.returncode == 1 and "outside" in outside.stderr
    bad_point = run_cli(
        "segment", str(coffee_png), "--point", "1,2,3", "--out", str(tmp_path / "o.png"), *COMMON
    )
    assert bad_point.returncode == 1 and "X,Y" in bad_point.stderr
    no_checkpoint = run_cli(
        "segment",
        str(coffee_png),
        "--checkpoint",
        str(tmp_path / "missing.pt"),
        "--out",
        str(tmp_path / "o.png"),
    )
    assert no_checkpoint.returncode == 1 and "xdecoder/SEEM" in no_checkpoint.stderr
    bad_numbers = run_cli(
        "segment", str(coffee_png), "--point", "abc,def", "--out", str(tmp_path / "o.png"), *COMMON
    )
    assert bad_numbers.returncode == 1 and "a point is X,Y or X,Y,neg with numbers" in bad_numbers.stderr
    unwritable = run_cli("segment", str(coffee_png), "--out", str(tmp_path / "overlay.xyz"), *COMMON)
    assert unwritable.returncode == 1 and "name it .png or .jpg" in unwritable.stderr
    assert "Traceback" not in unwritable.stderr


def test_track_writes_video_and_per_frame_tracks_with_stable_ids(tmp_path: Path) -> None:
    try:
        clip = video_clip()
    except MediaUnavailable as error:
        pytest.skip(str(error))
    out = tmp_path / "tracked.mp4"
    completed = run_cli(
        "track", str(clip), "--text", "person", "--point", "320,140", "--max-frames", "4", "--stride", "2",
        "--out", str(out), "--json", *COMMON,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    capture.release()
    frames = json.loads(out.with_suffix(".json").read_text())["frames"]
    assert [frame["frame"] for frame in frames] == [0, 1, 2, 3]
    ids = [{track["track_id"] for track in frame["tracks"]} for frame in frames]
    assert ids[0] == {1} and all(frame_ids <= {1} for frame_ids in ids)


def test_track_into_a_folder_of_frames(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    image = data.astronaut()
    for index in range(3):
        shifted = np.roll(image, 8 * index, axis=1)
        cv2.imwrite(str(folder / f"{index:02d}.png"), cv2.cvtColor(shifted, cv2.COLOR_RGB2BGR))
    completed = run_cli(
        "track", str(folder), "--box", "150,30,350,250", "--out", str(tmp_path / "out"), *COMMON
    )
    assert completed.returncode == 0, completed.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"frame_{i:05d}.png" for i in range(3)]


@pytest.mark.parametrize("seed", range(5))
def test_coco_rle_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((int(rng.integers(1, 50)), int(rng.integers(1, 50)))) > rng.random()
    encoded = coco_rle.encode(mask)
    assert np.array_equal(coco_rle.decode(encoded), mask)
    counts = coco_rle.run_lengths(mask)
    assert np.array_equal(coco_rle.decode({"size": list(mask.shape), "counts": counts}), mask)


def test_coco_rle_known_value_and_invalid_input() -> None:
    assert coco_rle.encode(np.array([[0, 1], [1, 1]], dtype=bool)) == {"size": [2, 2], "counts": "13"}
    with pytest.raises(ValueError):
        coco_rle.decode({"size": [2, 2], "counts": [1, 1]})
    with pytest.raises(ValueError):
        coco_rle.decode({"size": [2, 2], "counts": "\x01"})


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (["--box", "150,30,350,250", "--stride", "0"], "the stride must be 1 or more"),
        (["--box", "150,30,350,250", "--max-frames", "-1"], "the frame limit must be 1 or more"),
        (["--point", "5000,5000"], "outside the 512x512 image"),
        (["--box", "150,30,350,250", "--fps", "0", "--out-video"], "frame rate must be above 0"),
        (["--box", "150,30,x,250"], "a box is X0,Y0,X1,Y1 with numbers, got '150,30,x,250'"),
    ],
)
def test_track_reports_bad_arguments_with_exit_status_1(tmp_path: Path, arguments: list[str], reason: str):
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(2):
        cv2.imwrite(str(folder / f"{index:02d}.png"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    out = str(tmp_path / ("out.avi" if "--out-video" in arguments else "out"))
    options = [argument for argument in arguments if argument != "--out-video"]
    completed = run_cli("track", str(folder), *options, "--out", out, *COMMON)
    assert completed.returncode == 1 and reason in completed.stderr, completed.stderr
    assert "Traceback" not in completed.stderr


def test_frame_writer_refuses_videos_it_cannot_write(tmp_path: Path) -> None:
    from seem_ros.engine.offline import FrameWriter

    with pytest.raises(ValueError, match=r"cannot write a \.mkv video: name it \.mp4 or \.avi"):
        FrameWriter(tmp_path / "tracked.mkv")
    writer = FrameWriter(tmp_path / "tracked.avi")
    writer.write(np.zeros((32, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="frame 1 is 40x32, the video's frames are 48x32"):
        writer.write(np.zeros((32, 40, 3), np.uint8))
    writer.close()
