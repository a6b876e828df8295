"""Speech: Whisper base (offline) transcribes commands spoken by espeak-ng; seem_speech_node, running as its
own process, turns them into `prompt` messages over DDS; with seem_node running too, spoken commands change
its targets and every command is answered on `prompt_feedback`.

Speech is synthesised with espeak-ng (voice en-us, 130 words per minute) and converted by sox to 16 kHz mono
16-bit WAV; both are apt packages. Transcripts are compared case- and punctuation-insensitively.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import rclpy
import skimage.data
from node_client import NodeClient, node_command
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from ros_helpers import NodeProcess, exit_of, ros_context, ros_environment, spin_until  # noqa: F401 (fixtures)
from sensor_msgs.msg import Image
from std_msgs.msg import Int16MultiArray, String

from seem_ros.msg import InstanceMaskArray, PromptFeedback
from seem_ros.ros.conversions import array_to_image
from seem_ros.speech import (
    SAMPLE_RATE,
    Transcriber,
    UtteranceSegmenter,
    normalize_command,
    normalize_text,
    pcm16_to_float32,
)
from seem_ros.speech.transcriber import assemble_model_folder

ESPEAK = shutil.which("espeak-ng")
SOX = shutil.which("sox")
PHRASES = ("find the red cup", "pick up the blue bottle", "highlight the yellow banana")
NODE_START_TIMEOUT = 60.0
RESULT_TIMEOUT = 30.0

needs_speech_synthesis = pytest.mark.skipif(
    ESPEAK is None or SOX is None,
    reason="espeak-ng and sox make the test speech and are not installed: apt-get install espeak-ng sox",
)


def _speak(text: str, path: Path) -> Path:
    """Say `text` with espeak-ng into a 16 kHz mono 16-bit WAV at `path`."""
    raw = path.with_suffix(".espeak.wav")
    subprocess.run([ESPEAK, "-v", "en-us", "-s", "130", "-w", str(raw), text], check=True)
    subprocess.run([SOX, str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(path)], check=True)
    return path


def _read_wav(path: Path) -> np.ndarray:
    """(N,) int16 samples of a 16 kHz mono 16-bit WAV."""
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (SAMPLE_RATE, 1, 2)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Phrase -> WAV file of it."""
    if ESPEAK is None or SOX is None:
        pytest.skip("espeak-ng and sox are not installed (apt-get install espeak-ng sox)")
    folder = tmp_path_factory.mktemp("speech")
    return {phrase: _speak(phrase, folder / f"{phrase.replace(' ', '_')}.wav") for phrase in PHRASES}


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    return Transcriber()


def test_normalize_text() -> None:
    assert normalize_text(" Segment, the red cup.") == "segment the red cup"
    assert normalize_text("Pick up the blue-green bottle!") == "pick up the blue-green bottle"
    assert normalize_text("What's   that?") == "what's that"
    assert normalize_text(" ... ") == ""


def test_normalize_command_keeps_list_commas() -> None:
    assert normalize_command("Look for cups, bottles and chairs.") == "look for cups, bottles and chairs"
    assert normalize_command(" Segment , the red cup!") == "segment, the red cup"
    assert normalize_command("Forget #3.") == "forget #3"
    assert normalize_command(", ... ,") == ""


