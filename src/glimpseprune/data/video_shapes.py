"""glimpse-shapes video: short clips of moving shapes whose question needs one frame range (docs/method.md §10.1).

Each clip is ``frames`` frames (default 8, 224 × 224 px, 2 frames per second) of a plain light background with
2–3 *movers* (shape, colour) that cross the clip horizontally in their own lane from the first frame to the last, and
one *visitor* that is present only in the frames ``first .. last`` of the clip (a range of 2–4 frames), also moving
in its own lane, so no two objects ever overlap. The visitor's shape and colour are unique in the clip. Questions:

=================  =========================================  ==========  ==========================================
``qtype``          question                                   answer      boxes
=================  =========================================  ==========  ==========================================
colour_of_visitor  What colour is the triangle that appears?  a colour    the visitor, on its frames only
shape_of_visitor   What shape is the red object that appears? a shape     the visitor, on its frames only
=================  =========================================  ==========  ==========================================

The movers use other shapes and colours, so every frame outside the range holds nothing the question asks about:
the evidence is one object on one frame range. ``bboxs`` has one list of pixel boxes per frame (``[]`` outside the
range); :func:`clip_token_masks` turns them into the box target over a video's tokens (every temporal patch: the
union of its frames' boxes on the merged grid; patches with no box are empty).

No model here was trained on these clips: the embedded mini model and its modules learnt from still images only.
``python -m glimpseprune.mini.evaluate_video`` measures how they transfer (docs/method.md §10.1).

Determinism: one ``random.Random`` per split seeded from ``(seed, split)``. Command line:
``python -m glimpseprune.data.video_shapes OUT_DIR --train N --val N --test N --seed S`` writes
``OUT_DIR/{split}.jsonl`` and ``OUT_DIR/frames/{split}/{id}/{k}.png``.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .masks import boxes_to_grid_mask, normalize_boxes
from .scenes import COLOURS, SHAPES, Obj, Scene, object_box, render_scene

__all__ = ["Clip", "Track", "clip_token_masks", "generate_clips", "main", "render_clip"]

SPLITS = ("train", "val", "test")
QTYPES = ("colour_of_visitor", "shape_of_visitor")
BACKGROUND = (235, 235, 235)


@dataclass(frozen=True)
class Track:
    """One object moving in a straight line from ``(x0, y)`` at frame ``first`` to ``(x1, y)`` at frame ``last``
    (linear in between), absent on every other frame."""

    shape: str
    colour: str
    size: int
    y: int
    x0: int
    x1: int
    first: int
    last: int

    def at(self, k: int) -> Obj | None:
        if not self.first <= k <= self.last:
            return None
        span = max(self.last - self.first, 1)
        x = round(self.x0 + (self.x1 - self.x0) * (k - self.first) / span)
        return Obj(self.shape, self.colour, x, self.y, self.size)


@dataclass(frozen=True)
class Clip:
    size: int
    frames: int
    tracks: tuple[Track, ...]  # the visitor is the last

    @property
    def visitor(self) -> Track:
        return self.tracks[-1]

    def to_dict(self) -> dict:
        return {"size": self.size, "frames": self.frames, "tracks": [t.__dict__ for t in self.tracks]}

    @classmethod
    def from_dict(cls, data: dict) -> "Clip":
        return cls(data["size"], data["frames"], tuple(Track(**t) for t in data["tracks"]))


def render_clip(clip: Clip) -> list[Image.Image]:
    """The clip's RGB frames (flat colours, as :func:`~glimpseprune.data.scenes.render_scene`)."""
    return [render_scene(Scene(clip.size, clip.size, BACKGROUND,
                               tuple(obj for obj in (t.at(k) for t in clip.tracks) if obj is not None)))
            for k in range(clip.frames)]


