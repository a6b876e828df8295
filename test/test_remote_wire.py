"""The remote wire format: every prompt kind survives the round trip, limits are checked before anything is
decoded, nothing but our schema is accepted (no pickle), and the client backs off from a dead server."""

from __future__ import annotations

import pickle
import socket
import time
import zlib
from pathlib import Path

import cv2
import msgpack
import numpy as np
import pytest
import skimage.data
import torch

from seem_ros.engine import coco_rle
from seem_ros.engine.predictor import GenericResult, GenericSegment, Prediction, TargetResult
from seem_ros.engine.prompts import (
    BoxPrompt,
    ClickPrompt,
    MaskPrompt,
    ReferringImagePrompt,
    ScribblePrompt,
    Target,
    TextPrompt,
)
from seem_ros.engine.vocabulary_cache import Vocabulary
from seem_ros.remote.client import ServerClient, ServerUnavailable, read_token
from seem_ros.remote.server_engine import tokens_match
from seem_ros.remote.wire import (
    WireError,
    WireLimits,
    decode_reply,
    decode_request,
    encode_error,
    encode_reply,
    encode_request,
    pack_array,
)

LIMITS = WireLimits()


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return cv2.resize(skimage.data.coffee(), (160, 120), interpolation=cv2.INTER_AREA)


def _mask(shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[20:50, 30:90] = True
    return mask


def test_every_prompt_kind_round_trips(rgb: np.ndarray) -> None:
    mask = _mask(rgb.shape[:2])
    targets = [
        Target(text=TextPrompt("the red cup")),
        Target(visual=(ClickPrompt(10.5, 20.0), ClickPrompt(3.0, 4.0, positive=False))),
        Target(visual=(BoxPrompt(1.0, 2.0, 30.0, 40.0),)),
        Target(visual=(ScribblePrompt(((1.0, 2.0), (5.0, 6.0)), 3.0),)),
        Target(text=TextPrompt("mug"), visual=(MaskPrompt(mask),)),
        Target(reference=ReferringImagePrompt(rgb, mask)),
    ]
    previous = [
        None,
        np.random.default_rng(0).normal(size=(32, 40)).astype(np.float32),
        None,
        None,
        None,
        None,
    ]
    body = encode_request(rgb, targets, previous, True, (("cup", "table"), ("cup",)), "cam0", 12.5, "png")
    request = decode_request(body, LIMITS)
    assert np.array_equal(request.rgb, rgb)
    assert request.generic and request.session == "cam0" and request.stamp == 12.5
    assert request.vocabulary == (("cup", "table"), ("cup",))
    for got, want in zip(request.targets, targets, strict=True):
        assert got.kind == want.kind and got.text == want.text
    assert request.targets[1].visual == targets[1].visual
    assert request.targets[2].visual == targets[2].visual
    assert request.targets[3].visual == targets[3].visual
    assert np.array_equal(request.targets[4].visual[0].mask, mask)
    assert np.array_equal(request.targets[5].reference.image, rgb)
    assert np.array_equal(request.targets[5].reference.mask, mask)
    assert np.array_equal(request.previous_logits[1], previous[1])
    assert request.previous_logits[0] is None


def test_jpeg_and_raw_frames(rgb: np.ndarray) -> None:
    raw = decode_request(encode_request(rgb, [], [], False, image_format="raw"), LIMITS)
    assert np.array_equal(raw.rgb, rgb)
    jpeg = decode_request(encode_request(rgb, [], [], False, image_format="jpeg"), LIMITS)
    assert jpeg.rgb.shape == rgb.shape
    assert np.abs(jpeg.rgb.astype(int) - rgb).mean() < 4


def test_reply_round_trips() -> None:
    mask = _mask((120, 160))
    logits = torch.randn(30, 40)
    panoptic = np.zeros((120, 160), np.int32)
    panoptic[mask] = 1
    prediction = Prediction(
        [TargetResult(mask, logits, 0.9, "cup", 3, 0.7)],
        GenericResult(
            panoptic, np.where(mask, 3, -1).astype(np.int32), [GenericSegment(1, 3, "cup", True, 0.9, 1800)]
        ),
        {"decoder": 0.01},
    )
    vocabulary = Vocabulary.from_names(["cup", "wall"], ["cup"])
    reply = decode_reply(encode_reply(prediction, vocabulary, replica="r1", batch_size=3))
    (target,) = reply.prediction.targets
    assert np.array_equal(target.mask, mask) and torch.equal(target.mask_logits, logits)
    assert (target.score, target.label, target.class_id, target.class_probability) == (0.9, "cup", 3, 0.7)
    assert np.array_equal(reply.prediction.generic.panoptic, panoptic)
    assert reply.prediction.generic.segments == prediction.generic.segments
    assert reply.vocabulary == vocabulary and reply.replica == "r1" and reply.batch_size == 3
    with pytest.raises(WireError, match="too big") as refused:
        decode_reply(encode_error("frame too big", "too_large"))
    assert refused.value.code == "too_large"


def _request(rgb: np.ndarray, **changes: object) -> bytes:
    message = msgpack.unpackb(
        encode_request(rgb, [Target(text=TextPrompt("cup"))], [None], False, image_format="png")
    )
    message.update(changes)
    return msgpack.packb(message, use_bin_type=True)


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (b"\x00\x01garbage", "bad_request", "MessagePack"),
        (pickle.dumps({"v": 1}), "bad_request", "MessagePack"),
        (msgpack.packb([1, 2, 3]), "bad_request", "map"),
    ],
)
def test_garbage_and_pickle_are_refused(body: bytes, code: str, words: str) -> None:
    with pytest.raises(WireError, match=words) as refused:
        decode_request(body, LIMITS)
    assert refused.value.code == code