def test_pcm16_to_float32() -> None:
    samples = np.array([-32768, 0, 16384, 32767], np.int16)
    expected = np.array([-1.0, 0.0, 0.5, 32767 / 32768], np.float32)
    np.testing.assert_array_equal(pcm16_to_float32(samples), expected)
    np.testing.assert_array_equal(pcm16_to_float32(samples.tobytes()), expected)
    np.testing.assert_array_equal(pcm16_to_float32(list(samples)), expected)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_assemble_model_folder_joins_parts_once(tmp_path: Path) -> None:
    first, second = tmp_path / "wheel_1", tmp_path / "wheel_2"
    _write(first / "model.bin.part1", b"abc")
    _write(second / "model.bin.part2", b"defg")
    _write(second / "config.json", b"{}")
    target = tmp_path / "cache" / "whisper-base"

    assert assemble_model_folder([first, second], target) == target
    assert (target / "model.bin").read_bytes() == b"abcdefg"
    assert (target / "config.json").read_bytes() == b"{}"
    assert sorted(path.name for path in target.parent.iterdir()) == ["whisper-base"]

    written = (target / "model.bin").stat().st_mtime_ns
    time.sleep(0.01)
    assemble_model_folder([first, second], target)
    assert (target / "model.bin").stat().st_mtime_ns == written, "a complete folder must not be rebuilt"


def test_assemble_model_folder_rebuilds_an_incomplete_folder(tmp_path: Path) -> None:
    source = tmp_path / "wheel"
    _write(source / "model.bin.part1", b"abc")
    _write(source / "model.bin.part2", b"def")
    target = _write(tmp_path / "whisper-base" / "model.bin", b"abcd").parent  # interrupted copy
    assemble_model_folder([source], target)
    assert (target / "model.bin").read_bytes() == b"abcdef"


def test_assemble_model_folder_refuses_missing_parts(tmp_path: Path) -> None:
    source = tmp_path / "wheel"
    _write(source / "model.bin.part1", b"abc")
    _write(source / "model.bin.part3", b"ghi")
    with pytest.raises(ValueError, match="numbered 1..2"):
        assemble_model_folder([source], tmp_path / "whisper-base")


def _tone(seconds: float, amplitude: float = 0.3) -> np.ndarray:
    time_s = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * 440.0 * time_s)).astype(np.float32)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SAMPLE_RATE), np.float32)


def _push_in_chunks(segmenter: UtteranceSegmenter, stream: np.ndarray, chunk: int) -> list[np.ndarray]:
    return [
        u for start in range(0, len(stream), chunk) for u in segmenter.push(stream[start : start + chunk])
    ]


@pytest.mark.parametrize("chunk", [1, 333, 1600, 10**6])
def test_segmenter_cuts_at_silence_whatever_the_chunk_size(chunk: int) -> None:
    stream = np.concatenate([_silence(1.0), _tone(1.0), _silence(1.0), _tone(0.5), _silence(1.0)])
    segmenter = UtteranceSegmenter(end_silence_seconds=0.6, pre_roll_seconds=0.3, frame_seconds=0.02)
    utterances = _push_in_chunks(segmenter, stream, chunk)
    # pre-roll 0.3 s + speech + 0.6 s of silence that ended it
    assert [len(u) / SAMPLE_RATE for u in utterances] == pytest.approx([1.9, 1.4])
    assert not segmenter.in_utterance and segmenter.flush() is None


def test_segmenter_drops_clicks_and_cuts_long_speech() -> None:
    segmenter = UtteranceSegmenter(max_utterance_seconds=2.0, min_speech_seconds=0.2, pre_roll_seconds=0.0)
    assert segmenter.push(np.concatenate([_tone(0.1), _silence(1.0)])) == []
    utterances = segmenter.push(_tone(5.0))
    assert [len(u) / SAMPLE_RATE for u in utterances] == pytest.approx([2.0, 2.0])
    assert segmenter.in_utterance


def test_segmenter_flush_ends_the_utterance() -> None:
    segmenter = UtteranceSegmenter(pre_roll_seconds=0.0)
    assert segmenter.push(_tone(1.01)) == []
    utterance = segmenter.flush()
    assert utterance is not None and len(utterance) == round(1.01 * SAMPLE_RATE)
    assert segmenter.flush() is None


def test_segmenter_refuses_bad_lengths() -> None:
    with pytest.raises(ValueError, match="max_utterance_seconds"):
        UtteranceSegmenter(end_silence_seconds=1.0, max_utterance_seconds=0.5)


