"""Training data of the mini base model: glimpse-shapes (or Visual-CoT-style) examples, the extra chat turns and
reduced scenes derived from a scene, the auxiliary per-cell targets, and batches that are a pure function of
(seed, step).

Used by the ``pretrain-mini`` recipe (:mod:`glimpseprune.mini.pretrain`) and by the diagnostics; nothing here
trains or saves anything.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

ATTN_FROM = ("answer", "question")  # which positions the grounding loss supervises (PretrainConfig.attn_from)
TURN_SAMPLINGS = ("uniform", "benchmark")  # see derive_turns


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


# Batch entries the collator adds for the training losses; the rest are the model's inputs.
TRAINING_EXTRAS = ("aux_targets", "box_masks", "relevance_targets", "query_starts")


def split_batch(batch: dict) -> tuple[dict, dict]:
    """A collated batch -> (model inputs, training extras :data:`TRAINING_EXTRAS`)."""
    inputs = {k: v for k, v in batch.items() if k not in TRAINING_EXTRAS}
    return inputs, {k: batch[k] for k in TRAINING_EXTRAS}


@dataclass
class Example:
    question: str
    answer: str
    image: str | None = None  # file path; None: render ``scene``
    scene: dict | None = None  # glimpse-shapes scene (enables the dense auxiliary targets)
    boxes: list = field(default_factory=list)
    id: str = ""
    qtype: str | None = None
    turns: list = field(default_factory=list)  # more (question, answer, boxes) about the same image
    box_role: str | None = None  # glimpse-shapes: target / evidence / none


def synthetic_examples(n: int, seed: int, size: int, split: str, layout: str = "default") -> list[Example]:
    from ..data.scenes import generate_items

    return [
        Example(r["question"], r["short_answer"], None, r["scene"], r["bboxs"], r["id"], r["qtype"],
                box_role=r["box_role"])
        for _, r in generate_items(n, seed=seed, size=size, split=split, layout=layout)
    ]


def record_examples(spec) -> list[Example]:
    from ..data.records import load_records

    records, report = load_records(spec)
    if not records:
        raise ValueError(f"no usable records in {spec}: {report.summary()}")
    return [
        Example(r.question, r.short_answer or r.answer, r.image, r.extra.get("scene"), r.boxes, r.id,
                r.extra.get("qtype"), box_role=r.extra.get("box_role"))
        for r in records
    ]


def example_image(ex: Example):
    from ..processing import load_image

    if ex.image is not None:
        return load_image(ex.image)
    from ..data.scenes import Scene, render_scene

    return render_scene(Scene.from_dict(ex.scene))


def cell_targets(scene: dict, grid_h: int, grid_w: int, min_cover: float = 0.2):
    """[3, grid_h*grid_w] class targets for the auxiliary probe: covering colour, covering shape, centred shape."""
    import numpy as np
    from PIL import Image, ImageDraw

    from ..data.scenes import COLOURS, SHAPES, Scene, _draw_object

    sc = Scene.from_dict(scene)
    labels = Image.new("L", (sc.width, sc.height), 0)
    draw = ImageDraw.Draw(labels)
    for i, obj in enumerate(sc.objects):
        _draw_object(draw, obj, i + 1)
    cell = 16  # resample the label map to 16x16 px per cell: nearest keeps object ids exact
    lab = np.asarray(labels.resize((grid_w * cell, grid_h * cell), Image.NEAREST))
    n = len(sc.objects)
    onehot = np.eye(n + 1, dtype=np.float32)[lab]  # [H, W, n+1]
    cover = onehot.reshape(grid_h, cell, grid_w, cell, n + 1).mean(axis=(1, 3))[..., 1:].reshape(-1, n)
    best = cover.argmax(axis=1)
    present = cover.max(axis=1) >= min_cover
    colour_ids = np.array([list(COLOURS).index(o.colour) + 1 for o in sc.objects])
    shape_ids = np.array([SHAPES.index(o.shape) + 1 for o in sc.objects])
    colour = np.where(present, colour_ids[best], 0)
    shape = np.where(present, shape_ids[best], 0)
    centre = np.zeros(grid_h * grid_w, dtype=np.int64)
    for o, sid in zip(sc.objects, shape_ids):
        cx = min(int((o.x + o.size / 2) / sc.width * grid_w), grid_w - 1)
        cy = min(int((o.y + o.size / 2) / sc.height * grid_h), grid_h - 1)
        centre[cy * grid_w + cx] = sid
    import torch

    return torch.from_numpy(np.stack([colour, shape, centre]).astype(np.int64))


def relevance_targets(boxes, role: str | None, width: int, height: int, grid_h: int, grid_w: int):
    """[grid_h*grid_w] float targets for the relevance probe: 1 at the cell holding each box's centre, else 0.

    ``evidence`` boxes (what one inspects to answer "no") are not what the question asks about: no positives.
    """
    import torch

    target = torch.zeros(grid_h * grid_w)
    if role == "evidence":
        return target
    for x1, y1, x2, y2 in boxes:
        cx = min(max(int((x1 + x2) / 2 / width * grid_w), 0), grid_w - 1)
        cy = min(max(int((y1 + y2) / 2 / height * grid_h), 0), grid_h - 1)
        target[cy * grid_w + cx] = 1.0
    return target


def derive_turns(scene: dict, rng: random.Random, n: int, sampling: str = "uniform") -> list[tuple[str, str, list]]:
    """``n`` more (question, answer, boxes) about a glimpse-shapes scene, computed from its objects with the
    benchmark's own wording (:func:`glimpseprune.data.scenes._texts`) and exact boxes.

    ``sampling="uniform"``: an exists question names a present object or a random (shape, colour) pair; a count
    question a random shape. ``"benchmark"``: the answer distributions of the benchmark itself: exists is yes or
    no with equal odds and a "no" names a pair that only *partly* matches the scene (same colour or same shape as
    some object) wherever one exists; a count question first draws its answer uniformly from the counts the scene
    allows (0 … 3), then a shape with that count. Otherwise "no" and "zero" dominate, and so do the shortcuts they
    allow ("nothing of that colour", "that shape is absent")."""
    from ..data.scenes import COLOURS, COUNT_WORDS, SHAPES, Scene, _texts, object_box

    check_choice("turn sampling", sampling, TURN_SAMPLINGS)
    objs = Scene.from_dict(scene).objects
    out = []
    for _ in range(n):
        kinds = ["exists", "count"]
        unique_shapes = [s for s in SHAPES if sum(o.shape == s for o in objs) == 1]
        unique_colours = [c for c in COLOURS if sum(o.colour == c for o in objs) == 1]
        if unique_shapes:
            kinds.append("colour_of_shape")
        if unique_colours:
            kinds.append("shape_of_colour")
        kind = rng.choice(kinds)
        if kind == "colour_of_shape":
            shape = rng.choice(unique_shapes)
            obj = next(o for o in objs if o.shape == shape)
            q, a, _ = _texts(kind, shape, obj.colour)
            refs = [obj]
        elif kind == "shape_of_colour":
            colour = rng.choice(unique_colours)
            obj = next(o for o in objs if o.colour == colour)
            q, a, _ = _texts(kind, obj.shape, colour)
            refs = [obj]
        elif kind == "exists":
            if rng.random() < 0.5:
                obj = rng.choice(objs)
                shape, colour = obj.shape, obj.colour
            elif sampling == "benchmark":
                present = {(o.shape, o.colour) for o in objs}
                absent = [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in present]
                partial = [(s, c) for s, c in absent if any(o.shape == s or o.colour == c for o in objs)]
                shape, colour = rng.choice(partial or absent)
            else:
                shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
            present = any(o.shape == shape and o.colour == colour for o in objs)
            q, a, _ = _texts(kind, shape, colour, present=present)
            refs = [o for o in objs if (o.shape == shape and o.colour == colour) or
                    (not present and (o.shape == shape or o.colour == colour))]
        else:
            if sampling == "benchmark":
                by_count: dict[int, list[str]] = {}
                for s in SHAPES:
                    by_count.setdefault(sum(o.shape == s for o in objs), []).append(s)
                counts = [c for c in by_count if c < len(COUNT_WORDS)]
                shape = rng.choice(by_count[rng.choice(sorted(counts))])
            else:
                shape = rng.choice(SHAPES)
            refs = [o for o in objs if o.shape == shape]
            if len(refs) >= len(COUNT_WORDS):
                continue
            q, a, _ = _texts(kind, shape, count=len(refs))
        out.append((q, a, [object_box(o) for o in refs]))
    return out


def zoomed_scene(scene: dict, rng: random.Random, max_zoom_out: float = 3.0) -> dict:
    """The scene seen through a random square window that holds all its objects, magnified to the full canvas.

    The window's side is ``f`` times the side of the objects' joint footprint, ``f`` uniform in
    [1.3, ``max_zoom_out``] (clamped to the canvas), so one object fills 1/f² of the image instead of ~1-4 %.
    Objects keep their shape, colour and relative layout; boxes and probe targets follow from the new scene.
    """
    objects = scene["objects"]
    x0, y0 = min(o["x"] for o in objects), min(o["y"] for o in objects)
    x1, y1 = max(o["x"] + o["size"] for o in objects), max(o["y"] + o["size"] for o in objects)
    canvas = min(scene["width"], scene["height"])
    side = min(max(x1 - x0, y1 - y0) * rng.uniform(1.3, max_zoom_out), canvas)
    side = max(side, x1 - x0, y1 - y0)
    wx = rng.uniform(max(x1 - side, 0), min(x0, scene["width"] - side))
    wy = rng.uniform(max(y1 - side, 0), min(y0, scene["height"] - side))
    scale = canvas / side
    moved = [dict(o, x=int((o["x"] - wx) * scale), y=int((o["y"] - wy) * scale),
                  size=max(int(o["size"] * scale), 1)) for o in objects]
    for o in moved:  # rounding must not push an object over the edge
        o["x"] = min(max(o["x"], 0), scene["width"] - o["size"])
        o["y"] = min(max(o["y"], 0), scene["height"] - o["size"])
    return dict(scene, objects=moved)


def reduced_example(ex: Example, rng: random.Random, max_objects: int, extra_turns: int,
                    max_zoom_out: float | None = None, sampling: str = "uniform") -> Example:
    """``ex``'s image with only 1..``max_objects`` of its objects (a random subset), and ``1 + extra_turns``
    questions derived from that reduced scene (the record's own question may no longer hold, so it is replaced).
    ``max_zoom_out``: also magnify the kept objects (:func:`zoomed_scene`)."""
    objects = list(ex.scene["objects"])
    keep = rng.sample(range(len(objects)), rng.randint(1, min(max_objects, len(objects))))
    scene = dict(ex.scene, objects=[objects[i] for i in sorted(keep)])
    if max_zoom_out:
        scene = zoomed_scene(scene, rng, max_zoom_out)
    turns = []
    while not turns:  # derive_turns skips impossible draws; one object always allows a colour question
        turns = derive_turns(scene, rng, 1 + extra_turns, sampling)
    (question, answer, boxes), rest = turns[0], turns[1:]
    return replace(ex, scene=scene, question=question, answer=answer, boxes=boxes, box_role=None, qtype=None,
                   turns=rest)


class Collator:
    """Examples -> model inputs with answer-only labels (right padding), box masks and auxiliary cell targets.

    An example with ``turns`` (more questions about the same image) becomes a multi-turn chat: the record's own
    question first (exactly the single-turn prompt used at inference), then the others; every answer is supervised.
    """

    def __init__(self, processor, attn_from: str = "answer"):
        check_choice("attn_from", attn_from, ATTN_FROM)
        self.attn_from = attn_from
        self.processor = processor
        self.tok = processor.tokenizer
        self.eos = self.tok.eos_token
        self.header = self.tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        self.eos_id = self.tok.convert_tokens_to_ids(self.eos)
        import re

        from ..data.scenes import COLOURS, PLURALS, SHAPES

        words = sorted(set(COLOURS) | set(SHAPES) | set(PLURALS.values()), key=len, reverse=True)
        self.attribute_words = re.compile(r"\b(" + "|".join(words) + r")\b", flags=re.IGNORECASE)

    def prompt(self, question: str) -> str:
        from ..processing import user_message

        return self.processor.apply_chat_template(user_message(question, 1), add_generation_prompt=True,
                                                  tokenize=False)

    def text(self, ex: Example) -> str:
        out = self.prompt(ex.question) + ex.answer + self.eos
        for q, a, _ in ex.turns:
            out += "\n<|im_start|>user\n" + q + "<|im_end|>\n<|im_start|>assistant\n" + a + self.eos
        return out

    def answer_spans(self, ids: list[int]) -> list[tuple[int, int]]:
        """[start, end) of every answer (its tokens and the end-of-turn token)."""
        spans, h = [], len(self.header)
        i = 0
        while i + h <= len(ids):
            if ids[i:i + h] == self.header:
                start = i + h
                end = start
                while end < len(ids) and ids[end] != self.eos_id:
                    end += 1
                spans.append((start, min(end + 1, len(ids))))
                i = end
            else:
                i += 1
        return spans

    def word_start(self, ids: list[int], answer_start: int, question: str) -> int | None:
        """Position of the token holding the first letter of ``question``'s last colour/shape word, in the user
        turn that ends just before the answer starting at ``answer_start``; None when there is no such word."""
        found = list(self.attribute_words.finditer(question))
        if not found:
            return None
        suffix = len(question) - found[-1].start()  # characters from the word's first letter to the end
        k = answer_start - len(self.header)
        while k > 0 and ids[k] != self.eos_id:  # the user turn's <|im_end|> (the chat's end-of-turn = eos token)
            k -= 1
        seen = 0
        while k > 0 and seen < suffix:
            k -= 1
            seen += len(self.tok.decode([ids[k]]))
        return k if seen >= suffix else None

    def __call__(self, examples: list[Example]) -> dict:
        import torch

        from ..data.masks import boxes_to_grid_mask, normalize_boxes

        texts = [self.text(ex) for ex in examples]
        images = [example_image(ex) for ex in examples]
        self.tok.padding_side = "right"
        inputs = self.processor(text=texts, images=images, return_tensors="pt", padding=True)
        self.tok.padding_side = "left"
        labels = torch.full_like(inputs["input_ids"], -100)
        grids = (inputs["image_grid_thw"][:, 1:] // 2).tolist()
        box_masks, query_starts = [], []
        for b, ex in enumerate(examples):
            spans = self.answer_spans(inputs["input_ids"][b].tolist())
            if len(spans) != 1 + len(ex.turns):
                raise ValueError(f"found {len(spans)} answers in a {1 + len(ex.turns)}-turn sequence")
            for start, end in spans:
                labels[b, start:end] = inputs["input_ids"][b, start:end]
            questions = [ex.question] + [t[0] for t in ex.turns]
            ids = inputs["input_ids"][b].tolist()
            query_starts.append([self.word_start(ids, start, q) if self.attn_from == "question" and ex.scene
                                 else None for (start, _), q in zip(spans, questions)])
            gh, gw = grids[b]
            masks = []
            for boxes in [ex.boxes] + [t[2] for t in ex.turns]:
                if boxes:
                    m = boxes_to_grid_mask(normalize_boxes(boxes, images[b].width, images[b].height), gh, gw)
                    masks.append(torch.from_numpy(m.reshape(-1).astype(bool)))
                else:
                    masks.append(None)
            box_masks.append(masks)
        aux = []
        for ex, (gh, gw) in zip(examples, grids):
            if ex.scene is not None:
                aux.append(cell_targets(ex.scene, gh, gw))
            else:
                aux.append(torch.full((3, gh * gw), -100, dtype=torch.long))
        rel = [relevance_targets(ex.boxes, ex.box_role, im.width, im.height, gh, gw)
               for ex, im, (gh, gw) in zip(examples, images, grids)]
        out = dict(inputs)
        out["relevance_targets"] = torch.cat(rel)
        out["labels"] = labels
        out["aux_targets"] = torch.cat(aux, dim=1)
        out["box_masks"] = box_masks
        out["query_starts"] = query_starts
        return out


class StepBatches:
    """Batch ``i`` of this dataset is the batch of optimiser step ``start + i``: a pure function of (seed, step)."""

    def __init__(self, examples, collator, batch_size: int, seed: int, start: int, stop: int,
                 lowercase_prob: float = 0.0, extra_turns: int = 0, pixels_for_step=None,
                 objects_curriculum=None, vision_warmup_steps: int = 0, turn_sampling: str = "uniform"):
        self.examples, self.collator, self.bs, self.seed = examples, collator, batch_size, seed
        self.lowercase_prob, self.extra_turns = lowercase_prob, extra_turns
        self.start, self.stop = start, stop
        self.pixels_for_step = pixels_for_step
        self.objects_curriculum = sorted(objects_curriculum or [])
        self.vision_warmup_steps = vision_warmup_steps
        self.turn_sampling = turn_sampling
        self._perms: dict[int, list[int]] = {}

    def indices(self, step: int) -> list[int]:
        n = len(self.examples)
        out = []
        for g in range(step * self.bs, (step + 1) * self.bs):
            epoch = g // n
            if epoch not in self._perms:
                perm = list(range(n))
                random.Random(f"mini-pretrain/{self.seed}/{epoch}").shuffle(perm)
                self._perms = {epoch: perm}
            out.append(self._perms[epoch][g % n])
        return out

    def __len__(self):
        return max(self.stop - self.start, 0)

    def __getitem__(self, i):
        step = self.start + i
        rng = random.Random(f"mini-pretrain/{self.seed}/case/{step}")
        batch = []
        stage = None if step < self.vision_warmup_steps else next(
            (st for st in self.objects_curriculum if step < st[0]), None)
        max_objects = stage[1] if stage else None
        for j in self.indices(step):
            ex = self.examples[j]
            if max_objects is not None and ex.scene is not None:
                ex = reduced_example(ex, rng, max_objects, self.extra_turns, stage[2] if len(stage) > 2 else None,
                                     self.turn_sampling)
            if self.lowercase_prob and rng.random() < self.lowercase_prob:
                ex = replace(ex, question=ex.question[:1].lower() + ex.question[1:])
            if self.extra_turns and ex.scene is not None and max_objects is None:
                ex = replace(ex, turns=derive_turns(ex.scene, rng, self.extra_turns, self.turn_sampling))
            batch.append(ex)
        if self.pixels_for_step is not None:
            self.collator.processor.image_processor.size = {"shortest_edge": self.pixels_for_step[0],
                                                            "longest_edge": self.pixels_for_step[1](step)}
        return self.collator(batch)


def worker_init(_):
    """DataLoader workers: one torch thread each (they render and preprocess; the step owns the cores)."""
    import torch

    torch.set_num_threads(1)
