"""glimpse-shapes: a deterministic, grounded synthetic VQA benchmark for visual-token pruning.

Each image is a plain light square (default 448×448 px) holding 3–6 non-overlapping flat-coloured objects; each
object has one of :data:`SHAPES`, one of :data:`COLOURS` and a size of 40–90 px. Every image carries one question
whose answer needs the right region of the image:

=================  ====================================  ===============  =========================================
``qtype``          question                              short answer     boxes (``box_role``)
=================  ====================================  ===============  =========================================
colour_of_shape    What colour is the triangle?          a colour         the triangle, unique in the scene (target)
shape_of_colour    What shape is the red object?         a shape          the red object, unique (target)
exists             Is there a red triangle?              yes / no         yes: the red triangle (target);
                                                                          no: every red object and every triangle,
                                                                          i.e. what one must inspect to say no
                                                                          (evidence; never empty, see below)
count              How many triangles are there?         zero … three     every triangle (target); for zero
                                                                          ``bboxs`` is ``[]`` (none)
=================  ====================================  ===============  =========================================

Counts are answered with number *words* (``zero``..``three``), so every answer is a word of :data:`VOCAB_WORDS`.

**No answer follows from the question.** Question types rotate through shuffled decks, and within a type the
pair (question content, answer) is drawn from a shuffled deck of *all* combinations — e.g. every
(shape, colour) pair for ``colour_of_shape``, every (colour, shape, yes/no) triple for ``exists``. Every full deck
is exactly balanced, so answers are uniform (yes/no 50/50, counts 0–3 uniform) and independent of the question
text. ``exists`` scenes always hold one or two *partial matches* (same colour or same shape, never both) in both
the yes and the no case, so only the full match itself tells the answers apart.

**Small evidence.** Objects are small against the image: one object's box is at most 4 % of a 448² image. Over
all questions the referenced boxes cover a median 2.4 % of the pixels and 4.7 % of Qwen's 16×16 merged tokens
(mean 5.6 %), so a pruner that keeps ≤ 10 % of the visual tokens can still see all the evidence.

**Determinism.** All randomness comes from one ``random.Random`` per split, seeded from ``(seed, split)``; the same
seed writes byte-identical JSONL and PNG files (same Pillow/zlib), and the test split does not change when the
train size does. Boxes are not geometric guesses: each is the exact pixel bounding box of the rendered object
(``x2``, ``y2`` exclusive), so the box covers every pixel of the object and nothing of any other object.

Records follow the Visual-CoT training format (:mod:`.records`) with ``dataset="shapes"`` and extra keys
``short_answer``, ``free_form_answer``, ``qtype``, ``box_role``, ``id`` and ``scene`` (enough to re-render it with
``render_scene(Scene.from_dict(...))``). ``answer`` is the free-form sentence, as in Visual-CoT. ``image`` is
relative to the JSONL file's folder, where :func:`~glimpseprune.data.records.load_records` looks for it.

**Layouts.** The default layout (3–6 objects of 40–90 px, 4.4 on average) is the benchmark the mini model trains
on. Every object there is salient, and the objects together touch a median 19 % of Qwen's merged tokens, so a
question-agnostic pruner that spreads an 11 % budget over the objects still keeps part of the referenced one.
``layout="dense"`` (12–14 objects of 40–60 px, see :data:`LAYOUTS`) is the harder variant for comparing pruners:
the objects touch a median 38 % of the tokens, about 13 objects share an 11 % budget of 28 tokens, and only a
pruner that reads the question knows which ones to keep. Question types, answers and boxes follow the same
rules; a non-default layout seeds its own random stream and is recorded in ``info.json``.

Command line: ``python -m glimpseprune.data.scenes OUT_DIR --train N --val N --test N --seed S [--size 448]
[--layout dense | --objects MIN MAX --object-size MIN MAX]``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

__all__ = [
    "COLOURS",
    "COUNT_WORDS",
    "PLURALS",
    "QTYPES",
    "SHAPES",
    "VOCAB_WORDS",
    "LAYOUTS",
    "Layout",
    "Obj",
    "Scene",
    "all_texts",
    "draw_boxes",
    "generate_benchmark",
    "generate_items",
    "main",
    "object_box",
    "render_scene",
]

GENERATOR_VERSION = 1  # bump whenever the same seed would produce different files

SHAPES = ("circle", "square", "triangle", "star", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses"}
# Saturated, mutually distant colours, all far from the light background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (240, 200, 0),
    "purple": (148, 70, 189),
    "orange": (255, 127, 14),
}
QTYPES = ("colour_of_shape", "shape_of_colour", "exists", "count")
COUNT_WORDS = ("zero", "one", "two", "three")

MIN_OBJECTS, MAX_OBJECTS = 3, 6
MIN_SIZE, MAX_SIZE = 40, 90  # side of an object's square footprint, px
BORDER = 8  # free margin between objects and the image edge, px
GAP = 16  # free margin between two objects' footprints, px
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Layout:
    """How crowded a scene is: the range of the object count and of the footprint side (px), both inclusive."""

    min_objects: int = MIN_OBJECTS
    max_objects: int = MAX_OBJECTS
    min_size: int = MIN_SIZE
    max_size: int = MAX_SIZE

    @property
    def tag(self) -> str:
        return f"objects{self.min_objects}-{self.max_objects}_size{self.min_size}-{self.max_size}"

    def check(self, image_size: int) -> None:
        """Raise ``ValueError`` unless every question type can be generated and placed on ``image_size`` px."""
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}..{self.max_objects}")
        if self.max_objects < 3:  # "How many triangles are there?" -> three needs three objects
            raise ValueError(f"max_objects must be at least 3 (count questions go up to three), got {self.max_objects}")
        if not 20 <= self.min_size <= self.max_size:
            raise ValueError(f"need 20 <= min_size <= max_size (px), got {self.min_size}..{self.max_size}")
        # Random placement needs slack: the footprints (with their gaps) may fill at most 60 % of the free area.
        free = (image_size - 2 * BORDER) ** 2
        need = self.max_objects * (self.max_size + GAP) ** 2
        if need > 0.6 * free:
            raise ValueError(f"{self.max_objects} objects of up to {self.max_size} px do not fit on a {image_size} px "
                             f"image ({need / free:.0%} of the free area; at most 60 %): use fewer or smaller objects")


# "default" is the benchmark the mini model trains on; "dense" separates question-aware from question-agnostic
# pruners (13 objects on average, touching a median 38 % of the 256 merged tokens, against an 11 % budget of 28).
LAYOUTS: dict[str, Layout] = {"default": Layout(), "dense": Layout(12, 14, 40, 60)}


def _layout(layout: Layout | str) -> Layout:
    if isinstance(layout, Layout):
        return layout
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUTS)} or pass a Layout")
    return LAYOUTS[layout]


@dataclass(frozen=True)
class Obj:
    """One object: its shape and colour drawn inside the square footprint ``[x, x+size) × [y, y+size)``."""

    shape: str
    colour: str
    x: int
    y: int
    size: int


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: tuple[int, int, int]
    objects: tuple[Obj, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "background": list(self.background),
            "objects": [
                {"shape": o.shape, "colour": o.colour, "x": o.x, "y": o.y, "size": o.size} for o in self.objects
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        return cls(
            width=data["width"],
            height=data["height"],
            background=tuple(data["background"]),
            objects=tuple(Obj(**o) for o in data["objects"]),
        )


def _draw_object(draw: ImageDraw.ImageDraw, obj: Obj, fill) -> None:
    x, y, s = obj.x, obj.y, obj.size
    right, bottom = x + s - 1, y + s - 1  # PIL's rectangle/ellipse corners are inclusive
    if obj.shape == "circle":
        draw.ellipse([x, y, right, bottom], fill=fill)
    elif obj.shape == "square":
        draw.rectangle([x, y, right, bottom], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(x + (s - 1) / 2, y), (x, bottom), (right, bottom)], fill=fill)
    elif obj.shape == "star":
        # Five points with a fat inner radius (half the outer one) so it stays a star, not a spiky blob, at 40 px.
        cx, cy, outer = x + (s - 1) / 2, y + (s - 1) / 2, (s - 1) / 2
        points = []
        for k in range(10):
            radius = outer if k % 2 == 0 else outer / 2
            angle = -90 + 36 * k
            points.append((cx + radius * math.cos(math.radians(angle)), cy + radius * math.sin(math.radians(angle))))
        draw.polygon(points, fill=fill)
    elif obj.shape == "cross":
        arm = max(s // 3, 1)
        start = (s - arm) // 2
        draw.rectangle([x + start, y, x + start + arm - 1, bottom], fill=fill)
        draw.rectangle([x, y + start, right, y + start + arm - 1], fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def object_box(obj: Obj) -> list[int]:
    """Exact pixel bounding box ``[x1, y1, x2, y2]`` (``x2``, ``y2`` exclusive) of the rendered object."""
    # Drawn with the same coordinates as in render_scene, on a canvas just big enough not to clip, so the pixels
    # (and thus the box) are identical to the object's pixels in the full image.
    canvas = Image.new("L", (obj.x + obj.size + 1, obj.y + obj.size + 1), 0)
    _draw_object(ImageDraw.Draw(canvas), obj, 255)
    return list(canvas.getbbox())


def render_scene(scene: Scene) -> Image.Image:
    """The RGB image of a scene (flat colours, no anti-aliasing: each object is exactly its colour)."""
    image = Image.new("RGB", (scene.width, scene.height), scene.background)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, COLOURS[obj.colour])
    return image


def draw_boxes(image: Image.Image, boxes, colour=(0, 0, 0), width: int = 2) -> Image.Image:
    """A copy of ``image`` with pixel boxes ``[x1, y1, x2, y2]`` (``x2``, ``y2`` exclusive) outlined."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    for x1, y1, x2, y2 in boxes:
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=colour, width=width)
    return out


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _texts(qtype: str, shape: str, colour: str | None = None, present: bool | None = None,
           count: int | None = None) -> tuple[str, str, str]:
    """(question, short answer, free-form answer): the only place the wording lives."""
    if qtype == "colour_of_shape":
        return f"What colour is the {shape}?", colour, f"The {shape} is {colour}."
    if qtype == "shape_of_colour":
        return f"What shape is the {colour} object?", shape, f"The {colour} object is {_a(shape)}."
    if qtype == "exists":
        question = f"Is there {_a(colour)} {shape}?"
        if present:
            return question, "yes", f"Yes, there is {_a(colour)} {shape}."
        return question, "no", f"No, there is no {colour} {shape}."
    if qtype == "count":
        plural = PLURALS[shape]
        free = {0: f"There are no {plural}.", 1: f"There is one {shape}."}.get(
            count, f"There are {COUNT_WORDS[count]} {plural}."
        )
        return f"How many {plural} are there?", COUNT_WORDS[count], free
    raise ValueError(f"unknown question type {qtype!r}")