@needs_speech_synthesis
@pytest.mark.parametrize("phrase", PHRASES)
def test_transcriber_hears_spoken_commands(
    transcriber: Transcriber, spoken: dict[str, Path], phrase: str
) -> None:
    transcript = transcriber.transcribe_file(spoken[phrase])
    assert transcript.command == phrase, transcript
    assert transcript.rejection_reason() is None, transcript


@needs_speech_synthesis
def test_transcriber_takes_a_float32_buffer(transcriber: Transcriber, spoken: dict[str, Path]) -> None:
    audio = pcm16_to_float32(_read_wav(spoken["find the red cup"]))
    transcript = transcriber.transcribe(audio)
    assert normalize_text(transcript.text) == "find the red cup", transcript
    assert transcript.audio_seconds == pytest.approx(len(audio) / SAMPLE_RATE)
    with pytest.raises(ValueError, match="float32"):
        transcriber.transcribe(_read_wav(spoken["find the red cup"]))


def test_transcriber_rejects_silence(transcriber: Transcriber) -> None:
    transcript = transcriber.transcribe(_silence(2.0))
    assert transcript.rejection_reason() is not None, transcript


class PromptListener:
    """This test's side of the DDS test: sends speech to the node, collects the prompts it publishes."""

    def __init__(self, context: rclpy.context.Context) -> None:
        self.node = Node("speech_test_client", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.prompts: list[str] = []
        self.node.create_subscription(
            String, "prompt", lambda msg: self.prompts.append(msg.data), QoSProfile(depth=10)
        )
        self.file_pub = self.node.create_publisher(String, "speech_file", QoSProfile(depth=10))
        self.audio_pub = self.node.create_publisher(Int16MultiArray, "audio", QoSProfile(depth=100))

    def connected(self) -> bool:
        return (
            self.file_pub.get_subscription_count() > 0
            and self.audio_pub.get_subscription_count() > 0
            and self.node.count_publishers("prompt") > 0
        )

    def send_audio(self, samples: np.ndarray, chunk: int = SAMPLE_RATE // 10) -> None:
        """Stream int16 samples in chunks of 0.1 s, 20 times faster than real time."""
        for start in range(0, len(samples), chunk):
            self.audio_pub.publish(Int16MultiArray(data=samples[start : start + chunk].tolist()))
            self.executor.spin_once(timeout_sec=0.005)

    def wait_for_prompts(self, count: int, timeout: float = RESULT_TIMEOUT) -> list[str]:
        spin_until(self.executor, lambda: len(self.prompts) >= count, timeout)
        return self.prompts

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture
def speech_node(ros_environment: dict[str, str], tmp_path: Path) -> Iterator[NodeProcess]:  # noqa: F811
    command = [sys.executable, "-m", "seem_ros.ros.speech_node", "--ros-args", "-p", "microphone:=false"]
    node = NodeProcess(command, ros_environment, tmp_path / "speech_node.log")
    try:
        yield node
    finally:
        exit_code = node.stop()
    assert exit_code == 0, f"seem_speech_node did not shut down cleanly ({exit_code}):\n{node.output()}"


def test_speech_node_with_a_bad_parameter_exits_with_code_2(
    ros_environment: dict[str, str],  # noqa: F811
    tmp_path: Path,
):
    """The node it had begun is destroyed before the error leaves its constructor (`destroyed_if_unfinished`),
    and the console script says which parameter and exits 2."""
    command = [sys.executable, "-m", "seem_ros.ros.speech_node", "--ros-args", "-p", "max_queued:=-5"]
    exit_code, output = exit_of(command, ros_environment, tmp_path / "speech_node.log")
    assert exit_code == 2, output
    assert "bad parameter, not starting: parameter 'max_queued'" in output


@needs_speech_synthesis
def test_speech_node_publishes_spoken_commands_as_prompts(
    speech_node: NodeProcess,
    ros_context: rclpy.context.Context,  # noqa: F811
    spoken: dict[str, Path],
    tmp_path: Path,
) -> None:
    client = PromptListener(ros_context)
    try:
        connected = spin_until(
            client.executor, lambda: client.connected() or not speech_node.is_running(), 60.0
        )
        assert connected and speech_node.is_running(), f"node not ready:\n{speech_node.output()}"

        client.file_pub.publish(String(data=str(tmp_path / "missing.wav")))
        client.file_pub.publish(String(data=str(spoken["find the red cup"])))
        assert client.wait_for_prompts(1) == ["find the red cup"], speech_node.output()

        # An utterance ended by 1 s of silence (the energy rule), then one ended by an empty message.
        bottle = _read_wav(spoken["pick up the blue bottle"])
        client.send_audio(
            np.concatenate([np.zeros(SAMPLE_RATE // 2, np.int16), bottle, np.zeros(SAMPLE_RATE, np.int16)])
        )
        client.send_audio(_read_wav(spoken["highlight the yellow banana"]))
        client.audio_pub.publish(Int16MultiArray())
        expected = ["find the red cup", "pick up the blue bottle", "highlight the yellow banana"]
        assert client.wait_for_prompts(3) == expected, speech_node.output()

        assert speech_node.is_running()
        log = speech_node.output()
        assert "missing.wav failed: FileNotFoundError" in log
        assert log.count("heard ") == 3, log
    finally:
        client.close()


FEEDBACK_QOS = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL)
SPOKEN_COMMANDS = ("find the red ball", "also the cup", "forget the ball")
COMMAND_TIMEOUT = 120.0


class Operator(NodeClient):
    """seem_node's client (camera frames, results) that also talks to seem_speech_node and reads answers."""

    def __init__(
        self, context: rclpy.context.Context, seem_node: NodeProcess, speech_node: NodeProcess
    ) -> None:
        super().__init__(context, seem_node)
        self.speech_node = speech_node
        self.feedback: list[PromptFeedback] = []
        self.node.create_subscription(PromptFeedback, "/prompt_feedback", self.feedback.append, FEEDBACK_QOS)
        self.speech_files = self.node.create_publisher(String, "/speech_file", QoSProfile(depth=10))

    def answer_to(self, send: Callable[[], None]) -> PromptFeedback:
        """send() one prompt, then wait for the next answer (commands are sent one at a time)."""
        known = len(self.feedback)
        send()
        answered = self.spin_until(lambda: len(self.feedback) > known, COMMAND_TIMEOUT)
        logs = f"{self.process.output()}\n--- speech node:\n{self.speech_node.output()}"
        assert answered, f"no answer:\n{logs}"
        return self.feedback[known]

    def say(self, wav: Path) -> PromptFeedback:
        return self.answer_to(lambda: self.speech_files.publish(String(data=str(wav))))

    def type(self, text: str) -> PromptFeedback:
        return self.answer_to(lambda: self.prompts.publish(String(data=text)))

    def targets_become(self, frame: Image, texts: dict[int, str]) -> None:
        """Stream frames until the newest result's tracked instances are `texts` (track id -> text)."""

        def tracked(msg: InstanceMaskArray) -> dict[int, str]:
            return {i.track_id: i.prompt_text for i in msg.instances if i.track_id > 0}

        self.publish_until(frame, lambda: bool(self.instances) and tracked(self.instances[-1]) == texts)


@needs_speech_synthesis
def test_spoken_commands_change_the_targets_and_are_answered(
    ros_environment: dict[str, str],  # noqa: F811
    ros_context: rclpy.context.Context,  # noqa: F811
    reference_dir: Path,
    tmp_path: Path,
) -> None:
    wavs = {
        phrase: _speak(phrase, tmp_path / f"{phrase.replace(' ', '_')}.wav") for phrase in SPOKEN_COMMANDS
    }
    backwards = tmp_path / "backwards.wav"
    subprocess.run([SOX, str(wavs["find the red ball"]), str(backwards), "reverse"], check=True)
    coffee = cv2.resize(skimage.data.coffee(), (320, 240), interpolation=cv2.INTER_AREA)
    frame = array_to_image(coffee, "rgb8")
    seem_command = node_command(reference_dir, short_side=128, track_min_score=0.0, panoptic=False)
    speech_parameters = ["-p", "microphone:=false", "-p", "speak_feedback:=true"]
    speech_command = [sys.executable, "-m", "seem_ros.ros.speech_node", "--ros-args", *speech_parameters]
    seem_node = NodeProcess(seem_command, ros_environment, tmp_path / "seem_node.log")
    speech_node = NodeProcess(speech_command, ros_environment, tmp_path / "speech_node.log")
    operator = Operator(ros_context, seem_node, speech_node)
    try:
        operator.wait_for_node()
        ready = operator.spin_until(lambda: operator.speech_files.get_subscription_count() > 0, 60.0)
        assert ready and speech_node.is_running(), speech_node.output()
        assert operator.spin_until(lambda: any(item.action == "ready" for item in operator.feedback), 10.0)

        found = operator.say(wavs["find the red ball"])
        assert normalize_text(found.prompt) == "find the red ball", found
        assert (found.accepted, found.action, found.message) == (
            True,
            "add",
            "Tracking red ball as number 1.",
        )
        assert list(found.created_track_ids) == [1] and list(found.track_texts) == ["red ball"]
        assert "cup" in found.vocabulary
        operator.targets_become(frame, {1: "red ball"})

        also = operator.say(wavs["also the cup"])
        assert (normalize_text(also.prompt), also.accepted) == ("also the cup", True), also
        assert (list(also.created_track_ids), also.message) == ([2], "Tracking cup as number 2.")
        operator.targets_become(frame, {1: "red ball", 2: "cup"})

        forgot = operator.say(wavs["forget the ball"])
        assert normalize_text(forgot.prompt) in ("forget the ball", "forget the balls"), forgot
        assert (forgot.accepted, forgot.action, list(forgot.removed_track_ids)) == (True, "forget", [1])
        assert forgot.message == "Forgot red ball (number 1)." and list(forgot.track_ids) == [2]
        operator.targets_become(frame, {2: "cup"})

        unsure = operator.say(backwards)
        assert (unsure.accepted, unsure.message) == (False, "I did not understand."), unsure
        assert unsure.prompt and not unsure.track_ids, unsure

        for typed, reason in [
            (
                "in the wrist camera find the cup",
                "There is no camera 'wrist'; the cameras here are 'test_camera'.",
            ),
            ("forget number 42", "There is no number 42; the targets are cup (number 2)."),
            ("forget", "Forget what?"),
            ("   ", "Empty prompt"),
            ("find the \x1b[31mcup", "Prompt holds the control character U+001B"),
        ]:
            refused = operator.type(typed)
            assert (refused.prompt, refused.accepted) == (typed, False), refused
            assert refused.message.startswith(reason) and list(refused.track_ids) == [2], refused
            assert not refused.created_track_ids and not refused.removed_track_ids
        cleared = operator.type("on test camera clear")
        assert (cleared.accepted, cleared.camera, list(cleared.removed_track_ids)) == (
            True,
            "test_camera",
            [2],
        )
        operator.targets_become(frame, {})
        assert seem_node.is_running() and speech_node.is_running()
        spoken = lambda: "said 'Forgot every target.'" in speech_node.output()  # noqa: E731
        assert operator.spin_until(spoken, 30.0), speech_node.output()
    finally:
        operator.close()
        seem_exit, speech_exit = seem_node.stop(), speech_node.stop()
    assert (seem_exit, speech_exit) == (0, 0), f"{seem_node.output()}\n{speech_node.output()}"