def _empty_png(width: int, height: int) -> bytes:
    """A valid PNG file that claims width x height RGB pixels and holds no pixel data."""

    def chunk(kind: bytes, data: bytes = b"") -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    size = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", size + b"\x08\x02\0\0\0") + chunk(b"IDAT") + chunk(b"IEND")


def test_limits_are_checked_before_decoding(rgb: np.ndarray) -> None:
    small = WireLimits(
        max_request_bytes=10_000_000, max_image_pixels=160 * 120, max_targets=2, max_text_chars=20
    )
    # A PNG that claims 100000 x 100000 pixels and holds none: refused from its header, never decoded.
    header = _empty_png(100_000, 100_000)
    with pytest.raises(WireError, match="more than the limit") as refused:
        decode_request(_request(rgb, image={"format": "png", "data": header}), small)
    assert refused.value.code == "too_large"
    five_thousand = _empty_png(5_000, 5_000)
    with pytest.raises(WireError, match="more than the limit") as refused:
        decode_request(_request(rgb, image={"format": "png", "data": five_thousand}), small)
    assert refused.value.code == "too_large"
    with pytest.raises(WireError, match="more than"):
        decode_request(_request(rgb), WireLimits(max_request_bytes=100))
    with pytest.raises(WireError, match="targets"):
        decode_request(_request(rgb, targets=[{"text": "a"}] * 3), small)
    with pytest.raises(WireError, match="at most 20 characters"):
        decode_request(_request(rgb, targets=[{"text": "x" * 21}]), small)
    with pytest.raises(WireError, match="wire version"):
        decode_request(_request(rgb, v=99), LIMITS)
    with pytest.raises(WireError, match="kind must be"):
        decode_request(_request(rgb, targets=[{"visual": [{"kind": "lasso"}]}]), LIMITS)
    with pytest.raises(WireError, match="finite|must be"):
        decode_request(
            _request(rgb, targets=[{"visual": [{"kind": "click", "x": float("nan"), "y": 1.0}]}]), LIMITS
        )
    with pytest.raises(WireError, match="do not make a 2x2"):
        decode_request(_request(rgb, image={"format": "raw", "data": b"123", "shape": [2, 2, 3]}), LIMITS)