# Every (question content, answer) combination of each question type; a deck over these balances answers and makes
# them independent of the question text.
_COMBOS: dict[str, list[dict[str, Any]]] = {
    "colour_of_shape": [{"shape": s, "colour": c} for s in SHAPES for c in COLOURS],
    "shape_of_colour": [{"shape": s, "colour": c} for s in SHAPES for c in COLOURS],
    "exists": [{"shape": s, "colour": c, "present": p} for s in SHAPES for c in COLOURS for p in (True, False)],
    "count": [{"shape": s, "count": k} for s in SHAPES for k in range(len(COUNT_WORDS))],
}


def all_texts() -> list[str]:
    """Every question, short answer and free-form answer the generator can write (sorted)."""
    return sorted({text for qtype in QTYPES for combo in _COMBOS[qtype] for text in _texts(qtype, **combo)})


# Word-level vocabulary of all_texts(): case-sensitive words and punctuation marks, for training tiny tokenizers.
VOCAB_WORDS: tuple[str, ...] = tuple(sorted({w for t in all_texts() for w in re.findall(r"[A-Za-z]+|[^\sA-Za-z]", t)}))


class _Deck:
    """Draws from a shuffled copy of ``values``, reshuffled when used up: each full pass is exactly balanced."""

    def __init__(self, rng: random.Random, values):
        self._rng, self._values, self._stack = rng, list(values), []

    def draw(self):
        if not self._stack:
            self._stack = list(self._values)
            self._rng.shuffle(self._stack)
        return self._stack.pop()


