"""The `seem-ros` command line.

Subcommands:
- `seem-ros parity DIR [--json OUT]`: compare this package with a reference set written by the official SEEM
  v1 code (see `seem_ros.parity`); prints one row per tensor and exits 1 if any is out of tolerance.
- `seem-ros convert SRC DST.safetensors`: rewrite a `.pt`/`.pth` checkpoint as safetensors, without running
  any pickled code.
- `seem-ros segment IMAGE [--text T] [--point X,Y[,neg]] [--box X0,Y0,X1,Y1] [--scribble X,Y;X,Y]
  [--vocab a,b,c] [--checkpoint CKPT | --random-weights] --out OUT.png [--json [OUT.json]]`: segment one
  image by its prompts (everything over the vocabulary when there is none).
- `seem-ros track VIDEO|DIR [prompts as for segment] --out OUT.mp4|DIR [--json OUT.json]`: track the
  prompted targets through a video or an image folder with SEEM's memory prompts.
- `seem-ros serve [--preset P] [--replicas N] [--host H --token-file F] ...`: serve the model to nodes with
  `backend: remote` as a Ray Serve application (see `seem_ros.remote`).

Each subcommand is one `_add_<name>` function that declares its arguments and its handler; `SUBCOMMANDS`
registers them. A handler takes the parsed arguments and returns the exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from safetensors import SafetensorError

from seem_ros.allocator import share_main_heap
from seem_ros.model.checkpoint import CheckpointError

EXIT_OK = 0
EXIT_FAILURE = 1


def _run_parity_command(args: argparse.Namespace) -> int:
    from seem_ros.parity import format_table, rows_to_json, run_parity

    directory = Path(args.directory)
    if not (directory / "index.json").is_file():
        print(f"error: {directory} has no index.json; give a reference set folder", file=sys.stderr)
        return EXIT_FAILURE
    try:
        rows = run_parity(directory)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyError as error:
        print(f"error: the reference set {directory} lacks the entry {error}", file=sys.stderr)
        return EXIT_FAILURE
    except (OSError, ValueError, SafetensorError) as error:  # a missing, malformed or truncated file
        print(f"error: the reference set {directory} cannot be read: {error}", file=sys.stderr)
        return EXIT_FAILURE
    print(format_table(rows))
    if args.json is not None and _write_json(Path(args.json), rows_to_json(rows)) != EXIT_OK:
        return EXIT_FAILURE
    return EXIT_OK if rows and all(row.ok for row in rows) else EXIT_FAILURE


def _write_json(path: Path, payload: object) -> int:
    """Write a command's JSON output; EXIT_FAILURE, with the reason on stderr, when it cannot be written."""
    from seem_ros.engine.offline import write_json

    try:
        write_json(path, payload)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _add_parity(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "parity",
        help="compare with the official SEEM outputs of a reference set",
        description="Rebuild the reference set's model, replay every case and compare every stored tensor "
        "with the official tolerances. Exit status 1 if any tensor is out of tolerance or unchecked.",
    )
    parser.add_argument("directory", help="reference set folder (holds index.json)")
    parser.add_argument("--json", metavar="OUT", help="also write the rows as JSON to this file")
    parser.set_defaults(handler=_run_parity_command)


