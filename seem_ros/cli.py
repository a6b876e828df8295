"""The `seem-ros` command line.

Subcommands:
- `seem-ros parity DIR [--json OUT]`: compare this package with a reference set written by the official SEEM
  v1 code (see `seem_ros.parity`); prints one row per tensor and exits 1 if any is out of tolerance.
- `seem-ros convert SRC DST.safetensors`: rewrite a `.pt`/`.pth` checkpoint as safetensors, without running
  any pickled code.

Each subcommand is one `_add_<name>` function that declares its arguments and its handler; `SUBCOMMANDS`
registers them. A handler takes the parsed arguments and returns the exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

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
    print(format_table(rows))
    if args.json is not None:
        Path(args.json).write_text(json.dumps(rows_to_json(rows), indent=1) + "\n", encoding="utf-8")
    return EXIT_OK if rows and all(row.ok for row in rows) else EXIT_FAILURE


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


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_parity, _add_convert)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seem-ros", description="SEEM v1 tools for seem_ros.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `seem-ros` and `python -m seem_ros.cli`. Returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
