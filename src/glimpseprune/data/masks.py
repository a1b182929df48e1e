"""Box → visual-token masks (docs/method.md §11.3). Qwen's dynamic grid lives with its adapter
(``adapters.qwen2_5_vl.qwen_token_grid`` / ``qwen_box_mask``); the generic rasterisation and LLaVA's letterbox are here.

Every mask is a flat numpy ``bool`` array of length ``h * w`` in raster order (row by row), the order of the
VIP output. Boxes come in as pixel boxes ``[x1, y1, x2, y2]`` of the *original* image (or, for
:func:`boxes_to_grid_mask`, already normalised to [0, 1]).

The rasterisation rule, for a merged token grid ``h × w`` and a normalised box:

- columns ``floor(x1·w) .. min(floor(x2·w), w−1)``, inclusive;
- rows ``floor(y1·h) .. min(floor(y2·h), h−1)``, inclusive;
- several boxes are OR-ed.

Coordinates are clamped to [0, 1] first (the reference does not clamp, docs/method.md §18 row 10).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "QWEN_MAX_PIXELS",
    "QWEN_MIN_PIXELS",
    "boxes_to_grid_mask",
    "llava_box_mask",
    "mask_metrics",
    "normalize_boxes",
]

# The released Qwen2.5-VL checkpoints ship ``min_pixels`` 56·56 and ``max_pixels`` 16,384·28² (up to 16,384
# merged visual tokens); the reference trains and evaluates Visual-CoT with these (docs/method.md §11.2, §14.1). Note that the
# transformers class default for ``max_pixels`` is smaller (1,280·28²); pass it explicitly to mimic that one.
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 16384 * 28 * 28


def _as_box_array(boxes) -> np.ndarray:
    """``[n, 4]`` float64 array from a list of boxes, one flat box, or an empty list."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 1 and arr.size in (0, 4):
        arr = arr.reshape(-1, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape [n, 4] (or be one box of 4 numbers), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("boxes contain NaN or infinite coordinates")
    return arr


def normalize_boxes(boxes_px, width: float, height: float) -> np.ndarray:
    """Pixel boxes ``[x1, y1, x2, y2]`` → ``[n, 4]`` boxes normalised by ``width`` and ``height`` (not clamped)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}×{height}")
    return _as_box_array(boxes_px) / np.array([width, height, width, height], dtype=np.float64)


def boxes_to_grid_mask(norm_boxes, grid_h: int, grid_w: int) -> np.ndarray:
    """Rasterise normalised boxes onto a ``grid_h × grid_w`` token grid (docs/method.md §11.3).

    Returns a ``bool`` array of shape ``[grid_h * grid_w]`` in raster order.

    Coordinates are clamped to [0, 1] first. A box with no positive-area overlap with the image after clamping
    (wholly outside it, or degenerate) marks nothing: the plain formula would otherwise light an edge row or
    column for a box lying entirely beyond that edge. Every other box follows the docs/method.md §11.3 formula exactly,
    including its inclusive right/bottom index (a box ending exactly on a cell boundary marks that next cell).
    """
    if grid_h <= 0 or grid_w <= 0:
        raise ValueError(f"grid must be positive, got {grid_h}×{grid_w}")
    mask = np.zeros((grid_h, grid_w), dtype=bool)
    for x1, y1, x2, y2 in np.clip(_as_box_array(norm_boxes), 0.0, 1.0):
        if x2 <= x1 or y2 <= y1:
            continue
        c0, c1 = math.floor(x1 * grid_w), min(math.floor(x2 * grid_w), grid_w - 1)
        r0, r1 = math.floor(y1 * grid_h), min(math.floor(y2 * grid_h), grid_h - 1)
        mask[r0 : r1 + 1, c0 : c1 + 1] = True
    return mask.reshape(-1)


def llava_box_mask(
    boxes_px, width: int, height: int, grid: int = 24, letterbox: bool = True
) -> np.ndarray:
    """Token mask on LLaVA-1.5's ``grid × grid`` patch grid for pixel boxes of a ``width × height`` image.

    LLaVA-1.5 pads the image to a centred square of side ``S = max(W, H)`` before resizing to 336, so with
    ``letterbox=True`` (the correct mapping, docs/method.md §11.3) a box is mapped as ``x ↦ (x + ox) / S`` and
    ``y ↦ (y + oy) / S`` with ``ox = ⌊(S − W)/2⌋`` and ``oy = ⌊(S − H)/2⌋`` (the same floor as LLaVA's
    ``expand2square`` and transformers' ``pad_to_square``).

    ``letterbox=False`` reproduces the reference implementation's behaviour, which normalises by the original
    ``W`` and ``H`` and so misaligns the mask on every non-square image (docs/method.md §18 row 9). It exists only for parity
    experiments; do not train with it.
    """
    if not letterbox:
        return boxes_to_grid_mask(normalize_boxes(boxes_px, width, height), grid, grid)
    side = max(width, height)
    offset_x, offset_y = (side - width) // 2, (side - height) // 2
    shifted = _as_box_array(boxes_px) + np.array([offset_x, offset_y, offset_x, offset_y], dtype=np.float64)
    return boxes_to_grid_mask(normalize_boxes(shifted, side, side), grid, grid)


def _ratio(num: int, den: int, both_empty: bool) -> float:
    # 0/0 happens only when one of the two masks is empty. It counts as perfect when both are empty (nothing to
    # find and nothing kept) and as a failure otherwise.
    if den == 0:
        return 1.0 if both_empty else 0.0
    return num / den


def mask_metrics(pred_bool, target_bool) -> dict[str, float]:
    """Token-level agreement of a kept mask with a box mask (docs/method.md §11.5 logged metrics, §14.3).

    Both inputs are boolean-like arrays of the same shape (CPU tensors work too; they are flattened).
    Returns ``tp``, ``fp``, ``fn``, ``tn`` (ints) and ``precision``, ``recall``, ``f1``, ``iou``,
    ``keep_ratio`` (floats; ``keep_ratio`` = kept / total).

    0/0 convention: when both masks are empty, precision, recall, F1 and IoU are 1.0 (perfect agreement);
    when exactly one is empty, a 0/0 ratio is 0.0 (e.g. precision of an empty prediction against a non-empty
    target). The reference scores the both-empty IoU as 0; it never arises on its benchmarks, which all carry
    a box.
    """
    pred = np.asarray(pred_bool).astype(bool).reshape(-1)
    target = np.asarray(target_bool).astype(bool).reshape(-1)
    if pred.shape != target.shape:
        raise ValueError(f"masks differ in size: {pred.size} vs {target.size}")
    if pred.size == 0:
        raise ValueError("masks are empty")
    tp = int(np.count_nonzero(pred & target))
    fp = int(np.count_nonzero(pred & ~target))
    fn = int(np.count_nonzero(~pred & target))
    tn = pred.size - tp - fp - fn
    both_empty = tp + fp + fn == 0
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": _ratio(tp, tp + fp, both_empty),
        "recall": _ratio(tp, tp + fn, both_empty),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "iou": _ratio(tp, tp + fp + fn, both_empty),
        "keep_ratio": (tp + fp) / pred.size,
    }


def frame_range_mask(frame_mask, frames: int, first: int, last: int) -> np.ndarray:
    """A video's box target (docs/method.md §10.1): ``frame_mask`` (one frame's flat ``h * w`` mask, e.g. from
    :func:`boxes_to_grid_mask`) on merged frames ``first .. last`` (inclusive, counted from 0) and empty on every
    other frame, flat in the video's token order (frame after frame, each raster). Input frames ``i .. j`` of a
    model that merges ``p`` frames per temporal patch (Qwen: ``temporal_patch_size`` 2) are merged frames
    ``i // p .. j // p``."""
    frame_mask = np.asarray(frame_mask, dtype=bool).reshape(-1)
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be a positive integer, got {frames!r}")
    if not 0 <= first <= last < frames:
        raise ValueError(f"frame range {first}..{last} is not inside the video's {frames} merged frames")
    out = np.zeros((frames, frame_mask.size), dtype=bool)
    out[first: last + 1] = frame_mask
    return out.reshape(-1)