def test_a_compressed_array_cannot_expand_beyond_its_declared_shape(rgb: np.ndarray) -> None:
    bomb = {"dtype": "float32", "shape": [4, 4], "data": zlib.compress(b"\x00" * 50_000_000)}
    with pytest.raises(WireError, match="needs 64"):
        decode_request(_request(rgb, targets=[{"text": "cup", "previous": bomb}]), LIMITS)
    huge = pack_array(np.zeros((4, 4), np.float32)) | {"shape": [100_000, 100_000]}
    with pytest.raises(WireError, match="more than the limit"):
        decode_request(_request(rgb, targets=[{"text": "cup", "previous": huge}]), LIMITS)


def test_the_arrays_of_all_targets_together_are_limited_to_an_image(rgb: np.ndarray) -> None:
    """Each memory prompt or mask may hold up to an image's pixels, and so may all of a request's together:
    many targets of large zero logits (a small request) cannot make the server decode gigabytes."""
    small = WireLimits(max_image_pixels=160 * 120, max_points=4)
    logits = pack_array(np.zeros((120, 100), np.float32))  # 12000 of the 19200 values
    click = {"kind": "click", "x": 10.0, "y": 10.0}
    one = {"visual": [click], "previous": logits}
    assert len(decode_request(_request(rgb, targets=[one]), small).targets) == 1
    with pytest.raises(WireError, match="more than the limit 7200") as refused:
        decode_request(_request(rgb, targets=[one, one]), small)
    assert refused.value.code == "too_large"
    mask = {"kind": "mask", "mask": coco_rle.encode(_mask((120, 160)))}
    with pytest.raises(WireError, match="more than 7200 pixels"):
        decode_request(_request(rgb, targets=[one, {"visual": [mask]}]), small)
    with pytest.raises(WireError, match="5 visual prompts, more than 4"):
        decode_request(_request(rgb, targets=[{"visual": [click] * 5}]), small)


def test_the_server_refuses_a_misshapen_memory_prompt_and_an_overlong_text(rgb: np.ndarray) -> None:
    from seem_ros.engine.api import SegmenterConfig
    from seem_ros.remote.server_engine import ServerEngine

    engine = ServerEngine(
        SegmenterConfig(preset="focalt_tiny", random_weights=True, device="cpu", short_side=128)
    )
    click = Target(visual=(ClickPrompt(80.0, 60.0),))
    misshapen = encode_request(rgb, [click], [torch.zeros(3, 3)], False, image_format="png")
    status, reply = engine.handle(misshapen)
    assert status == 400
    with pytest.raises(WireError, match=r"previous mask logits are \(3, 3\); this image's are"):
        decode_reply(reply)
    long_text = Target(text=TextPrompt(" ".join(["cup"] * 150)))
    status, reply = engine.handle(encode_request(rgb, [long_text], [None], False, image_format="png"))
    assert status == 400
    with pytest.raises(WireError, match="SEEM reads at most 77"):
        decode_reply(reply)


