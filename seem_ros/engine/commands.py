"""Operator commands: what a typed or spoken prompt asks for, and what applying it did. No ROS imports.

One grammar serves the `prompt` topic and speech (seem_speech_node publishes what it heard as text).
`parse_command(text)` turns a prompt into a `Command`; `apply_command(segmenter, command)` carries it out on
a `FrameSegmenter` and returns a `CommandOutcome`: a sentence saying what was understood (or why nothing
was done) and the track ids created and removed. Keywords are case-insensitive and punctuation around words
is ignored ("Find, the red ball." is "find the red ball").

    [please] find | segment | track | show [me] | highlight | ... <target> [please]   new text target
    <target>                                     (no verb) the same
    also <target>, <target> too                  adds a target (as above)
    only <target>, just <target>                 replaces every target by this one
    forget | drop | remove | stop tracking <target>         removes the target whose text names it
    forget number 3, forget #3, forget track three           removes track 3
    forget that, forget it, forget the last one  removes the newest target
    forget all the balls                         removes every target named "ball"
    clear, stop, reset, forget everything        removes every target
    look for a, b and c                          panoptic vocabulary a, b, c (one name: a text target)
    vocabulary: a, b; stuff: c                   vocabulary; names before ';' are things
    box: x0, y0, x1, y1                          box target, pixels, top-left and bottom-right corners
    in the <name> camera ..., on <name>: ..., on <name> find ..., ... in the <name> camera
                                                 addresses one camera (`Command.camera`)

Leading articles ("the", "a", "an") are dropped from a target; the rest of the referring expression is kept
whole ("find the cup left of the laptop" tracks "cup left of the laptop").
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from seem_ros.engine.api import FrameSegmenter, TrackLimitError, TrackSummary
from seem_ros.engine.prompts import TextPrompt
from seem_ros.engine.results import TrackEvent

MAX_PROMPT_CHARACTERS = 10_000
"""Longest prompt accepted (a vocabulary may be long; a text target is limited by TextPrompt to 1000)."""

Action = Literal["add", "replace", "forget", "forget_last", "clear", "vocabulary", "box"]

VERBS = (
    "find",
    "find me",
    "segment",
    "track",
    "show",
    "show me",
    "highlight",
    "locate",
    "detect",
    "mark",
    "select",
    "follow",
    "look at",
    "point at",
    "point to",
    "search for",
    "where is",
    "where's",
    "where are",
)
"""Words that start a new text target; the longest match wins ("show me" before "show")."""
FORGET_VERBS = ("forget", "drop", "remove", "delete", "untrack", "stop tracking", "stop following")
CLEAR_PHRASES = frozenset(
    {
        "clear",
        "clear all",
        "clear everything",
        "stop",
        "stop all",
        "stop everything",
        "stop tracking",
        "stop tracking everything",
        "reset",
        "reset all",
        "reset everything",
        "forget all",
        "forget everything",
        "forget all targets",
        "start over",
        "cancel",
    }
)
LAST_TARGET_WORDS = frozenset(
    {"that", "it", "this", "that one", "this one", "last", "last one", "the last one", "the last"}
)
ALSO_WORDS = ("also", "and", "plus")
TOO_WORDS = ("too", "as well", "also")
ONLY_WORDS = ("only", "just")
POLITE_OPENINGS = (
    "please",
    "kindly",
    "now",
    "ok",
    "okay",
    "could you",
    "can you",
    "would you",
    "will you",
    "i want you to",
    "i'd like you to",
)
POLITE_ENDINGS = ("please", "thanks", "thank you", "now", "for me")
ARTICLES = frozenset({"the", "a", "an"})
NUMBER_WORDS = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
CAMERA_WORDS = ("camera", "cam")
_COMMAND_OPENINGS = (*VERBS, *FORGET_VERBS, *ONLY_WORDS, "also", "look for", "clear", "stop", "reset")
_PUNCTUATION = '.,!?;:"()[]{}'
_TRACK_ID = re.compile(r"#?(\d{1,9})")
# Bidirectional overrides and isolates: they make a logged prompt read differently from what it is.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


SPOKEN_EXAMPLES = (
    "Find the red cup. Also the bottle. Only the chair. Forget number 2. Forget that. Clear. "
    "Look for cups, bottles and chairs."
)
"""Commands in the grammar's words, to prime a speech recogniser (see `speech_prompt`)."""
SPEECH_PROMPT_NAMES = 40
"""Most object names `speech_prompt` lists (Whisper reads at most 223 prompt tokens, the last ones)."""