def _run_convert_command(args: argparse.Namespace) -> int:
    from seem_ros.model.checkpoint import convert_to_safetensors

    destination = Path(args.destination)
    if destination.suffix != ".safetensors":
        print(f"error: the output must end in .safetensors, got {destination.name}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        count = convert_to_safetensors(args.source, destination)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"wrote {count} tensors to {destination}")
    return EXIT_OK


def _add_convert(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="rewrite a checkpoint as safetensors",
        description="Read a .pt/.pth (tensors only, no pickled code is run) or .safetensors checkpoint and "
        "write its tensors, with the same keys, as a .safetensors file.",
    )
    parser.add_argument("source", help="checkpoint to read (.pt, .pth or .safetensors)")
    parser.add_argument("destination", help="file to write (.safetensors)")
    parser.set_defaults(handler=_run_convert_command)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="focalt_v1", help="model preset (default focalt_v1)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", default="", help="SEEM v1 checkpoint (.pt or .safetensors)")
    weights.add_argument(
        "--random-weights",
        action="store_true",
        help="seeded random weights: runs the pipeline, meaningless masks",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--short-side", type=int, default=512, help="model input shorter side, pixels")
    parser.add_argument("--vocab", help="comma-separated class names (default: COCO panoptic)")
    parser.add_argument("--threshold", type=float, default=0.8, help="panoptic class-probability threshold")


def _add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", action="append", default=[], help="referring text; repeat for more targets")
    parser.add_argument("--point", action="append", default=[], help="click X,Y or X,Y,neg (repeatable)")
    parser.add_argument("--box", action="append", default=[], help="box X0,Y0,X1,Y1 (repeatable)")
    parser.add_argument("--scribble", action="append", default=[], help="polyline X,Y;X,Y;... (repeatable)")


def _prompt_spec(args: argparse.Namespace):  # noqa: ANN202 - PromptSpec, imported lazily
    from seem_ros.engine.offline import PromptSpec, parse_box, parse_point, parse_scribble

    return PromptSpec(
        texts=list(args.text),
        clicks=[parse_point(text) for text in args.point],
        boxes=[parse_box(text) for text in args.box],
        scribbles=[parse_scribble(text) for text in args.scribble],
    )


def _segmenter_config(args: argparse.Namespace, panoptic: bool):  # noqa: ANN202 - SegmenterConfig, lazily
    """The segmenter the arguments ask for; panoptic: also segment over the vocabulary (else only targets)."""
    from seem_ros.engine.api import SegmenterConfig
    from seem_ros.engine.offline import vocabulary_from_argument

    return SegmenterConfig(
        preset=args.preset,
        checkpoint=args.checkpoint,
        device=args.device,
        random_weights=args.random_weights,
        vocabulary=tuple(vocabulary_from_argument(args.vocab)),
        score_threshold=args.threshold,
        short_side=args.short_side,
        panoptic=panoptic,
    )


def _json_path(args: argparse.Namespace) -> Path | None:
    if args.json is None:
        return None
    return Path(args.out).with_suffix(".json") if args.json == "" else Path(args.json)


def _run_segment_command(args: argparse.Namespace) -> int:
    from seem_ros.engine.offline import instance_record, read_rgb, write_rgb
    from seem_ros.engine.segmenter import build_segmenter
    from seem_ros.engine.visualize import render_overlay

    try:
        spec = _prompt_spec(args)
        targets = spec.targets()
        rgb = read_rgb(args.image)
        segmenter = build_segmenter(_segmenter_config(args, panoptic=not targets))
        segmenter.expect_image_size(*rgb.shape[:2])
        for target in targets:
            segmenter.add_target(target)
        result = segmenter.process(rgb)
        write_rgb(args.out, render_overlay(rgb, result.instances))
    except (ValueError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    records = [instance_record(instance) for instance in result.instances]
    weights = "RANDOM WEIGHTS (meaningless masks)" if args.random_weights else segmenter.describe()["weights"]
    total = sum(result.timings.values())
    print(f"{args.image}: {len(records)} masks in {total:.2f} s ({weights}); overlay {args.out}")
    for record in records:
        print(
            f"  #{record['id']} {record['label']} score {record['score']:.2f} bbox {record['bbox']} "
            f"area {record['area']} ({record['prompt']})"
        )
    json_path = _json_path(args)
    if json_path is None:
        return EXIT_OK
    return _write_json(json_path, {"image": str(args.image), "weights": weights, "masks": records})


def _add_segment(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment one image by text, clicks, boxes or scribbles",
        description="Segment IMAGE. Each --text is one target; clicks, boxes and scribbles form one more "
        "target (joined with the text when exactly one --text is given). With no prompt, the image is "
        "segmented panoptically over the vocabulary.",
    )
    parser.add_argument("image", help="image file")
    _add_prompt_arguments(parser)
    _add_model_arguments(parser)
    parser.add_argument("--out", required=True, help="annotated image to write (.png)")
    parser.add_argument("--json", nargs="?", const="", help="also write the masks as JSON (default OUT.json)")
    parser.set_defaults(handler=_run_segment_command)


def _run_track_command(args: argparse.Namespace) -> int:
    from seem_ros.engine.offline import FrameWriter, frames_of, instance_record
    from seem_ros.engine.segmenter import build_segmenter
    from seem_ros.engine.visualize import render_overlay

    try:
        targets = _prompt_spec(args).targets()
        if not targets:
            raise ValueError("give at least one --text, --point, --box or --scribble to track")
        segmenter = build_segmenter(_segmenter_config(args, panoptic=False))
        writer = FrameWriter(args.out, fps=args.fps)
        frames = []
        try:
            for index, rgb in enumerate(frames_of(args.source, args.max_frames, args.stride)):
                if index == 0:  # the prompts are the first frame's: checked against its size
                    segmenter.expect_image_size(*rgb.shape[:2])
                    for target in targets:
                        segmenter.add_target(target)
                result = segmenter.process(rgb)
                writer.write(render_overlay(rgb, result.instances))
                tracks = [instance_record(instance) for instance in result.instances if instance.track_id]
                frames.append({"frame": index, "tracks": tracks})
                summary = ", ".join(f"#{t['track_id']} {t['label']} {t['score']:.2f}" for t in tracks) or "-"
                print(f"frame {index:4d} {sum(result.timings.values()):6.2f} s  {summary}")
        finally:
            writer.close()
    except (ValueError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if not frames:
        print(f"error: no frames could be read from {args.source}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{len(frames)} frames tracked; annotated output {args.out}")
    json_path = _json_path(args)
    if json_path is None:
        return EXIT_OK
    return _write_json(json_path, {"source": str(args.source), "frames": frames})


def _add_track(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "track",
        help="track prompted targets through a video or an image folder",
        description="Prompts apply to the first frame; each target keeps a stable track id while SEEM's "
        "memory prompt follows it from frame to frame.",
    )
    parser.add_argument("source", help="video file or folder of images (sorted by name)")
    _add_prompt_arguments(parser)
    _add_model_arguments(parser)
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--stride", type=int, default=1, help="use every Nth frame")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate of a written video")
    parser.add_argument("--out", required=True, help="annotated video (.mp4/.avi) or folder for PNG frames")
    parser.add_argument("--json", nargs="?", const="", help="also write the tracks per frame as JSON")
    parser.set_defaults(handler=_run_track_command)


def _run_serve_command(args: argparse.Namespace) -> int:
    from seem_ros.remote.server import run

    try:
        return run(args)
    except (ValueError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE


def _add_serve(subparsers: argparse._SubParsersAction) -> None:
    from seem_ros.remote.server import add_arguments

    parser = subparsers.add_parser(
        "serve",
        help="serve the model to remote nodes on Ray Serve",
        description="Start (or join with --address) a Ray cluster and deploy SEEM as a Ray Serve application "
        "that seem_node instances with backend 'remote' send their frames to.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=_run_serve_command)


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_parity,
    _add_convert,
    _add_segment,
    _add_track,
    _add_serve,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seem-ros", description="SEEM v1 tools for seem_ros.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `seem-ros` and `python -m seem_ros.cli`. Returns the exit status."""
    args = build_parser().parse_args(argv)
    share_main_heap()
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
