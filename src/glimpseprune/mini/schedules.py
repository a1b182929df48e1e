"""Phases and schedules of the mini pretraining recipe: the learning rate over the steps (with its optional vision
warm-up phase), the resolution curriculum and the distractor curriculum's validation.

Each function reads the pretraining config's fields (``steps``, ``warmup_steps``, ``min_lr_ratio``,
``vision_warmup_steps``, ``decoder_lr_restart``, ``warmup_pixels``, ``min_pixels``, ``max_pixels``).
"""

from __future__ import annotations

import math

def lr_lambda(step: int, cfg) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio``. With a vision warm-up and ``decoder_lr_restart``,
    that phase warms up and then holds the peak, and the decoder phase gets its own warm-up and cosine decay (so the
    decoder does not start on an already decayed learning rate; attempt Z's R3 measured no gain from it)."""
    start, stop = 0, cfg.steps
    if cfg.vision_warmup_steps and cfg.decoder_lr_restart:
        if step < cfg.vision_warmup_steps:
            return min((step + 1) / cfg.warmup_steps, 1.0)
        start = cfg.vision_warmup_steps
    local = step - start
    if local < cfg.warmup_steps:
        return (local + 1) / cfg.warmup_steps
    progress = (local - cfg.warmup_steps) / max(stop - start - cfg.warmup_steps, 1)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def check_objects_curriculum(stages) -> None:
    """``[[until_step, max_objects(, max_zoom_out)], ...]`` with increasing steps, ``max_objects`` >= 1 and
    ``max_zoom_out`` >= 1.3 (the smallest zoom-out drawn), else a ValueError that says which stage is wrong."""
    if stages is None:
        return
    last = 0
    for stage in stages:
        ok = isinstance(stage, (list, tuple)) and len(stage) in (2, 3) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in stage)
        if not ok or int(stage[0]) != stage[0] or int(stage[1]) != stage[1] or stage[0] <= last or stage[1] < 1 \
                or (len(stage) == 3 and stage[2] < 1.3):
            raise ValueError(f"objects_curriculum stage {stage!r} must be [until_step > {last}, max_objects >= 1"
                             "(, max_zoom_out >= 1.3)], stages in increasing step order")
        last = stage[0]


def pixels_for_step(cfg):
    """``(min_pixels, step -> max_pixels)`` of the resolution curriculum (``warmup_pixels``), or None without one."""
    if not cfg.warmup_pixels:
        return None
    warm_px, warm_steps = int(cfg.warmup_pixels["max_pixels"]), int(cfg.warmup_pixels["steps"])
    return (cfg.min_pixels, lambda s: warm_px if s < warm_steps else cfg.max_pixels)