def _apart(x: int, y: int, size: int, other: Obj) -> bool:
    return (x + size + GAP <= other.x or other.x + other.size + GAP <= x
            or y + size + GAP <= other.y or other.y + other.size + GAP <= y)


def _place(rng: random.Random, attrs: list[tuple[str, str]], image_size: int, layout: Layout) -> tuple[Obj, ...]:
    """Random non-overlapping placement (sizes, then positions), restarted from scratch when it gets stuck."""
    for _ in range(1000):
        placed: list[Obj] = []
        for shape, colour in attrs:
            size = rng.randint(layout.min_size, layout.max_size)
            for _ in range(100):
                x = rng.randint(BORDER, image_size - BORDER - size)
                y = rng.randint(BORDER, image_size - BORDER - size)
                if all(_apart(x, y, size, other) for other in placed):
                    placed.append(Obj(shape, colour, x, y, size))
                    break
            else:
                break
        else:
            return tuple(placed)
    raise RuntimeError(f"could not place {len(attrs)} objects on a {image_size}px image")


def _make_item(rng: random.Random, decks: dict[str, _Deck], image_size: int,
               layout: Layout) -> tuple[Scene, dict[str, Any]]:
    qtype = decks["qtype"].draw()
    combo = decks[qtype].draw()
    shape, colour = combo["shape"], combo.get("colour")
    role = "target"
    if qtype == "colour_of_shape":  # the shape is unique; other objects may share its colour
        required = [(shape, colour)]
        allowed = lambda s, c: s != shape  # noqa: E731
        referenced = lambda o: o.shape == shape  # noqa: E731
    elif qtype == "shape_of_colour":  # the colour is unique; other objects may share its shape
        required = [(shape, colour)]
        allowed = lambda s, c: c != colour  # noqa: E731
        referenced = lambda o: o.colour == colour  # noqa: E731
    elif qtype == "exists":
        # One or two partial matches in both cases, so that seeing "something red" or "a triangle" says nothing.
        partials = []
        for _ in range(rng.randint(1, 2)):
            if rng.random() < 0.5:
                partials.append((shape, rng.choice([c for c in COLOURS if c != colour])))
            else:
                partials.append((rng.choice([s for s in SHAPES if s != shape]), colour))
        required = ([(shape, colour)] if combo["present"] else []) + partials
        allowed = lambda s, c: s != shape and c != colour  # noqa: E731
        if combo["present"]:
            referenced = lambda o: o.shape == shape and o.colour == colour  # noqa: E731
        else:
            role = "evidence"
            referenced = lambda o: o.shape == shape or o.colour == colour  # noqa: E731
    else:  # count
        required = [(shape, rng.choice(list(COLOURS))) for _ in range(combo["count"])]
        allowed = lambda s, c: s != shape  # noqa: E731
        referenced = lambda o: o.shape == shape  # noqa: E731
        role = "target" if combo["count"] else "none"
    fillers = [(s, c) for s in SHAPES for c in COLOURS if allowed(s, c)]
    n_objects = rng.randint(max(layout.min_objects, len(required)), max(layout.max_objects, len(required)))
    attrs = required + [rng.choice(fillers) for _ in range(n_objects - len(required))]
    rng.shuffle(attrs)  # so that the referenced objects are not always placed first
    grey = rng.randint(228, 246)
    background = tuple(min(255, grey + rng.randint(-4, 4)) for _ in range(3))
    scene = Scene(image_size, image_size, background, _place(rng, attrs, image_size, layout))
    question, short, free = _texts(qtype, **combo)
    record = {
        "question": question,
        "answer": free,
        "short_answer": short,
        "free_form_answer": free,
        "qtype": qtype,
        "width": image_size,
        "height": image_size,
        "bboxs": [object_box(o) for o in scene.objects if referenced(o)],
        "box_role": role,
        "dataset": "shapes",
        "scene": scene.to_dict(),
    }
    return scene, record