def test_serve_reports_what_would_fail_before_a_cluster_starts(tmp_path: Path, capsys) -> None:
    """A bad port and a missing checkpoint are one-line errors before Ray is started."""
    from seem_ros.cli import main

    common = ["serve", "--preset", "focalt_tiny", "--device", "cpu", "--temp-dir", str(tmp_path / "ray")]
    assert main([*common, "--random-weights", "--port", "99999"]) == 1
    assert "--port must be 1 to 65535" in capsys.readouterr().err
    assert main([*common, "--checkpoint", str(tmp_path / "missing.pt")]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
    assert not (tmp_path / "ray").exists()  # no cluster was started


def test_tokens_are_compared_as_bearer_headers() -> None:
    assert tokens_match("", None) and tokens_match("", "Bearer anything")
    assert tokens_match("s3cret", "Bearer s3cret")
    assert not tokens_match("s3cret", None)
    assert not tokens_match("s3cret", "Bearer s3cre")
    assert not tokens_match("s3cret", "s3cret")


def test_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SEEM_ROS_SERVER_TOKEN", "from-env")
    assert read_token("") == "from-env"
    (tmp_path / "token").write_text("from-file\n")
    assert read_token(str(tmp_path / "token")) == "from-file"
    with pytest.raises(ValueError, match="cannot be read"):
        read_token(str(tmp_path / "missing"))


def test_client_backs_off_from_a_server_that_is_not_there() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = ServerClient(f"http://127.0.0.1:{port}/seem", timeout=1.0)
    with pytest.raises(ServerUnavailable, match="did not answer"):
        client.post(b"x")
    began = time.monotonic()
    with pytest.raises(ServerUnavailable, match="next try in"):
        client.post(b"x")  # in back-off: refused at once, nothing sent
    assert time.monotonic() - began < 0.1
    assert client.failures == 1
    with pytest.raises(ValueError, match="http"):
        ServerClient("ftp://example/seem")


def test_the_shipped_serve_config_builds_the_application() -> None:
    """config/serve.yaml is what `serve run` / `serve deploy` read: its args build the application."""
    import yaml

    from seem_ros.remote.service import app_builder

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "serve.yaml").read_text())
    assert config["http_options"]["host"] == "127.0.0.1"
    (application,) = config["applications"]
    assert application["import_path"] == "seem_ros.remote.service:app_builder"
    assert app_builder(application["args"]) is not None
    with pytest.raises(ValueError, match="preset"):
        app_builder({**application["args"], "preset": "no such preset!"})


def test_a_request_that_times_out_is_counted_and_not_retried_at_once() -> None:
    """A server that accepts the connection and never answers: the request ends after `timeout`."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        client = ServerClient(f"http://127.0.0.1:{silent.getsockname()[1]}/seem", timeout=0.5)
        began = time.monotonic()
        with pytest.raises(ServerUnavailable, match="did not answer"):
            client.post(b"frame")
        assert 0.4 < time.monotonic() - began < 5.0
        assert client.failures == 1
        with pytest.raises(ServerUnavailable, match="next try in"):
            client.post(b"newer frame")


def test_a_batch_of_requests_is_answered_as_one_by_one(rgb: np.ndarray) -> None:
    """ServerEngine.handle_batch: frames of one size share an image-encoder pass, another size has its
    own, a garbage body is refused alone; every answer equals the request answered by itself."""
    from seem_ros.engine.api import SegmenterConfig
    from seem_ros.remote.server_engine import ServerEngine

    engine = ServerEngine(
        SegmenterConfig(preset="focalt_tiny", random_weights=True, device="cpu", short_side=128)
    )
    targets = [Target(visual=(ClickPrompt(80.0, 60.0),)), Target(text=TextPrompt("cup"))]
    frames = [rgb, np.ascontiguousarray(rgb[:, ::-1]), cv2.resize(rgb, (120, 160))]
    bodies = [encode_request(frame, targets, [None, None], True, image_format="png") for frame in frames]
    batch = engine.handle_batch([bodies[0], b"garbage", bodies[1], bodies[2]])
    assert [status for status, _ in batch] == [200, 400, 200, 200]
    with pytest.raises(WireError, match="MessagePack"):
        decode_reply(batch[1][1])
    for body, (_, reply) in zip(bodies, [batch[0], batch[2], batch[3]], strict=True):
        together, alone = decode_reply(reply), decode_reply(engine.handle(body)[1])
        assert together.batch_size == 4 and alone.batch_size == 1
        for got, want in zip(together.prediction.targets, alone.prediction.targets, strict=True):
            assert np.array_equal(got.mask, want.mask)
            torch.testing.assert_close(got.mask_logits, want.mask_logits, atol=1e-4, rtol=0.0)
        assert np.array_equal(together.prediction.generic.panoptic, alone.prediction.generic.panoptic)
