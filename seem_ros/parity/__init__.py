"""Official-parity runner: reproduce every tensor of a reference set written by the official SEEM v1 code.

A reference set is a folder with `index.json` (model file, config yaml, images, cases and the kind of each
case), the model's merged official config (yaml), its weights (official key names), and one folder per case
holding `case.json` (the official call sequence, its inputs and scalar results) and `tensors.safetensors`
(inputs, intermediates and outputs of the official run). `run_parity` rebuilds the model from the yaml,
loads the weights strictly, replays every case through this package's own API and compares EVERY stored
tensor. A stored tensor that no check covers is reported as a failure, never skipped.

Inputs: a tensor the set stores is the input, used as stored. Where the case also describes how it was made
(an image file, prompt shapes drawn with OpenCV, a ground-truth polygon, a mask image file), the runner
re-derives it and reports the comparison as an informational cross-check row (`cross-check` tolerance,
always ok): a drawing library may move a boundary pixel between versions, which says nothing about the
model. Inputs that the official evaluation computes (the box click, the simulated user's corrective clicks,
padding) are reproduced and compared exactly, and the stored tensor is still what the next step receives.
A case may give an input only as a stored tensor; it is then reported as given.

Randomness: spatial flows draw random numbers inside the decoder. The runner seeds the default CPU generator
with the stored seed right before each decoder call (as the official recorder did) and passes no generator,
so the draws happen in the official order and are compared like any other tensor.

Tolerances (fp32, CPU; the reference README's suggestions, never loosened here):
- features, embeddings, probabilities and mask logits: |ours - official| <= 1e-4 + 1e-4 * |official|;
- tensors that carry the logit scale (class logits, grounding similarities, the scale itself): atol 1e-3;
- integer tensors, token ids, random draws, prompt masks: exact;
- thresholded masks and id maps: exact, except pixels whose deciding value is within 1e-5 of the threshold;
  the differing pixels are counted and each is checked against that margin;
- the selected spatial query: exact up to ties between duplicated spatial queries (copies of the same
  object query, identical in exact arithmetic);
- instances: compared as a set keyed by `instances_flat_index` (the official top-k order is unspecified).

Deliberate differences from the official code (each has a test in test/test_official_differences.py):
- The official `evaluate_referring_image` takes a mutable default `extra={}` and writes into it, so the
  prompt of one call leaks into later calls. Here every call is a pure function of its arguments.
- The official v1 referring-image stage 2 raises UnboundLocalError (`src_spatial_indices` is never set when
  reference tokens are given). Here the reference tokens carry their prompt index, so stage 2 works; the
  `refimg` case holds the official math with that two-line fix.
- The official loader skips missing, unexpected and mis-shaped checkpoint keys silently and loads with
  strict=False. Here loading is strict and every mismatch is named.
"""

from seem_ros.parity.report import CROSS_CHECK, TABLE_COLUMNS, ParityRow, format_table, rows_to_json, summary
from seem_ros.parity.runner import run_parity

__all__ = [
    "CROSS_CHECK",
    "TABLE_COLUMNS",
    "ParityRow",
    "format_table",
    "rows_to_json",
    "run_parity",
    "summary",
]
