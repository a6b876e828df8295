"""The official v1 evaluation's clicks, reproduced for the parity runner: one pixel at the maximum of a
convolutional distance transform of a region (a box, the ground truth, or an error region of the simulated
user), dilated by a 3x3 ones kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def convolutional_distance_transform(image: Tensor, kernel_size: int = 3, h: float = 0.35) -> Tensor:
    """Approximate distance of every pixel to the nearest non-zero pixel, by cascaded convolutions.

    The method of Pham et al. 2021 as kornia 0.7.0 implements it (kornia.contrib.distance_transform, the
    version the official code pins): replicate-padded exp(-d/h) convolutions, one ring per iteration, with
    that version's offset i * kernel_size // 2. Reproduced operation by operation so that the float values,
    and hence the argmax ties, match.

    image: (B, C, H, W) float, non-zero = source. Returns (B, C, H, W) float, 0 on the sources.
    """
    if image.dim() != 4:
        raise ValueError(f"image must be (B, C, H, W), got {tuple(image.shape)}")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    batch, channels, height, width = image.shape
    radius = kernel_size // 2
    n_iters = math.ceil(max(height, width) / radius)
    offsets = torch.arange(kernel_size, device=image.device, dtype=image.dtype) - radius
    grid_y, grid_x = torch.meshgrid(offsets, offsets, indexing="ij")
    kernel = torch.exp(torch.hypot(grid_x, grid_y) / -h)[None, None]

    distance = torch.zeros_like(image)
    boundary = image.clone()
    for i in range(n_iters):
        padded = F.pad(boundary.reshape(batch * channels, 1, height, width), (radius,) * 4, mode="replicate")
        soft_min = F.conv2d(padded, kernel).reshape(batch, channels, height, width)
        soft_min = torch.nan_to_num(-h * torch.log(soft_min), posinf=0.0)
        reached = torch.where(soft_min > 0, 1.0, 0.0)
        if reached.sum() == 0:
            break
        distance += (i * kernel_size // 2 + soft_min) * reached
        boundary = torch.where(reached == 1, torch.ones_like(boundary), boundary)
    return distance


def dilate_clicks(points: Tensor, kernel_size: int = 3) -> Tensor:
    """Grow single-pixel clicks into kernel_size x kernel_size squares. points: (n, h, w) bool -> same."""
    ones = torch.ones((1, 1, kernel_size, kernel_size), dtype=torch.float32, device=points.device)
    grown = F.conv2d(points[:, None].float(), ones, padding=kernel_size // 2)
    return grown[:, 0] > 0


def region_click(regions: Tensor, dilation: int = 3) -> Tensor:
    """The official evaluation click inside each region (SimpleClickSampler / prepare_next_spaital_mask).

    The click is the pixel farthest from the region border: the argmax (first in row-major order) of the
    distance transform of the region's complement, with a one-pixel non-region frame around the image,
    grown to a dilation x dilation square. An empty region gives the click at pixel (0, 0).

    regions: (n, h, w) bool. Returns (n, h, w) bool with dilation**2 pixels per click (fewer at borders).
    """
    count, height, width = regions.shape
    outside = ~F.pad(regions[None], (1, 1, 1, 1), value=False)
    distance = convolutional_distance_transform(outside.float())[0, :, 1:-1, 1:-1].reshape(count, -1)
    best = distance.max(dim=-1)[1]
    points = torch.zeros((count, height * width), dtype=torch.bool, device=regions.device)
    points[torch.arange(count, device=regions.device), best] = True
    return dilate_clicks(points.reshape(count, height, width), dilation)


def box_region(
    box_xyxy: Sequence[float], image_size: tuple[int, int], object_mask: Tensor | None = None
) -> Tensor:
    """The official evaluation box prompt region: the box, truncated to integers, filled into the object mask.

    box_xyxy: (x1, y1, x2, y2) at the model input size; rows y1..y2-1 and columns x1..x2-1 are filled.
    object_mask: optional (h, w) bool ground-truth mask the box is OR-ed into. Returns (h, w) bool.
    The official box click is region_click(box_region(...)[None]).
    """
    region = torch.zeros(image_size, dtype=torch.bool) if object_mask is None else object_mask.bool().clone()
    x1, y1, x2, y2 = (int(value) for value in box_xyxy)
    region[y1:y2, x1:x2] = True
    return region


@dataclass
class CorrectiveClick:
    """Prompt masks after a simulated corrective click.

    pos_mask, neg_mask: (n, H', W') bool, the previous masks OR-ed with the new click.
    is_positive: (n,) bool, whether the click went to the positive mask. iou: (n,) float of the previous
    prediction against the ground truth at the padded size.
    """

    pos_mask: Tensor
    neg_mask: Tensor
    is_positive: Tensor
    iou: Tensor


def corrective_click(
    gt_masks: Tensor,
    prev_mask_logits: Tensor,
    pos_mask: Tensor,
    neg_mask: Tensor,
    stop_iou: float = 0.925,
    dilation: int = 3,
) -> CorrectiveClick:
    """The official simulated user of v1's multi-round evaluation (prepare_next_spaital_mask, mode 'best').

    The prediction is sigmoid(bilinear(prev_mask)) > 0.5 at the padded size. Pixels already clicked are
    excluded from both error regions. If there are more false-negative than false-positive pixels, a
    positive click goes to the false negatives, otherwise a negative click to the false positives (note:
    the padding counts, as in the official code). No click is added to a prompt whose IoU is >= stop_iou.

    gt_masks: (n, H', W') bool ground truth, padded with False. prev_mask_logits: (n, H'/4, W'/4) float.
    pos_mask, neg_mask: (n, H', W') bool prompt masks of the previous round.
    """
    pred = F.interpolate(
        prev_mask_logits[None], size=gt_masks.shape[-2:], mode="bilinear", align_corners=False
    )
    pred = pred[0].sigmoid() > 0.5
    clicked = pos_mask | neg_mask
    false_negative = gt_masks & ~pred & ~clicked
    false_positive = ~gt_masks & pred & ~clicked
    iou = (gt_masks & pred).flatten(1).sum(1) / ((gt_masks | pred).flatten(1).sum(1) + 1e-8)
    is_positive = false_negative.flatten(1).sum(1) > false_positive.flatten(1).sum(1)
    error_region = torch.where(is_positive[:, None, None], false_negative, false_positive)
    click = region_click(error_region, dilation) & (iou < stop_iou)[:, None, None]
    return CorrectiveClick(
        pos_mask=pos_mask | (click & is_positive[:, None, None]),
        neg_mask=neg_mask | (click & ~is_positive[:, None, None]),
        is_positive=is_positive,
        iou=iou,
    )