def speech_prompt(vocabulary: Sequence[str], targets: Sequence[str]) -> str:
    """Text that primes a speech recogniser with the command words and the objects it will hear about: the
    texts of the tracked targets first, then vocabulary names, at most SPEECH_PROMPT_NAMES in all."""
    names = list(dict.fromkeys(name.strip() for name in (*targets, *vocabulary) if name.strip()))
    listed = names[:SPEECH_PROMPT_NAMES]
    return f"{SPOKEN_EXAMPLES} Objects: {', '.join(listed)}." if listed else SPOKEN_EXAMPLES


class CommandError(ValueError):
    """A prompt that cannot be carried out; the message says why, for the operator (and the log)."""


@dataclass(frozen=True)
class Command:
    """A parsed prompt.

    action: what to do (see the module docstring).
    text: add/replace: the referring expression to track; forget: the words that name the target(s).
    track_id: forget: the id named ("forget number 3"), 0 when the target is named by text.
    every_match: forget: remove all targets the text names ("forget all the balls"), not just one.
    names, thing_names: vocabulary: the class names, and the subset segmented as instances (empty = all).
    box: box: (x0, y0, x1, y1) pixels, top-left and bottom-right corners.
    camera: the camera the command addresses, normalised by `camera_key` ("" = not named).
    """

    action: Action
    text: str = ""
    track_id: int = 0
    every_match: bool = False
    names: tuple[str, ...] = ()
    thing_names: tuple[str, ...] = ()
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    camera: str = ""

    def describe(self) -> str:
        """For log lines: "add 'red ball'", "vocabulary cup, bottle (things: all)", "forget #3", ..."""
        if self.action == "vocabulary":
            return f"vocabulary {', '.join(self.names)} (things: {', '.join(self.thing_names) or 'all'})"
        if self.action == "box":
            return f"box {self.box}"
        if self.action == "forget":
            named = f"#{self.track_id}" if self.track_id else repr(self.text)
            return f"forget {'all ' if self.every_match else ''}{named}"
        if self.action in ("add", "replace"):
            return f"{self.action} {self.text!r}"
        return self.action.replace("_", " ")


@dataclass(frozen=True)
class CommandOutcome:
    """What applying a command did.

    accepted: False when the command was refused; nothing changed then.
    message: one sentence for the operator, to show or speak ("Tracking red ball as number 3.").
    created, removed: track ids the command created and removed.
    command: the parsed command; None when the prompt could not be parsed.
    camera: the camera the command went to (a name as given to `run_prompt`); "" when refused before.
    """

    accepted: bool
    message: str
    created: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()
    command: Command | None = None
    camera: str = ""


@dataclass(frozen=True)
class _Word:
    """A word of the prompt: `key` (lower case, punctuation stripped) for matching, `text` as written."""

    key: str
    text: str


def camera_key(name: str) -> str:
    """A camera name as commands compare it: lower case, '_' and '-' as spaces, a last word "camera" or
    "cam" dropped: "Front_Camera", "front camera" and "front" are all "front"."""
    words = re.sub(r"[_\-\s]+", " ", name.lower()).split()
    if len(words) > 1 and words[-1] in CAMERA_WORDS:
        words = words[:-1]
    return " ".join(words)


def resolve_camera(command: Command, cameras: Sequence[str]) -> str:
    """The name (as given in `cameras`) of the camera a command addresses; a command that names none goes to
    the first. Raises CommandError naming the cameras when the named one is not among them."""
    if not cameras:
        raise ValueError("resolve_camera needs at least one camera name")
    if not command.camera:
        return cameras[0]
    for name in cameras:
        if camera_key(name) == command.camera:
            return name
    named = [f"'{name}'" for name in cameras if name]
    served = f"the cameras here are {', '.join(named)}" if named else "this node's camera has no name"
    raise CommandError(f"there is no camera '{command.camera}'; {served}")


