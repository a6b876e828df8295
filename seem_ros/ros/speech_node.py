"""seem_speech_node: spoken commands become text prompts for seem_node.

Run: `seem_speech_node --ros-args -p speak_feedback:=true`

Inputs (any mix, all served at once):
  audio        std_msgs/Int16MultiArray: chunks of 16 kHz mono signed 16-bit PCM of any length (`layout`
               is ignored), best effort (REP-2003), depth 100. Utterances are cut by energy: speech starts at
               a frame louder than `speech_threshold` and ends after `end_silence_seconds` of silence or at
               `max_utterance_seconds`; an empty message ends the current utterance at once (push-to-talk).
  speech_file  std_msgs/String: path of an audio file to transcribe (WAV or any format PyAV decodes),
               reliable.
  wav_file     parameter: a file transcribed once, as soon as `prompt` has a subscriber.
  microphone   with `microphone: true`, the default (or `microphone_device`) input device through the
               `sounddevice` package, cut like `audio`. Without the package or a device this is logged once
               and the other inputs are still served.
  prompt_feedback  seem_ros/PromptFeedback, reliable, transient local: seem_node's answers. The vocabulary and
               target texts in them prime Whisper (with the command words, unless `initial_prompt` is set);
               with `speak_feedback: true` each answer's message is spoken with espeak-ng.
Publishes (relative names, remap them):
  prompt       std_msgs/String, reliable: each recognised command, normalised ("segment the red cup", commas
               between list items kept), which seem_node parses as an operator command.
  prompt_feedback  "I did not understand." (accepted false) for a transcript with words but a high no-speech
               probability or a low average log probability, which is not published on prompt.
Transcripts without words are only logged. Whisper runs on a worker thread, one utterance at a time in arrival
order, so the inputs never wait for it; utterances arriving while `max_queued` are waiting are dropped with a
warning. While feedback is spoken the microphone is not listened to (the robot would hear itself).
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from rclpy.time import Time
from std_msgs.msg import Header, Int16MultiArray, String

from seem_ros.engine.commands import SPOKEN_EXAMPLES, speech_prompt
from seem_ros.msg import PromptFeedback
from seem_ros.ros.node_runner import destroyed_if_unfinished, run_node, sensor_qos
from seem_ros.ros.parameters import ParameterError, ParameterSpec, declare_parameters
from seem_ros.speech.transcriber import (
    SAMPLE_RATE,
    Transcriber,
    Transcript,
    pcm16_to_float32,
)
from seem_ros.speech.utterance import UtteranceSegmenter

NODE_NAME = "seem_speech_node"

# REP-2003: sensor streams best effort; deep enough to hold a burst of ~10 s of 0.1 s chunks.
AUDIO_QOS = sensor_qos(100)
COMMAND_QOS = QoSProfile(depth=10)  # reliable, volatile
FEEDBACK_QOS = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL)  # as seem_node's
NOT_UNDERSTOOD = "I did not understand."

PARAMETERS: tuple[ParameterSpec, ...] = (
    # Recogniser
    ParameterSpec(
        "model_dir", "", "faster-whisper (CTranslate2) model folder; empty = the bundled Whisper base."
    ),
    ParameterSpec(
        "language",
        "en",
        "ISO 639-1 code of the spoken language; empty = detect it for each utterance.",
        pattern=r"([a-z]{2,3})?",
    ),
    ParameterSpec("beam_size", 5, "Beam search width (1 = greedy).", int_range=(1, 20)),
    ParameterSpec(
        "initial_prompt",
        "",
        "Fixed text that primes the recogniser; empty = built from the command words and the vocabulary and "
        "targets seem_node reports on prompt_feedback.",
    ),
    ParameterSpec("device", "cpu", "Where Whisper runs.", choices=("cpu", "cuda", "auto")),
    ParameterSpec(
        "compute_type",
        "int8",
        "CTranslate2 quantisation: int8 (CPU), float16 (GPU), int8_float16, float32 or default.",
        pattern=r"[a-z0-9_]+",
    ),
    ParameterSpec(
        "cpu_threads", 0, "CPU threads for Whisper; 0 = CTranslate2's default.", int_range=(0, 256)
    ),
    # Inputs
    ParameterSpec(
        "wav_file", "", "Audio file transcribed once when `prompt` has a subscriber; empty = none."
    ),
    ParameterSpec("microphone", True, "Listen to a microphone through sounddevice when one is available."),
    ParameterSpec(
        "microphone_device", "", "sounddevice input device: index or name substring; empty = the default."
    ),
    ParameterSpec(
        "speech_threshold",
        0.02,
        "Frame RMS (full scale = 1) from which live audio counts as speech; 0.02 is about -34 dBFS.",
        float_range=(0.0001, 1.0),
    ),
    ParameterSpec(
        "end_silence_seconds", 0.6, "Silence that ends an utterance of live audio.", float_range=(0.05, 10.0)
    ),
    ParameterSpec(
        "max_utterance_seconds",
        10.0,
        "Live audio is cut into utterances of at most this length (Whisper hears 30 s at most).",
        float_range=(0.5, 30.0),
    ),
    ParameterSpec(
        "min_speech_seconds",
        0.2,
        "Shorter bursts of live audio are ignored (clicks).",
        float_range=(0.0, 10.0),
    ),
    # Acceptance
    ParameterSpec(
        "min_log_probability",
        -1.0,
        "Transcripts with a lower average token log probability are not published (garbled).",
        float_range=(-20.0, 0.0),
    ),
    ParameterSpec(
        "max_no_speech_probability",
        0.6,
        "Transcripts with a higher no-speech probability are not published.",
        float_range=(0.0, 1.0),
    ),
    ParameterSpec(
        "max_queued", 8, "Utterances waiting for Whisper beyond this are dropped.", int_range=(1, 1000)
    ),
    # Answers
    ParameterSpec("speak_feedback", False, "Speak seem_node's answers (prompt_feedback) with espeak-ng."),
    ParameterSpec("voice", "en-us", "espeak-ng voice of the spoken answers.", pattern=r"[A-Za-z0-9_+\-]+"),
)


@dataclass(frozen=True)
class SpeechSettings:
    """Validated values of every parameter in PARAMETERS (same names)."""

    model_dir: str
    language: str
    beam_size: int
    initial_prompt: str
    device: str
    compute_type: str
    cpu_threads: int
    wav_file: str
    microphone: bool
    microphone_device: str
    speech_threshold: float
    end_silence_seconds: float
    max_utterance_seconds: float
    min_speech_seconds: float
    min_log_probability: float
    max_no_speech_probability: float
    max_queued: int
    speak_feedback: bool
    voice: str

    def transcriber(self) -> Transcriber:
        return Transcriber(
            model_dir=self.model_dir or None,
            language=self.language,
            beam_size=self.beam_size,
            initial_prompt=self.initial_prompt or SPOKEN_EXAMPLES,
            device=self.device,
            compute_type=self.compute_type,
            cpu_threads=self.cpu_threads,
        )

    def segmenter(self) -> UtteranceSegmenter:
        return UtteranceSegmenter(
            sample_rate=SAMPLE_RATE,
            speech_threshold=self.speech_threshold,
            end_silence_seconds=self.end_silence_seconds,
            max_utterance_seconds=self.max_utterance_seconds,
            min_speech_seconds=self.min_speech_seconds,
        )


def declare_and_read(node: Node) -> SpeechSettings:
    """Declare every parameter on `node` and return the validated values; raise ParameterError otherwise."""
    values = declare_parameters(node, PARAMETERS)
    if values["max_utterance_seconds"] <= values["end_silence_seconds"]:
        raise ParameterError(
            f"parameter 'max_utterance_seconds' = {values['max_utterance_seconds']} must exceed "
            f"'end_silence_seconds' = {values['end_silence_seconds']}"
        )
    return SpeechSettings(**{field.name: values[field.name] for field in fields(SpeechSettings)})


@dataclass(frozen=True)
class SpeechJob:
    """One thing to transcribe: samples (float32, 16 kHz mono) or an audio file path; `source` is for logs."""

    source: str
    audio: np.ndarray | None = None
    path: str | None = None


class SpeechNode(Node):
    """The speech node. `transcriber` replaces the one built from parameters (embedding, tests)."""

    def __init__(self, transcriber: Transcriber | None = None, node_name: str = NODE_NAME) -> None:
        super().__init__(node_name)
        with destroyed_if_unfinished(self):
            self._worker: threading.Thread | None = None
            self._speaker: threading.Thread | None = None
            self._microphone_stream = None
            self.settings = declare_and_read(self)
            self._transcriber = self.settings.transcriber() if transcriber is None else transcriber
            self.get_logger().info(f"Whisper model: {self._transcriber.model_dir}")
            self._jobs: queue.Queue[SpeechJob | None] = queue.Queue(maxsize=self.settings.max_queued)
            self._audio_segmenter = self.settings.segmenter()
            self._microphone_segmenter = self.settings.segmenter()
            self._recognition_prompt = self.settings.initial_prompt or SPOKEN_EXAMPLES
            self._started = self.get_clock().now()
            self._answers: queue.Queue[str | None] = queue.Queue(maxsize=8)
            self._speaking = threading.Event()

            self._prompt_pub = self.create_publisher(String, "prompt", COMMAND_QOS)
            self._feedback_pub = self.create_publisher(PromptFeedback, "prompt_feedback", FEEDBACK_QOS)
            self.create_subscription(PromptFeedback, "prompt_feedback", self._on_feedback, FEEDBACK_QOS)
            self.create_subscription(Int16MultiArray, "audio", self._on_audio, AUDIO_QOS)
            self.create_subscription(String, "speech_file", self._on_speech_file, COMMAND_QOS)
            self._wav_timer = self.create_timer(0.2, self._on_wav_timer) if self.settings.wav_file else None
            self._worker = threading.Thread(target=self._transcribe_jobs, name="whisper", daemon=True)
            self._worker.start()
            if self.settings.speak_feedback:
                self._start_speaker()
            if self.settings.microphone:
                self._start_microphone()

    def destroy_node(self) -> None:
        if self._microphone_stream is not None:
            self._microphone_stream.close()
            self._microphone_stream = None
        if self._speaker is not None and self._speaker.is_alive():
            self._answers.put(None)
            self._speaker.join(timeout=30.0)
        if self._worker is not None and self._worker.is_alive():
            while True:
                try:
                    self._jobs.get_nowait()
                except queue.Empty:
                    break
            self._jobs.put(None)
            self._worker.join(timeout=30.0)
        super().destroy_node()

    def _enqueue(self, job: SpeechJob) -> None:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self.get_logger().warning(
                f"dropped speech from {job.source}: "
                f"{self.settings.max_queued} utterances already wait for Whisper"
            )

    def _on_audio(self, msg: Int16MultiArray) -> None:
        if not msg.data:
            utterance = self._audio_segmenter.flush()
            utterances = [] if utterance is None else [utterance]
        else:
            utterances = self._audio_segmenter.push(pcm16_to_float32(msg.data))
        for utterance in utterances:
            self._enqueue(SpeechJob(source="audio", audio=utterance))

    def _on_speech_file(self, msg: String) -> None:
        path = msg.data.strip()
        if not path:
            self.get_logger().error("speech_file: empty path; send the path of an audio file")
            return
        self._enqueue(SpeechJob(source=f"speech_file {path}", path=path))

    def _on_wav_timer(self) -> None:
        if self._prompt_pub.get_subscription_count() == 0:
            return
        self._wav_timer.cancel()
        self.destroy_timer(self._wav_timer)
        self._wav_timer = None
        self._enqueue(SpeechJob(source=f"wav_file {self.settings.wav_file}", path=self.settings.wav_file))

    def _start_microphone(self) -> None:
        try:
            import sounddevice
        except (ImportError, OSError) as error:
            self.get_logger().info(
                f"no microphone: sounddevice is not usable ({error}); serving audio, speech_file and wav_file"
            )
            return
        name = self.settings.microphone_device
        device = int(name) if name.isdigit() else (name or None)
        try:
            stream = sounddevice.InputStream(
                samplerate=SAMPLE_RATE,
                channels=1,
                dtype="float32",
                blocksize=SAMPLE_RATE // 10,
                device=device,
                callback=self._on_microphone_block,
            )
            stream.start()
        except Exception as error:  # PortAudioError, or ValueError for an unknown device
            self.get_logger().info(
                f"no microphone: cannot open input device {name or 'default'} "
                f"({type(error).__name__}: {error}); "
                "serving audio, speech_file and wav_file"
            )
            return
        self._microphone_stream = stream
        self.get_logger().info(f"listening to microphone {stream.device}")

    def _on_microphone_block(self, block: np.ndarray, frames: int, time_info: object, status: object) -> None:
        """sounddevice callback (PortAudio thread): block is (frames, 1) float32. Ignored while speaking."""
        if self._speaking.is_set():
            self._microphone_segmenter.reset()
            return
        for utterance in self._microphone_segmenter.push(block[:, 0].copy()):
            self._enqueue(SpeechJob(source="microphone", audio=utterance))

    def _on_feedback(self, msg: PromptFeedback) -> None:
        """seem_node's answers (and this node's own): prime Whisper with the vocabulary and targets they
        report, and speak the answers given since this node started."""
        if msg.vocabulary and not self.settings.initial_prompt:
            self._recognition_prompt = speech_prompt(msg.vocabulary, msg.track_texts)
        if self._speaker is not None and Time.from_msg(msg.header.stamp) >= self._started:
            try:
                self._answers.put_nowait(msg.message)
            except queue.Full:
                self.get_logger().warning(f"not spoken (8 answers wait already): {msg.message!r}")

    def _start_speaker(self) -> None:
        espeak = shutil.which("espeak-ng")
        if espeak is None:
            self.get_logger().warning(
                "speak_feedback is set but espeak-ng is not installed; answers are not spoken"
            )
            return
        self._speaker = threading.Thread(
            target=self._speak_answers, args=(espeak,), name="espeak", daemon=True
        )
        self._speaker.start()

    def _speak_answers(self, espeak: str) -> None:
        while (answer := self._answers.get()) is not None:
            self._speaking.set()
            try:
                spoken = subprocess.run(
                    [espeak, "-v", self.settings.voice, "--", answer], capture_output=True, timeout=60.0
                )
                if spoken.returncode != 0:
                    error = spoken.stderr.decode(errors="replace")[-300:]
                    self.get_logger().warning(f"espeak-ng failed ({spoken.returncode}): {error}")
                else:
                    self.get_logger().info(f"said {answer!r}")
            except (OSError, subprocess.TimeoutExpired) as error:
                self.get_logger().warning(f"espeak-ng failed: {type(error).__name__}: {error}")
            finally:
                time.sleep(0.3)  # the room's echo
                self._speaking.clear()

    def _transcribe_jobs(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                prompt = self._recognition_prompt
                if job.path is not None:
                    transcript = self._transcriber.transcribe_file(Path(job.path), prompt)
                else:
                    transcript = self._transcriber.transcribe(job.audio, prompt)
                self._publish(job, transcript)
            except Exception as error:
                self.get_logger().error(f"speech from {job.source} failed: {type(error).__name__}: {error}")

    def _publish(self, job: SpeechJob, transcript: Transcript) -> None:
        timing = f"{transcript.audio_seconds:.1f} s of audio in {transcript.decode_seconds:.1f} s"
        reason = transcript.rejection_reason(
            min_average_log_probability=self.settings.min_log_probability,
            max_no_speech_probability=self.settings.max_no_speech_probability,
        )
        if reason is not None:
            self.get_logger().info(f"ignored {transcript.text!r} from {job.source} ({reason}; {timing})")
            if any(character.isalnum() for character in transcript.command):
                self._feedback_pub.publish(
                    PromptFeedback(
                        header=Header(stamp=self.get_clock().now().to_msg()),
                        prompt=transcript.text,
                        accepted=False,
                        message=NOT_UNDERSTOOD,
                    )
                )
            return
        self.get_logger().info(f"heard {transcript.text!r} from {job.source} ({timing})")
        self._prompt_pub.publish(String(data=transcript.command))


def main(args: list[str] | None = None) -> int:
    """Console script `seem_speech_node`. Returns 0 after a clean shutdown, 2 for a bad parameter, 1 if the
    model cannot be loaded."""
    return run_node(NODE_NAME, SpeechNode, SingleThreadedExecutor, "the speech recogniser", args)


if __name__ == "__main__":
    raise SystemExit(main())