def _make_clip(rng: random.Random, size: int, frames: int) -> tuple[Clip, dict]:
    n_movers = rng.randint(2, 3)
    lanes = n_movers + 1
    lane = size // lanes
    obj_size = min(lane - 8, size // 5)
    attrs = rng.sample([(s, c) for s in SHAPES for c in COLOURS], len(SHAPES) * len(COLOURS))
    visitor_attr = attrs[0]
    movers = [a for a in attrs[1:] if a[0] != visitor_attr[0] and a[1] != visitor_attr[1]][:n_movers]
    order = rng.sample(range(lanes), lanes)
    length = rng.randint(2, min(4, frames))
    first = rng.randint(0, frames - length)
    tracks = []
    for i, (shape, colour) in enumerate(movers + [visitor_attr]):
        y = order[i] * lane + (lane - obj_size) // 2
        x0, x1 = 4, size - obj_size - 4
        if rng.random() < 0.5:
            x0, x1 = x1, x0
        span = (0, frames - 1) if i < len(movers) else (first, first + length - 1)
        tracks.append(Track(shape, colour, obj_size, y, x0, x1, *span))
    clip = Clip(size, frames, tuple(tracks))
    v = clip.visitor
    qtype = rng.choice(QTYPES)
    if qtype == "colour_of_visitor":
        question, answer = f"What colour is the {v.shape} that appears?", v.colour
    else:
        question, answer = f"What shape is the {v.colour} object that appears?", v.shape
    boxes = [[object_box(v.at(k))] if v.at(k) is not None else [] for k in range(frames)]
    record = {"question": question, "answer": answer, "short_answer": answer, "qtype": qtype,
              "frame_range": [v.first, v.last], "bboxs": boxes, "clip": clip.to_dict()}
    return clip, record


def generate_clips(n: int, seed: int = 0, split: str = "test", size: int = 224, frames: int = 8):
    """``n`` (clip, record) pairs of one split, deterministic in ``(seed, split)``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if frames < 2:
        raise ValueError(f"a clip needs at least 2 frames, got {frames}")
    rng = random.Random(f"{seed}-{split}-video")
    out = []
    for i in range(n):
        clip, record = _make_clip(rng, size, frames)
        out.append((clip, dict(record, id=f"{split}-{i:06d}")))
    return out


def clip_token_masks(boxes_per_frame: list, width: int, height: int, grid_h: int, grid_w: int,
                     temporal_patch: int = 2) -> np.ndarray:
    """The box target over one video's tokens: for every temporal patch (``temporal_patch`` consecutive input
    frames, the last repeated to fill the last patch, as the video layout does), the union of its frames' boxes
    rasterised on the ``grid_h × grid_w`` merged grid (docs/method.md §11.3); flat, patch after patch."""
    frames = list(boxes_per_frame)
    while len(frames) % temporal_patch:
        frames.append(frames[-1])
    masks = []
    for j in range(0, len(frames), temporal_patch):
        boxes = [b for frame in frames[j: j + temporal_patch] for b in frame]
        masks.append(boxes_to_grid_mask(normalize_boxes(boxes, width, height), grid_h, grid_w) if boxes
                     else np.zeros(grid_h * grid_w, dtype=bool))
    return np.concatenate(masks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glimpseprune.data.video_shapes", description=__doc__.split("\n")[0])
    parser.add_argument("out")
    for split in SPLITS:
        parser.add_argument(f"--{split}", type=int, default=0, help=f"clips in the {split} split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args(argv)
    out = Path(args.out)
    for split in SPLITS:
        n = getattr(args, split)
        if not n:
            continue
        lines = []
        for clip, record in generate_clips(n, args.seed, split, args.size, args.frames):
            folder = out / "frames" / split / record["id"]
            folder.mkdir(parents=True, exist_ok=True)
            paths = []
            for k, frame in enumerate(render_clip(clip)):
                frame.save(folder / f"{k}.png")
                paths.append(str((folder / f"{k}.png").relative_to(out)))
            lines.append(json.dumps(dict(record, frames=paths, fps=2.0)))
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        print(f"{split}: {n} clips -> {out / f'{split}.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
