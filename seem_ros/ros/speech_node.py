"""seem_speech_node: spoken commands become text prompts for seem_node.

Run: `seem_speech_node --ros-args -p initial_prompt:="Find the mug, the keys or the remote."`

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
Publishes (relative names, remap them):
  prompt       std_msgs/String, reliable: each recognised command, normalised ("segment the red cup"), which
               seem_node takes as a text prompt ("clear" clears its prompts).
Transcripts without words, with a high no-speech probability or a low average log probability are logged and
not published. Whisper runs on a worker thread, one utterance at a time in arrival order, so the inputs never
wait for it; utterances arriving while `max_queued` are waiting are dropped with a warning.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from std_msgs.msg import Int16MultiArray, String

from seem_ros.ros.node_runner import run_node, sensor_qos
from seem_ros.ros.parameters import ParameterError, ParameterSpec, declare_parameters
from seem_ros.speech.transcriber import (
    DEFAULT_INITIAL_PROMPT,
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
        DEFAULT_INITIAL_PROMPT,
        "Text that primes the recogniser: the style of a command and object names you expect; empty = none.",
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

    def transcriber(self) -> Transcriber:
        return Transcriber(
            model_dir=self.model_dir or None,
            language=self.language,
            beam_size=self.beam_size,
            initial_prompt=self.initial_prompt,
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
        self._worker: threading.Thread | None = None
        self._microphone_stream = None
        self.settings = declare_and_read(self)
        self._transcriber = self.settings.transcriber() if transcriber is None else transcriber
        self.get_logger().info(f"Whisper model: {self._transcriber.model_dir}")
        self._jobs: queue.Queue[SpeechJob | None] = queue.Queue(maxsize=self.settings.max_queued)
        self._audio_segmenter = self.settings.segmenter()
        self._microphone_segmenter = self.settings.segmenter()

        self._prompt_pub = self.create_publisher(String, "prompt", COMMAND_QOS)
        self.create_subscription(Int16MultiArray, "audio", self._on_audio, AUDIO_QOS)
        self.create_subscription(String, "speech_file", self._on_speech_file, COMMAND_QOS)
        self._wav_timer = self.create_timer(0.2, self._on_wav_timer) if self.settings.wav_file else None
        self._worker = threading.Thread(target=self._transcribe_jobs, name="whisper", daemon=True)
        self._worker.start()
        if self.settings.microphone:
            self._start_microphone()

    def destroy_node(self) -> None:
        if self._microphone_stream is not None:
            self._microphone_stream.close()
            self._microphone_stream = None
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
        """sounddevice callback (PortAudio thread): block is (frames, 1) float32."""
        for utterance in self._microphone_segmenter.push(block[:, 0].copy()):
            self._enqueue(SpeechJob(source="microphone", audio=utterance))

    def _transcribe_jobs(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if job.path is not None:
                    transcript = self._transcriber.transcribe_file(Path(job.path))
                else:
                    transcript = self._transcriber.transcribe(job.audio)
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
            return
        self.get_logger().info(f"heard {transcript.text!r} from {job.source} ({timing})")
        self._prompt_pub.publish(String(data=transcript.command))


def main(args: list[str] | None = None) -> int:
    """Console script `seem_speech_node`. Returns 0 after a clean shutdown, 2 for a bad parameter, 1 if the
    model cannot be loaded."""
    return run_node(NODE_NAME, SpeechNode, SingleThreadedExecutor, "the speech recogniser", args)


if __name__ == "__main__":
    raise SystemExit(main())
