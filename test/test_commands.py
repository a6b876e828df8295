"""The operator command grammar (seem_ros.engine.commands): what each typed or spoken phrasing means, what is
refused and why, and what applying a command does to a real segmenter (tiny preset, random weights)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seem_ros.engine import build_segmenter
from seem_ros.engine.api import SegmenterConfig
from seem_ros.engine.commands import (
    _BIDI_CONTROLS,
    MAX_PROMPT_CHARACTERS,
    Command,
    CommandError,
    apply_command,
    camera_key,
    parse_command,
    resolve_camera,
    run_prompt,
)
from seem_ros.engine.session import Session

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_TRACKS = 4


def add(text: str, camera: str = "") -> Command:
    return Command("add", text=text, camera=camera)


@pytest.mark.parametrize(
    ("said", "meant"),
    [
        # new text targets, with and without a verb
        ("find the red ball", add("red ball")),
        ("Find a red ball.", add("red ball")),
        ("segment the blue bottle on the table", add("blue bottle on the table")),
        ("track the person in the red shirt", add("person in the red shirt")),
        ("show me the keys", add("keys")),
        ("show the remote", add("remote")),
        ("highlight the yellow banana", add("yellow banana")),
        ("locate the fire extinguisher", add("fire extinguisher")),
        ("where is the phone?", add("phone")),
        ("search for an apple", add("apple")),
        ("the red cup", add("red cup")),
        ("red cup", add("red cup")),
        ("the cup left of the laptop", add("cup left of the laptop")),
        ("find the cup left of the laptop", add("cup left of the laptop")),
        ("please find the mug", add("mug")),
        ("find the mug please", add("mug")),
        ("Could you please highlight the yellow banana, thanks.", add("yellow banana")),
        ("Segment, the red cup.", add("red cup")),
        ("FIND THE Red Cup", add("Red Cup")),
        ("a note: keep this", add("note: keep this")),
        ("cup on the table", add("cup on the table")),
        # also / only
        ("also the cup", add("cup")),
        ("Also the cup.", add("cup")),
        ("also find the cup", add("cup")),
        ("and the saucer", add("saucer")),
        ("find the spoon too", add("spoon")),
        ("only the bottle", Command("replace", text="bottle")),
        ("just the bottle", Command("replace", text="bottle")),
        ("only find the bottle", Command("replace", text="bottle")),
        ("find only the bottle", Command("replace", text="bottle")),
        # forget
        ("forget the ball", Command("forget", text="ball")),
        ("Forget the balls.", Command("forget", text="balls")),
        ("drop the red cup", Command("forget", text="red cup")),
        ("remove the cup left of the laptop", Command("forget", text="cup left of the laptop")),
        ("stop tracking the person", Command("forget", text="person")),
        ("forget all the balls", Command("forget", text="balls", every_match=True)),
        ("forget number 3", Command("forget", track_id=3)),
        ("Forget number two.", Command("forget", track_id=2)),
        ("forget #3", Command("forget", track_id=3)),
        ("drop track 12", Command("forget", track_id=12)),
        ("forget target number 4", Command("forget", track_id=4)),
        ("forget that", Command("forget_last")),
        ("forget it", Command("forget_last")),
        ("drop the last one", Command("forget_last")),
        # forget everything
        ("clear", Command("clear")),
        ("  CLEAR ", Command("clear")),
        ("stop", Command("clear")),
        ("reset", Command("clear")),
        ("Stop tracking.", Command("clear")),
        ("forget everything", Command("clear")),
        ("clear all, please", Command("clear")),
        # vocabulary
        ("look for cups, bottles and chairs", Command("vocabulary", names=("cups", "bottles", "chairs"))),
        ("Look for a cup, the bottle or a chair.", Command("vocabulary", names=("cup", "bottle", "chair"))),
        ("look for the dog", add("dog")),
        ("vocabulary: cup, person", Command("vocabulary", names=("cup", "person"))),
        (
            "Vocabulary: cup, person; stuff: wall, floor",
            Command("vocabulary", names=("cup", "person", "wall", "floor"), thing_names=("cup", "person")),
        ),
        ("box: 10, 20, 30.5, 40", Command("box", box=(10.0, 20.0, 30.5, 40.0))),
        # cameras
        ("in the wrist camera find the cup", add("cup", camera="wrist")),
        ("In the wrist, camera find the cup.", add("cup", camera="wrist")),
        ("on the left arm camera, forget that", Command("forget_last", camera="left arm")),
        ("on wrist find the cup", add("cup", camera="wrist")),
        ("on wrist: the cup", add("cup", camera="wrist")),
        ("on front clear", Command("clear", camera="front")),
        ("find the cup in the front camera", add("cup", camera="front")),
        ("in the test_camera find the cup", add("cup", camera="test")),
        ("find the cup in the wrist-cam", add("cup", camera="wrist")),
        ("in the camera find the cup", add("cup", camera="camera")),  # /camera/image_raw's name
        ("find the cup in the camera", add("cup", camera="camera")),
        ("on the table find the cup", add("on the table find the cup")),
        ("find the camera", add("camera")),
    ],
)
def test_phrasings(said: str, meant: Command) -> None:
    assert parse_command(said) == meant


@pytest.mark.parametrize(
    ("said", "reason"),
    [
        ("", "empty prompt"),
        ("   \t ", "empty prompt"),
        ("please", "names nothing to do"),
        ("find", "find what"),
        ("find the", "find what"),
        ("show me, please", "show me what"),
        ("forget", "forget what"),
        ("only", "only what"),
        ("also find", "find what"),
        ("drop the", "drop what"),
        ("forget number 0", "track numbers start at 1"),
        ("vocabulary: ,", "at least one name"),
        ("vocabulary: cup; walls: x", "expected '; stuff: a, b'"),
        ("box: 1, 2, 3", "four numbers"),
        ("box: 30, 20, 10, 40", "top-left then bottom-right"),
        ("box: nan, 0, 10, 10", "finite"),
        ("box: 0, 0, inf, 10", "finite"),
        ("find the " + "x" * 1001, "the limit is 1000"),
        ("x" * (MAX_PROMPT_CHARACTERS + 1), "the limit is"),
        ("the red\ncup", "control character U\\+000A"),
        ("vocabulary: cup\r[FATAL] fake log line", "control character U\\+000D"),
        ("\x1b[31mred", "control character U\\+001B"),
        ("cup\u202egnp.exe", "control character U\\+202E"),
        ("caf\ufffd", "not valid UTF-8"),
        ("a\udcff", "control character U\\+DCFF"),
        (b"cup", "must be a string"),
    ],
)
def test_refusals(said: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_command(said)


def test_camera_names_compare_loosely() -> None:
    assert camera_key("Front_Camera") == camera_key("front camera") == camera_key("front") == "front"
    assert camera_key("left-arm cam") == "left arm"
    assert resolve_camera(add("cup"), ("front", "wrist")) == "front"
    assert resolve_camera(add("cup", camera="wrist"), ("front", "wrist_camera")) == "wrist_camera"
    with pytest.raises(CommandError, match="no camera 'back'; the cameras here are 'front', 'wrist'"):
        resolve_camera(add("cup", camera="back"), ("front", "wrist"))
    with pytest.raises(CommandError, match="this node's camera has no name"):
        resolve_camera(add("cup", camera="back"), ("",))


PROMPT_FRAGMENTS = st.sampled_from(
    ["clear", "vocabulary", "stuff", "box", "find", "forget", "also", "only", "on", "in the", "camera", "the"]
    + [":", ";", ",", " ", "#", "1", "-2.5", "1e400", "nan", "inf", "cup", "number", "please", "look for"]
)
prompt_texts = st.one_of(
    st.text(max_size=60),
    st.lists(st.one_of(PROMPT_FRAGMENTS, st.characters()), max_size=14).map(" ".join),
)


@settings(max_examples=400, deadline=None)
@given(prompt_texts)
def test_every_prompt_parses_or_is_refused(text: str) -> None:
    try:
        command = parse_command(text)
    except CommandError as error:
        assert str(error)
        return
    except ValueError as error:  # TextPrompt's own checks (length)
        assert "text prompt" in str(error)
        return
    assert command.describe()
    if command.action in ("add", "replace"):
        assert command.text and command.text == command.text.strip()
        assert command.text.lower().split()[-1] in text.lower()
    elif command.action == "vocabulary":
        assert command.names and all(name and name == name.strip() for name in command.names)
        assert set(command.thing_names) <= set(command.names)
    elif command.action == "box":
        x0, y0, x1, y1 = command.box
        assert all(math.isfinite(value) for value in command.box) and x0 < x1 and y0 < y1
    elif command.action == "forget":
        assert command.text or command.track_id > 0


names = st.text(
    st.characters(
        blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
        blacklist_characters=",;:\ufffd" + "".join(_BIDI_CONTROLS),
    ),
    min_size=1,
    max_size=10,
)


@FAST
@given(st.lists(names, min_size=1, max_size=5), st.lists(names, max_size=3))
def test_vocabulary_prompts_parse_into_their_names(things: list[str], stuff: list[str]) -> None:
    text = "vocabulary: " + ", ".join(things) + (("; stuff: " + ", ".join(stuff)) if stuff else "")
    command = parse_command(text)
    assert command.names == tuple(things + stuff)
    assert command.thing_names == (tuple(things) if stuff else ())


@FAST
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=4, max_size=4))
def test_box_prompts_parse_into_their_corners(corners: list[float]) -> None:
    x0, y0, x1, y1 = corners
    text = f"box: {x0!r}, {y0!r}, {x1!r}, {y1!r}"
    if x1 > x0 and y1 > y0:
        assert parse_command(text).box == (x0, y0, x1, y1)
    else:
        with pytest.raises(ValueError, match="top-left then bottom-right"):
            parse_command(text)


# Applying commands to the real segmenter


@pytest.fixture(scope="module")
def shared_segmenter() -> Session:
    config = SegmenterConfig("focalt_tiny", device="cpu", random_weights=True, max_tracks=MAX_TRACKS)
    return build_segmenter(config)


@pytest.fixture
def segmenter(shared_segmenter: Session) -> Iterator[Session]:
    shared_segmenter.clear_prompts()
    yield shared_segmenter
    shared_segmenter.clear_prompts()


def _run(segmenter: Session, said: str) -> tuple[bool, str, tuple[int, ...], tuple[int, ...]]:
    outcome = run_prompt(said, {"front": segmenter})
    return outcome.accepted, outcome.message, outcome.created, outcome.removed


def _texts(segmenter: Session) -> dict[int, str]:
    return {track.track_id: track.text for track in segmenter.tracks()}


def test_find_also_forget(segmenter: Session) -> None:
    accepted, message, (ball,), removed = _run(segmenter, "find the red ball")
    assert accepted and message == f"Tracking red ball as number {ball}." and not removed
    accepted, message, (cup,), _ = _run(segmenter, "also the cup")
    assert accepted and message == f"Tracking cup as number {cup}."
    assert _texts(segmenter) == {ball: "red ball", cup: "cup"}
    assert _run(segmenter, "forget the balls") == (True, f"Forgot red ball (number {ball}).", (), (ball,))
    assert _texts(segmenter) == {cup: "cup"}


def test_only_replaces_every_target_even_when_the_tracks_are_full(segmenter: Session) -> None:
    made = [_run(segmenter, f"find object {number}")[2][0] for number in range(MAX_TRACKS)]
    accepted, message, _, _ = _run(segmenter, "also the spoon")
    assert not accepted and f"Already tracking {MAX_TRACKS} targets" in message
    accepted, message, (spoon,), removed = _run(segmenter, "only the spoon")
    assert accepted and message == f"Tracking only spoon, as number {spoon}."
    assert removed == tuple(made) and _texts(segmenter) == {spoon: "spoon"}


def test_forget_by_number_last_and_all_matching(segmenter: Session) -> None:
    red = _run(segmenter, "find the red ball")[2][0]
    blue = _run(segmenter, "find the blue ball")[2][0]
    cup = _run(segmenter, "find the cup")[2][0]
    accepted, message, _, _ = _run(segmenter, "forget the ball")
    assert not accepted
    assert message == f"Which ball: red ball (number {red}) or blue ball (number {blue})? Say the number."
    assert _run(segmenter, "forget that")[3] == (cup,)
    assert _run(segmenter, f"forget number {red}")[3] == (red,)
    cup = _run(segmenter, "find the cup")[2][0]
    assert _run(segmenter, "forget all the balls")[3] == (blue,)
    assert _run(segmenter, "clear") == (True, "Forgot every target.", (), (cup,))
    assert _run(segmenter, "clear") == (True, "There was nothing to forget.", (), ())


@pytest.mark.parametrize(
    ("said", "reason"),
    [
        ("forget the chair", "No target is called chair; the targets are red ball (number"),
        ("forget number 99", "There is no number 99; the targets are red ball (number"),
        ("forget", "Forget what?"),
        ("in the back camera find the cup", "There is no camera 'back'; the cameras here are 'front'."),
        ("find the " + "small red cup " * 30, "SEEM reads at most 77"),
        ("", "Empty prompt"),
    ],
)
def test_refused_commands_change_nothing(segmenter: Session, said: str, reason: str) -> None:
    ball = _run(segmenter, "find the red ball")[2][0]
    accepted, message, created, removed = _run(segmenter, said)
    assert not accepted and reason in message and not created and not removed
    assert _texts(segmenter) == {ball: "red ball"}


def test_forget_with_nothing_tracked_is_refused(segmenter: Session) -> None:
    nothing = "There is nothing to forget: no target is tracked."
    assert _run(segmenter, "forget that") == (False, nothing, (), ())


def test_camera_named_is_the_one_served(segmenter: Session) -> None:
    outcome = run_prompt("on the front camera find the cup", {"front": segmenter})
    assert outcome.accepted and outcome.camera == "front" and outcome.command == add("cup", camera="front")
    outcome = run_prompt("in the camera find the bottle", {"camera": segmenter})  # named after /camera/...
    assert outcome.accepted and outcome.camera == "camera"
    assert outcome.command == add("bottle", camera="camera")


def test_vocabulary_and_box_commands(segmenter: Session) -> None:
    before = segmenter.vocabulary_names()
    try:
        assert _run(segmenter, "look for cups, bottles and chairs")[:2] == (
            True,
            "Looking for cups, bottles and chairs.",
        )
        assert segmenter.vocabulary_names() == ("cups", "bottles", "chairs")
    finally:
        segmenter.set_vocabulary(before, ())
    accepted, message, (box,), _ = _run(segmenter, "box: 10, 20, 30, 40")
    assert accepted and message == f"Tracking the box as number {box}."
    assert [(track.kind, track.text) for track in segmenter.tracks()] == [("box", "")]
    assert apply_command(segmenter, Command("forget", text="box")).removed == (box,)


def test_a_node_names_its_camera_after_its_image_topic() -> None:
    from seem_ros.ros.seem_node import camera_name_of_topic

    assert camera_name_of_topic("/front/color/image_raw") == "front"
    assert camera_name_of_topic("/test_camera/image_raw") == "test_camera"
    assert camera_name_of_topic("/image") == ""
