"""Data: Visual-CoT-style records, box → token masks, and the glimpse-shapes synthetic benchmark.

``records`` and ``masks`` are re-exported here. The ``scenes`` names are resolved lazily on first access, so that
``python -m glimpseprune.data.scenes`` does not find its own module already imported by this package (runpy
warns about that).
"""

from .masks import (
    QWEN_MAX_PIXELS,
    QWEN_MIN_PIXELS,
    boxes_to_grid_mask,
    llava_box_mask,
    mask_metrics,
    normalize_boxes,
)
from .records import DataReport, Record, load_records, parse_spec

_SCENES_EXPORTS = ("Obj", "Scene", "VOCAB_WORDS", "generate_benchmark", "generate_items", "render_scene")

__all__ = [
    "QWEN_MAX_PIXELS",
    "QWEN_MIN_PIXELS",
    "DataReport",
    "Record",
    "boxes_to_grid_mask",
    "llava_box_mask",
    "load_records",
    "mask_metrics",
    "normalize_boxes",
    "parse_spec",
    *_SCENES_EXPORTS,
]


def __getattr__(name: str):
    if name in _SCENES_EXPORTS:
        from . import scenes

        return getattr(scenes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