def parse_command(text: str) -> Command:
    """Parse a typed or spoken prompt (grammar in the module docstring).

    Raises CommandError for an empty prompt, one longer than MAX_PROMPT_CHARACTERS, one holding control,
    surrogate, bidirectional-override or replacement (U+FFFD, left by text that was not UTF-8) characters, a
    command verb without its object ("find", "forget"), and malformed vocabulary and box commands.
    """
    if not isinstance(text, str):
        raise CommandError(f"prompt must be a string, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise CommandError("empty prompt; say what to find, e.g. 'find the red cup', or 'clear'")
    if len(stripped) > MAX_PROMPT_CHARACTERS:
        raise CommandError(f"prompt has {len(stripped)} characters; the limit is {MAX_PROMPT_CHARACTERS}")
    _check_printable(stripped)
    keyword_command = _parse_keyword_command(stripped)
    if keyword_command is not None:
        return keyword_command
    words = [_Word(token.lower().strip(_PUNCTUATION), token) for token in stripped.split()]
    camera, words = _split_camera(words)
    command = _parse_words(words, stripped)
    return replace(command, camera=camera)


def _parse_keyword_command(text: str) -> Command | None:
    """ "vocabulary: ..." and "box: ..." (the typed forms); None for anything else."""
    keyword, _, rest = text.partition(":")
    keyword = keyword.strip().lower()
    if keyword == "vocabulary":
        things_part, _, stuff_part = rest.partition(";")
        things = _split_names(things_part)
        stuff_keyword, _, stuff_names = stuff_part.partition(":")
        if stuff_part.strip() and stuff_keyword.strip().lower() != "stuff":
            raise CommandError(f"expected '; stuff: a, b' after the thing names, got {stuff_part.strip()!r}")
        stuff = _split_names(stuff_names)
        if not things and not stuff:
            raise CommandError("vocabulary needs at least one name: 'vocabulary: cup, person; stuff: wall'")
        return Command("vocabulary", names=things + stuff, thing_names=things if stuff else ())
    if keyword == "box":
        try:
            x0, y0, x1, y1 = (float(value) for value in rest.replace(",", " ").split())
        except ValueError:
            raise CommandError(
                f"box needs four numbers 'box: x0, y0, x1, y1', got {rest.strip()!r}"
            ) from None
        if not all(math.isfinite(value) for value in (x0, y0, x1, y1)):
            raise CommandError(f"box corners must be finite numbers, got {(x0, y0, x1, y1)}")
        if x1 <= x0 or y1 <= y0:
            raise CommandError(f"box corners must be top-left then bottom-right, got {(x0, y0, x1, y1)}")
        return Command("box", box=(x0, y0, x1, y1))
    return None


def _parse_words(words: list[_Word], said: str) -> Command:
    words = _strip_politeness(words)
    keys = " ".join(word.key for word in words)
    if not keys:
        raise CommandError(f"{said!r} names nothing to do; say e.g. 'find the red cup'")
    if keys in CLEAR_PHRASES:
        return Command("clear")
    forget_verb = _starts_with(words, FORGET_VERBS)
    if forget_verb:
        return _parse_forget(words[forget_verb:], " ".join(word.text for word in words[:forget_verb]))
    if _starts_with(words, ("look for",)) == 2:
        names = _split_spoken_list(words[2:])
        if len(names) > 1:
            return Command("vocabulary", names=names)
        return _target("add", words[2:], "look for")
    action: Action = "add"
    modifier = ""
    if _starts_with(words, ONLY_WORDS):
        action, modifier, words = "replace", words[0].key, words[1:]
    elif _starts_with(words, ALSO_WORDS) and len(words) > 1:
        modifier, words = words[0].key, words[1:]
    verb = _starts_with(words, VERBS)
    spoken_verb = " ".join(word.key for word in words[:verb]) or modifier
    words = words[verb:]
    if _starts_with(words, ONLY_WORDS) and len(words) > 1:
        action, words = "replace", words[1:]
    too = _ends_with(words, TOO_WORDS)
    if too and len(words) > too:
        words = words[:-too]
    return _target(action, words, spoken_verb)


def _target(action: Action, words: list[_Word], verb: str) -> Command:
    """A text target from the words after the verb: leading articles dropped, the rest kept as written."""
    words = _strip_politeness(words)
    while words and words[0].key in ARTICLES:
        words = words[1:]
    text = " ".join(word.text for word in words).strip(_PUNCTUATION + " ")
    if not text:
        raise CommandError(f"{verb or 'find'} what? Say e.g. '{verb or 'find'} the red cup'")
    TextPrompt(text)  # the same checks (length, characters) as when the target is made
    return Command(action, text=text)


def _parse_forget(words: list[_Word], verb: str) -> Command:
    words = _strip_politeness(words)
    keys = " ".join(word.key for word in words)
    if not keys:
        raise CommandError(f"{verb} what? Say e.g. '{verb} the cup', '{verb} number 2' or '{verb} that'")
    if keys in LAST_TARGET_WORDS or keys in ("last target", "the last target"):
        return Command("forget_last")
    if keys in ("everything", "all", "all targets", "all the targets", "every target"):
        return Command("clear")
    track_id = _track_id(words)
    if track_id is not None:
        if track_id < 1:
            raise CommandError(f"there is no number {track_id}: track numbers start at 1")
        return Command("forget", track_id=track_id)
    every_match = words[0].key in ("all", "every", "each")
    if every_match:
        words = words[1:]
    while words and words[0].key in ARTICLES:
        words = words[1:]
    text = " ".join(word.text for word in words).strip(_PUNCTUATION + " ")
    if not text:
        raise CommandError(f"{verb} what? Say e.g. '{verb} the cup', '{verb} number 2' or '{verb} that'")
    return Command("forget", text=text, every_match=every_match)


def _track_id(words: list[_Word]) -> int | None:
    """3 from "number 3", "#3", "track three", "target number 3", "3"; None if the words are no id."""
    keys = [word.key for word in words]
    while keys and keys[0] in ("track", "target", "number", "no", "id", "object"):
        keys = keys[1:]
    if len(keys) != 1:
        return None
    if keys[0] in NUMBER_WORDS:
        return NUMBER_WORDS[keys[0]]
    match = _TRACK_ID.fullmatch(keys[0])
    return int(match.group(1)) if match else None


def _split_camera(words: list[_Word]) -> tuple[str, list[_Word]]:
    """(camera key, the other words) for "in the <name> camera ...", "on <name>: ...", "on <name> find ...",
    and "... in the <name> camera"; ("", words) when no camera is named. The name may be written as one
    word with the camera word ("in the front_camera find ...") or be the camera word alone ("in the camera
    find ...": the camera called camera, as a topic /camera/image_raw names it)."""
    if len(words) > 2 and words[0].key in ("in", "on", "from", "at", "with"):
        name_start = 2 if words[1].key == "the" else 1
        for end in range(name_start, min(name_start + 3, len(words) - 1)):
            if _names_camera(words[end]):
                return _camera_name(words[name_start : end + 1]), words[end + 1 :]
        if words[0].key == "on" and words[1].key not in ARTICLES:
            for end in range(2, min(5, len(words))):
                named = words[1:end]
                separated = named[-1].text.endswith((",", ":"))
                if separated or _starts_with(words[end:], _COMMAND_OPENINGS):
                    return _camera_name(named), words[end:]
    if len(words) > 3 and _names_camera(words[-1]):
        for start in range(len(words) - 2, max(len(words) - 6, 0), -1):
            if words[start].key in ("in", "on", "from") and start > 0:
                named = words[start + 1 :]
                if named[0].key == "the":
                    named = named[1:]
                return _camera_name(named), words[:start]
    return "", words


def _names_camera(word: _Word) -> bool:
    """Whether a word is a camera word, alone ("camera") or ending a name written as one word
    ("front_camera", "wrist-cam")."""
    return re.split(r"[_\-]", word.key)[-1] in CAMERA_WORDS


def _camera_name(words: list[_Word]) -> str:
    return camera_key(" ".join(word.key for word in words))


def _starts_with(words: list[_Word], phrases: Sequence[str]) -> int:
    """How many words the longest of `phrases` that `words` starts with has; 0 if none."""
    keys = [word.key for word in words]
    best = 0
    for phrase in phrases:
        phrase_words = phrase.split()
        if len(phrase_words) > best and keys[: len(phrase_words)] == phrase_words:
            best = len(phrase_words)
    return best


def _ends_with(words: list[_Word], phrases: Sequence[str]) -> int:
    """How many words the longest of `phrases` that `words` ends with has; 0 if none."""
    keys = [word.key for word in words]
    best = 0
    for phrase in phrases:
        phrase_words = phrase.split()
        if len(phrase_words) > best and keys[-len(phrase_words) :] == phrase_words:
            best = len(phrase_words)
    return best


def _strip_politeness(words: list[_Word]) -> list[_Word]:
    words = [word for word in words if word.key]
    while opening := _starts_with(words, POLITE_OPENINGS):
        words = words[opening:]
    while ending := _ends_with(words, POLITE_ENDINGS):
        words = words[:-ending]
    return words


def _split_spoken_list(words: list[_Word]) -> tuple[str, ...]:
    """ "a cup, the bottle and chairs" -> ("cup", "bottle", "chairs")."""
    names: list[list[_Word]] = [[]]
    for word in words:
        if word.key in ("and", "or", "&"):
            names.append([])
            continue
        names[-1].append(word)
        if word.text.endswith((",", ";")):
            names.append([])
    cleaned = []
    for name in names:
        while name and name[0].key in ARTICLES:
            name = name[1:]
        text = " ".join(word.text for word in name).strip(_PUNCTUATION + " ")
        if text:
            cleaned.append(text)
    return tuple(cleaned)


def _split_names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _check_printable(text: str) -> None:
    for position, character in enumerate(text):
        if character == "\ufffd":
            raise CommandError(
                f"prompt holds U+FFFD at position {position}: the text sent was not valid UTF-8"
            )
        if unicodedata.category(character) in ("Cc", "Cs") or character in _BIDI_CONTROLS:
            raise CommandError(
                f"prompt holds the control character U+{ord(character):04X} at position {position}; "
                "send printable text on one line"
            )


def run_prompt(text: str, segmenters: Mapping[str, FrameSegmenter]) -> CommandOutcome:
    """Parse a prompt, find the camera it addresses among `segmenters` (camera name -> its segmenter; a
    prompt naming no camera goes to the first) and apply it there. Never raises for bad input: a prompt that
    cannot be parsed or carried out gives a refusal whose message says why, and nothing changes."""
    command = None
    try:
        command = parse_command(text)
        camera = resolve_camera(command, tuple(segmenters))
    except ValueError as error:
        return CommandOutcome(False, as_sentence(str(error)), command=command)
    return replace(apply_command(segmenters[camera], command), camera=camera)


def apply_command(segmenter: FrameSegmenter, command: Command) -> CommandOutcome:
    """Carry out a command on a segmenter (its camera is the caller's business: see `resolve_camera`).

    A command that cannot be carried out (a forget that names no existing target, an id that does not
    exist, a text the segmenter refuses, too many targets) returns a refusal and changes nothing.
    """
    try:
        if command.action in ("add", "replace"):
            outcome = _track_text(segmenter, command)
        elif command.action == "box":
            track_id = segmenter.add_box(*command.box)
            outcome = CommandOutcome(True, f"Tracking the box as number {track_id}.", created=(track_id,))
        elif command.action == "vocabulary":
            segmenter.set_vocabulary(command.names, command.thing_names)
            outcome = CommandOutcome(True, f"Looking for {_spoken_list(command.names)}.")
        elif command.action == "clear":
            removed = tuple(track.track_id for track in segmenter.tracks())
            segmenter.clear_prompts()
            message = "Forgot every target." if removed else "There was nothing to forget."
            outcome = CommandOutcome(True, message, removed=removed)
        else:
            outcome = _forget(segmenter, _chosen_tracks(segmenter.tracks(), command))
        return replace(outcome, command=command)
    except ValueError as error:
        return CommandOutcome(False, as_sentence(str(error)), command=command)


def _track_text(segmenter: FrameSegmenter, command: Command) -> CommandOutcome:
    """add: a new text target; replace: the new target, then every older one removed. When the tracks are
    full the oldest one makes room first (the text has been checked by then, so the new one fits)."""
    older = [track.track_id for track in segmenter.tracks()]
    try:
        track_id = segmenter.set_text_prompt(command.text)
    except TrackLimitError:
        if command.action != "replace" or not older:
            raise
        segmenter.remove_track(older[0])
        track_id = segmenter.set_text_prompt(command.text)
    removed: tuple[int, ...] = ()
    if command.action == "replace":
        for old_id in older:
            if any(track.track_id == old_id for track in segmenter.tracks()):
                segmenter.remove_track(old_id)
        removed = tuple(older)
    message = f"Tracking {command.text} as number {track_id}."
    if removed:
        message = f"Tracking only {command.text}, as number {track_id}."
    return CommandOutcome(True, message, created=(track_id,), removed=removed)


def _forget(segmenter: FrameSegmenter, chosen: list[TrackSummary]) -> CommandOutcome:
    for track in chosen:
        segmenter.remove_track(track.track_id)
    described = _spoken_list(tuple(_spoken_track(track) for track in chosen))
    return CommandOutcome(True, f"Forgot {described}.", removed=tuple(track.track_id for track in chosen))


def _chosen_tracks(tracks: Sequence[TrackSummary], command: Command) -> list[TrackSummary]:
    """The tracks a forget command names; raises CommandError saying what exists when none (or several,
    for a singular name) match."""
    if not tracks:
        raise CommandError("there is nothing to forget: no target is tracked")
    if command.action == "forget_last":
        return [max(tracks, key=lambda track: track.track_id)]
    existing = _spoken_list(tuple(_spoken_track(track) for track in tracks))
    if command.track_id:
        chosen = [track for track in tracks if track.track_id == command.track_id]
        if not chosen:
            raise CommandError(f"there is no number {command.track_id}; the targets are {existing}")
        return chosen
    wanted = _content_words(command.text)
    exact = [track for track in tracks if _content_words(_track_name(track)) == wanted]
    matching = exact or [track for track in tracks if wanted <= _content_words(_track_name(track))]
    if not matching:
        raise CommandError(f"no target is called {command.text}; the targets are {existing}")
    if len(matching) > 1 and not command.every_match:
        choices = _spoken_list(tuple(_spoken_track(track) for track in matching), "or")
        raise CommandError(f"which {command.text}: {choices}? Say the number")
    return matching


def _track_name(track: TrackSummary) -> str:
    return track.text or track.kind


def _spoken_track(track: TrackSummary) -> str:
    return f"{_track_name(track)} (number {track.track_id})"


def dropped_tracks_outcome(events: Sequence[TrackEvent], camera: str) -> CommandOutcome | None:
    """What the operator is told when the tracker itself drops targets on a frame (lost for too long, or
    their prompts outside the images): None when it dropped none."""
    dropped = [event for event in events if event.event == "dropped"]
    if not dropped:
        return None
    sentences = [
        as_sentence(f"stopped tracking {event.name} (number {event.track_id}): {event.detail}")
        for event in dropped
    ]
    return CommandOutcome(
        True, " ".join(sentences), removed=tuple(event.track_id for event in dropped), camera=camera
    )


def _content_words(text: str) -> frozenset[str]:
    """The words of a name as forget compares them: lower case, no articles, singular ("the Balls" ->
    {"ball"})."""
    words = (word.strip(_PUNCTUATION) for word in text.lower().split())
    return frozenset(_singular(word) for word in words if word and word not in ARTICLES)


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us")):
        return word[:-1]
    return word


def _spoken_list(items: Sequence[str], conjunction: str = "and") -> str:
    """ "a", "a and b", "a, b and c"."""
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def as_sentence(reason: str) -> str:
    """An error message as a sentence for the operator: capital first letter, final full stop."""
    reason = reason.strip()
    if not reason:
        return "That was refused."
    return reason[0].upper() + reason[1:] + ("" if reason.endswith((".", "?", "!")) else ".")
