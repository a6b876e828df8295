"""How closely the onnx backend's answers match PyTorch eager fp32 on a full-size model and a real photo.

    python -m bench.agreement                          # focalt_v1, random weights (seed 0)
    python -m bench.agreement --preset samvitb_v1 --json agreement.json

Both predictors share one model (seeded random weights) and vocabulary; the onnx one runs the exported
image encoder and decoder graphs (exported into `--cache-dir` on first use), as `backend: onnx` does.
On scikit-image's "coffee" photo it compares a click target and a text target (mask IoU, largest mask
logit difference against the largest logit) and the generic pass (share of pixels with the same
semantic class, segment counts). Prints a table; with --json also writes the rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from seem_ros.cache import default_cache_dir

    parser = argparse.ArgumentParser(prog="python -m bench.agreement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="focalt_v1")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--short-side", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of torch and ONNX Runtime")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir() / "bench")
    parser.add_argument("--json", type=Path, help="write the rows here")
    return parser.parse_args(argv)


def compare(args: argparse.Namespace) -> list[dict]:
    """The agreement rows: one per click / text target, one for the generic pass."""
    import skimage.data

    from seem_ros.engine.onnx_backend import exported_onnx_image_encoder
    from seem_ros.engine.onnx_decoder import OnnxDecoder
    from seem_ros.engine.predictor import PanopticSettings, SeemPredictor
    from seem_ros.engine.prompts import ClickPrompt, Target, TextPrompt
    from seem_ros.engine.vocabulary_cache import Vocabulary
    from seem_ros.model.presets import build_preset, randomize_weights
    from seem_ros.model.tokenizer import ClipTokenizer

    torch.set_num_threads(args.threads)
    model = randomize_weights(build_preset(args.preset), seed=args.seed).eval()
    tokenizer = ClipTokenizer(cache_dir=args.cache_dir / "tokenizer")
    model.language_encoder.tokenizer = tokenizer
    vocabulary = Vocabulary.from_names(
        ("cup", "saucer", "spoon", "table", "coffee"), ("cup", "saucer", "spoon")
    )
    # low thresholds, so that random weights still give segments to compare
    settings = PanopticSettings(object_mask_threshold=0.0, overlap_threshold=0.5)
    onnx_dir = args.cache_dir / "onnx"
    backends = {
        "torch": {},
        "onnx": {
            "image_encoder": exported_onnx_image_encoder(
                model, args.preset, cache_dir=onnx_dir, num_threads=args.threads
            )(),
            "decoder_backend": OnnxDecoder(model, args.preset, cache_dir=onnx_dir, num_threads=args.threads),
        },
    }
    rgb = skimage.data.coffee()
    height, width = rgb.shape[:2]
    targets = {
        "click": Target(visual=(ClickPrompt(width / 2, height / 2),)),
        "text": Target(text=TextPrompt("the white cup")),
    }
    predictions = {}
    for name, hooks in backends.items():
        predictor = SeemPredictor(
            model, tokenizer, vocabulary, short_side=args.short_side, panoptic=settings, **hooks
        )
        predictor.set_image(rgb)
        predictions[name] = predictor.predict(list(targets.values()), generic=True)
    reference, fast = predictions["torch"], predictions["onnx"]
    rows = []
    for index, kind in enumerate(targets):
        want, got = reference.targets[index], fast.targets[index]
        union = np.logical_or(want.mask, got.mask).sum()
        want_logits, got_logits = np.asarray(want.mask_logits), np.asarray(got.mask_logits)
        rows.append(
            {
                "preset": args.preset,
                "what": f"{kind} target",
                "mask_iou": float(np.logical_and(want.mask, got.mask).sum() / max(union, 1)),
                "mask_pixels": [int(want.mask.sum()), int(got.mask.sum())],
                "max_logit_diff": float(np.abs(want_logits - got_logits).max()),
                "max_abs_logit": float(np.abs(want_logits).max()),
            }
        )
    rows.append(
        {
            "preset": args.preset,
            "what": "generic semantic map",
            "equal_pixels": float(np.mean(reference.generic.semantic == fast.generic.semantic)),
            "segments": [len(reference.generic.segments), len(fast.generic.segments)],
        }
    )
    return rows


def _cell(row: dict, key: str) -> str:
    return f"{row[key]:.5g}" if key in row else "-"


def table(rows: list[dict]) -> str:
    lines = [
        "| preset | what | mask IoU | pixels torch / onnx | max logit diff | max abs logit | equal pixels |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        pixels = row.get("mask_pixels") or row.get("segments")
        cells = [row["preset"], row["what"], _cell(row, "mask_iou"), f"{pixels[0]} / {pixels[1]}"]
        cells += [_cell(row, "max_logit_diff"), _cell(row, "max_abs_logit"), _cell(row, "equal_pixels")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = compare(args)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