def generate_items(n: int, seed: int = 0, size: int = 448, split: str = "train",
                   layout: Layout | str = "default") -> list[tuple[Scene, dict]]:
    """``n`` (scene, record) pairs of one split, without writing anything; deterministic in (seed, split, size,
    layout). ``layout`` is a name in :data:`LAYOUTS` or a :class:`Layout`."""
    if size < 448:
        raise ValueError(f"size must be at least 448 px (objects are 40-90 px), got {size}")
    layout = _layout(layout)
    layout.check(size)
    # A string seed is hashed with SHA-512 by `random`, so this is stable across processes and Python runs. The
    # default layout keeps the original stream (files written before layouts existed stay valid).
    stream = f"glimpse-shapes/v{GENERATOR_VERSION}/{seed}/{split}"
    rng = random.Random(stream if layout == Layout() else f"{stream}/{layout.tag}")
    decks = {"qtype": _Deck(rng, QTYPES), **{q: _Deck(rng, _COMBOS[q]) for q in QTYPES}}
    items = []
    for index in range(n):
        scene, record = _make_item(rng, decks, size, layout)
        record = {"id": f"shapes-{split}-{index:06d}", "image": f"images/{split}/{index:06d}.png", **record}
        items.append((scene, record))
    return items


def generate_benchmark(
    out_dir, n_train: int, n_val: int, n_test: int, seed: int = 0, size: int = 448, overwrite: bool = False,
    layout: Layout | str = "default",
) -> dict[str, list[dict]]:
    """Write ``images/<split>/*.png``, ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` and ``info.json``.

    Returns the records per split. Refuses to touch an ``out_dir`` already holding any of these outputs unless
    ``overwrite=True``, which deletes exactly those outputs first (so no stale image survives from a bigger run).
    """
    layout = _layout(layout)
    layout.check(size)  # before anything is deleted
    out = Path(out_dir)
    owned = [out / f"{split}.jsonl" for split in SPLITS] + [out / "images", out / "info.json"]
    existing = [p for p in owned if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {existing[0].name}; pass overwrite=True to replace it")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    records: dict[str, list[dict]] = {}
    for split, n in zip(SPLITS, (n_train, n_val, n_test)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        items = generate_items(n, seed=seed, size=size, split=split, layout=layout)
        with open(out / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for scene, record in items:
                render_scene(scene).save(out / record["image"], format="PNG")
                f.write(json.dumps(record) + "\n")
        records[split] = [record for _, record in items]
    info = {"name": "glimpse-shapes", "version": GENERATOR_VERSION, "seed": seed, "size": size,
            "splits": {split: len(recs) for split, recs in records.items()}}
    if layout != Layout():  # the default layout's info.json stays as it was before layouts existed
        info["layout"] = {"name": next((k for k, v in LAYOUTS.items() if v == layout), None), **asdict(layout)}
    (out / "info.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m glimpseprune.data.scenes", description="Write the glimpse-shapes benchmark."
    )
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=0, help="number of training items")
    parser.add_argument("--val", type=int, default=0, help="number of validation items")
    parser.add_argument("--test", type=int, default=0, help="number of test items")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=448, help="image side in pixels (>= 448)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier benchmark in OUT_DIR")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="default",
                        help="scene layout preset: default (3-6 objects of 40-90 px) or dense (12-14 of 40-60 px)")
    parser.add_argument("--objects", type=int, nargs=2, metavar=("MIN", "MAX"), help="object count range (overrides "
                        "the preset)")
    parser.add_argument("--object-size", type=int, nargs=2, metavar=("MIN", "MAX"),
                        help="object footprint side range in px (overrides the preset)")
    args = parser.parse_args(argv)
    layout = LAYOUTS[args.layout]
    if args.objects:
        layout = Layout(args.objects[0], args.objects[1], layout.min_size, layout.max_size)
    if args.object_size:
        layout = Layout(layout.min_objects, layout.max_objects, args.object_size[0], args.object_size[1])
    try:
        records = generate_benchmark(args.out_dir, args.train, args.val, args.test, seed=args.seed, size=args.size,
                                     overwrite=args.overwrite, layout=layout)
    except (ValueError, FileExistsError) as err:
        parser.error(str(err))
    print(f"wrote glimpse-shapes to {args.out_dir}: " + ", ".join(f"{s} {len(r)}" for s, r in records.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
