"""Pretrain the mini base model: a small Qwen2.5-VL trained from scratch, on CPU, on grounded records.

``glimpseprune pretrain-mini [--config FILE] [key=value ...]`` (defaults: ``configs/mini/pretrain.json``, i.e.
:data:`DEFAULTS`). Overrides are JSON values where they parse (``steps=50``, ``model.text_layers=4``,
``data=null``) and plain strings otherwise (``output_dir=runs/x``).

What it does, in order:

1. **Data.** ``data``: any record file(s) :func:`~glimpseprune.data.records.load_records` reads (Visual-CoT format:
   question, answer or short_answer, image, bboxs). ``data: null`` (the default) uses the glimpse-shapes train
   split, generated in memory from ``synthetic`` (``n_train``, ``seed``, ``size``) and rendered on the fly: the
   same items and pixels as ``python -m glimpseprune.data.scenes`` writes, without the disk. Validation: the
   benchmark's val split (``n_val`` items), or ``val_data``.
2. **Tokenizer.** A byte-level BPE trained on the records' questions and answers, wrapped as a real
   ``Qwen2Tokenizer`` with Qwen's special tokens and chat layout (:func:`glimpseprune.tiny.build_qwen_tokenizer`).
3. **Model.** A randomly initialised ``Qwen2_5_VLForConditionalGeneration`` from ``model`` (sizes below).
4. **Training.** Sequence = chat prompt with the image + the answer + ``<|im_end|>``; the language-model loss is on
   the answer tokens only. For glimpse-shapes records (they carry their ``scene``) three things are added, all
   computed from the scene and its exact boxes:

   - ``extra_turns`` more questions about the same image follow as further chat turns (the record's own question
     stays first, i.e. exactly the single-turn prompt of inference). The vision tower, most of the cost, runs once
     for all of them, so each step supervises ``1 + extra_turns`` answers per image.
   - an auxiliary dense loss (``aux_weight``): a linear probe on the vision tower's merged tokens predicts, for
     every token cell, the colour and the shape of the object covering it and the shape of the object centred in
     it. The probe is training scaffolding (kept in the checkpoint state, never in the saved model): the shipped
     model is a stock Qwen2.5-VL.
   - a grounding loss (``attn_weight``, ``attn_layers``): at those decoder layers the attention of the position
     that predicts each answer (``attn_from="question"``: also of every position from the question's last colour
     or shape word on), averaged over heads and renormalised over the visual tokens, should fall on that answer's
     box tokens (loss ``-log`` of that share; eager attention in the decoder while training).
   - ``turn_sampling="benchmark"``: the extra turns' exists and count questions follow the benchmark's answer
     distributions (yes/no 50/50 with partial matches, counts drawn by answer), not mostly "no" and "zero".
   - a distractor curriculum (``objects_curriculum``): early steps see each scene reduced to 1, then 2, 3 …
     of its objects, magnified (``zoomed_scene``), with every question derived from the reduced scene; then the
     full scenes. Together with a resolution curriculum (``warmup_pixels``: the curriculum at 224², the rest at
     448²) and two initialisation scales (``model.resid_init_std``, ``model.merger_init_std``) this is what
     makes the model look at the image at all (``docs/mini_model.md``, attempt Z).

   Optional, off in the shipped recipe (see ``docs/mini_model.md``, attempts H and C): ``prompt_order``
   (question before the image), a relevance probe on the decoder's visual states (``relevance_*``) and a dense
   probe tied to the word embeddings (``aux_aligned``).

   AdamW, linear warm-up then cosine decay, gradient clipping, fp32, ``threads`` torch threads (1 is fastest on
   a shared 2-core machine) and ``num_workers`` data processes (rendering + preprocessing overlap the step).
5. **Checkpoints.** Every ``save_every`` steps ``<output_dir>/checkpoint/`` (model + processor + optimiser,
   scheduler and step); a re-run with the same output folder continues from it (``resume=false`` starts over).
   The data order is a pure function of (seed, step), so a resumed run sees the same batches as an uninterrupted
   one. ``max_minutes`` stops (after saving) once that much training time has been spent; re-run to continue.
6. **Result.** ``<output_dir>/final/`` (``save_pretrained`` of model and processor, loadable by
   ``GlimpsePrune.from_pretrained``) and ``<output_dir>/metrics.json`` (steps, wall time, validation accuracy).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

DEFAULTS: dict = {  # = configs/mini/pretrain.json, the recipe of the shipped mini model (a test checks)
    "data": None,
    "synthetic": {"n_train": 40000, "seed": 0, "size": 448},
    "val_data": None,
    "n_val": 64,
    "output_dir": "runs/mini_base",
    "seed": 0,
    "steps": 1720,
    "batch_size": 16,
    "lr": 2e-3,
    "min_lr_ratio": 0.05,
    "warmup_steps": 25,
    "weight_decay": 0.1,
    "max_grad_norm": 1.0,
    "aux_weight": 1.0,
    "lowercase_prob": 0.25,
    "extra_turns": 11,
    "attn_weight": 1.0,
    "attn_layers": [2, 3],
    "attn_from": "question",
    "turn_sampling": "benchmark",
    "prompt_order": "image_first",
    "relevance_weight": 0.0,
    "relevance_layer": 2,
    "relevance_pos_weight": 20.0,
    "relevance_loss": "bce",
    "aux_aligned": False,
    "warmup_pixels": {"max_pixels": 224 * 224, "steps": 1500},
    "objects_curriculum": [[600, 1, 3.0], [700, 2, 3.0], [800, 3, 2.5]],
    "role_tokens": True,
    "aux_object_weight": 10.0,
    "vision_warmup_steps": 500,
    "decoder_lr_restart": True,
    "threads": 2,
    "num_workers": 1,
    "save_every": 50,
    "eval_every": 500,
    "max_minutes": None,
    "resume": True,
    "progress": True,
    "log_every": 50,
    "tokenizer_vocab_size": 400,
    "min_pixels": 56 * 56,
    "max_pixels": 448 * 448,
    "max_new_tokens": 4,
    "model": {
        "text_hidden": 128, "text_layers": 6, "text_heads": 4, "text_kv_heads": 2, "text_intermediate": 384,
        "vision_hidden": 96, "vision_depth": 4, "vision_heads": 4, "vision_intermediate": 192,
        "fullatt_blocks": [1, 3], "window_size": 112, "patch_size": 14, "initializer_range": 0.02,
        "embed_init_std": 1.0, "tie_word_embeddings": False, "resid_init_std": 0.004, "merger_init_std": 0.25
    },
}


@dataclass
class MiniModelSpec:
    text_hidden: int = 128
    text_layers: int = 6
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 384
    vision_hidden: int = 96
    vision_depth: int = 4
    vision_heads: int = 4
    vision_intermediate: int = 192
    fullatt_blocks: list[int] = field(default_factory=lambda: [1, 3])
    window_size: int = 112
    patch_size: int = 14
    initializer_range: float = 0.02
    # Text embeddings at ~unit scale (and an untied LM head): at 0.02 they are ~50x smaller than the vision
    # tower's merged tokens, whose values then swamp the question in the residual stream (the decoder could not
    # even tell the question types apart after 100 steps).
    embed_init_std: float = 1.0
    tie_word_embeddings: bool = False
    # Std of the decoder's residual-branch output projections (o_proj, down_proj), GPT-2 style small init; None:
    # ``initializer_range``. At 0.02 the text positions' residual stream grew to norm ~460 within 300 steps while the
    # image moved it by ~0.2, i.e. the model was blind to the image (see docs/mini_model.md, attempt Z).
    resid_init_std: float | None = None
    # Std of the vision merger's last projection (the merged visual tokens that enter the decoder); None:
    # ``initializer_range``. At 0.02 the merged tokens have norm ~1 against ~11 for the text embeddings (std 1.0), and
    # after one decoder layer a visual token's own content is a ~7 % perturbation of what it attended to: the decoder
    # cannot tell an object's token from the background's. ~0.25 puts both at the same scale.
    merger_init_std: float | None = None


@dataclass
class PretrainConfig:
    data: str | list[str] | None = None
    synthetic: dict = field(default_factory=lambda: dict(DEFAULTS["synthetic"]))
    val_data: str | list[str] | None = None
    n_val: int = 128
    output_dir: str = "runs/mini_base"
    seed: int = 0
    steps: int = 360
    batch_size: int = 16
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 25
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    aux_weight: float = 1.0
    lowercase_prob: float = 0.25  # questions also seen with a lower-case first letter ("what colour is ...")
    # Grounding loss: at these decoder layers, the attention (mean over heads) of the position that predicts the
    # answer should fall, among the visual tokens, on the tokens of the record's boxes: -log(mass on the boxes).
    attn_weight: float = 0.0
    # glimpse-shapes records: this many more questions about the same image, derived from its scene, follow the
    # record's own question as further chat turns (the ViT, most of the cost, runs once for all of them)
    extra_turns: int = 5
    # How the extra turns draw exists / count questions: "uniform" or "benchmark" (see derive_turns).
    turn_sampling: str = "uniform"
    attn_layers: list[int] = field(default_factory=lambda: [2, 3])
    # Which positions the grounding loss supervises. "answer": the position that predicts the answer. "question":
    # also every position from the question's last colour/shape word on (glimpse-shapes questions; others fall back
    # to "answer"). In the image-first layout the word token itself ("triangle") can attend straight to the
    # matching visual tokens, a one-hop match, instead of first moving the word to the answer position.
    attn_from: str = "answer"
    # "text_first": the question precedes the image in the user turn (the saved chat template says so, so answer,
    # demo, eval and stage-1 training format prompts the same way). Image tokens can then read the question.
    prompt_order: str = "image_first"
    # Relevance probe (training scaffolding, like the dense probe): a linear layer on the decoder's hidden state of
    # each visual token after ``relevance_layer`` layers predicts whether that token holds the centre of an object
    # the question is about (the centre cell of each box; none for "evidence" boxes of a "no" answer). One marked
    # token per referenced object, so the mark also supports counting. BCE with ``relevance_pos_weight``.
    relevance_weight: float = 0.0
    relevance_layer: int = 2
    relevance_pos_weight: float = 20.0
    # "bce": per-token BCE (pos_weight above). "softmax": per image, every marked token must beat all unmarked ones
    # and a learned "nothing here" logit; an image with no mark must put the null logit first. One well-scaled term
    # per image instead of 256 mostly easy ones.
    relevance_loss: str = "bce"
    # Dense probe classes tied to the decoder's own word embeddings: the covering colour / shape of a cell is
    # scored by cosine similarity between the merged visual token and the embedding(s) of that word ("red",
    # " red"; "triangle", " triangle", " triangles"). Visual tokens then carry the very vectors the question's words
    # are made of, so "does this token hold what the question names" is a similarity the attention can read.
    aux_aligned: bool = False
    # Resolution curriculum: {"max_pixels": P, "steps": N}: the first N steps see images down-scaled to at most P
    # pixels (e.g. 224² -> 64 visual tokens instead of 256): 4x cheaper steps and 4x fewer distractor tokens while
    # the decoder learns to find what the question names; the remaining steps train at ``max_pixels``.
    warmup_pixels: dict | None = None
    # Distractor curriculum: [[until_step, max_objects(, max_zoom_out)], ...]. Before ``until_step`` every training
    # image keeps 1..max_objects of its scene's objects (a random subset, re-rendered; with ``max_zoom_out``, also
    # magnified, see ``zoomed_scene``) and all its questions are derived from that reduced scene. With one object
    # the decoder only has to read what it sees; with two it must pick the one the question names out of two, a
    # strong gradient for the match that 3-6 objects hide in noise.
    objects_curriculum: list | None = None
    # Train the tokenizer on the chat template's role names too ("user", "assistant"): spelled out letter by letter
    # they are ~12 of the ~25 tokens of a turn, almost half of the decoder's text compute. Off in the shipped recipe
    # (its tokenizer predates the option and must stay reproducible).
    role_tokens: bool = False
    # Weight of object cells (vs background cells, weight 1) in the dense probe's cross-entropies. Background is
    # ~90 % of the cells, so at 1 a probe that names every object's shape wrongly still has a low loss.
    aux_object_weight: float = 1.0
    # The first N steps train only the vision tower and its dense probe (no decoder pass, full scenes): shapes
    # are learnt from object outlines, which full scenes (small objects) show and magnified ones (big flat
    # interiors) hide. The objects curriculum's steps count from 0 as usual; it starts after these steps.
    vision_warmup_steps: int = 0
    decoder_lr_restart: bool = False  # see lr_lambda
    threads: int = 1
    num_workers: int = 1
    save_every: int = 20
    eval_every: int = 100
    max_minutes: float | None = None
    resume: bool = True
    progress: bool = True
    # Every N steps, one plain text line with the running losses (for logs of runs without a terminal; 0: never).
    log_every: int = 0
    tokenizer_vocab_size: int = 400
    min_pixels: int = 56 * 56
    max_pixels: int = 448 * 448
    max_new_tokens: int = 4
    model: MiniModelSpec = field(default_factory=MiniModelSpec)

    @classmethod
    def from_dict(cls, data: dict, overrides: list[str] | None = None) -> "PretrainConfig":
        from ..train.trainer import parse_value, set_dotted  # the same key=value syntax as `glimpseprune train`

        data = json.loads(json.dumps(data))
        data = {k: v for k, v in data.items() if not k.startswith("_")}
        for item in overrides or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"override {item!r} is not key=value")
            set_dotted(data, key.strip(), parse_value(value))
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown pretrain config keys: {sorted(unknown)}")
        model = data.pop("model", {}) or {}
        unknown = set(model) - {f.name for f in fields(MiniModelSpec)}
        if unknown:
            raise ValueError(f"unknown model keys: {sorted(unknown)}")
        return cls(**data, model=MiniModelSpec(**model))

    @classmethod
    def from_file(cls, path, overrides: list[str] | None = None) -> "PretrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()), overrides)

    def to_dict(self) -> dict:
        return asdict(self)


ATTN_FROM = ("answer", "question")  # see PretrainConfig.attn_from
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


# ---- data ------------------------------------------------------------------------------------------------------

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


N_COLOURS, N_SHAPES = 7, 6  # background + 6 colours, background + 5 shapes


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


def _worker_init(_):
    import torch

    torch.set_num_threads(1)


# ---- model -----------------------------------------------------------------------------------------------------

def build_model(tokenizer, spec: MiniModelSpec, seed: int):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    head_dim = spec.text_hidden // spec.text_heads
    if head_dim % 8:
        raise ValueError(f"text head dim {head_dim} must be a multiple of 8 (mRoPE sections)")
    quarter = head_dim // 8
    mrope = [head_dim // 2 - 2 * (3 * quarter // 2), 3 * quarter // 2, 3 * quarter // 2]  # sums to head_dim/2
    ids = tokenizer.convert_tokens_to_ids
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=spec.text_hidden, intermediate_size=spec.text_intermediate,
            num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
            num_key_value_heads=spec.text_kv_heads, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        ),
        vision_config=dict(
            depth=spec.vision_depth, hidden_size=spec.vision_hidden, intermediate_size=spec.vision_intermediate,
            num_heads=spec.vision_heads, patch_size=spec.patch_size, spatial_merge_size=2, temporal_patch_size=2,
            window_size=spec.window_size, out_hidden_size=spec.text_hidden,
            fullatt_block_indexes=list(spec.fullatt_blocks),
        ),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=spec.tie_word_embeddings, initializer_range=spec.initializer_range,
    )
    cfg.text_config.initializer_range = cfg.vision_config.initializer_range = spec.initializer_range
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(cfg)
        with torch.no_grad():
            if spec.embed_init_std:
                model.get_input_embeddings().weight.normal_(0.0, spec.embed_init_std)
            if spec.merger_init_std is not None:
                model.model.visual.merger.mlp[-1].weight.normal_(0.0, spec.merger_init_std)
            if spec.resid_init_std is not None:
                for layer in model.model.language_model.layers:
                    layer.self_attn.o_proj.weight.normal_(0.0, spec.resid_init_std)
                    layer.mlp.down_proj.weight.normal_(0.0, spec.resid_init_std)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False
    return model


def box_attention_shares(attentions, layers, input_ids, labels, box_masks, image_token_id, query_starts=None):
    """Per layer and supervised position: the share of its visual attention (mean over heads) on its answer's box
    tokens. The supervised positions of an answer with boxes: the one that predicts it, or, where ``query_starts``
    gives a start for it, every position from that start to the one that predicts it.

    Returns ``(shares [len(layers), rows], weights [rows], n_answers)``, ``weights`` = 1 / (the answer's number of
    rows), rows in answer order; None when no answer has boxes."""
    import torch

    rows_b, rows_q, box_cols, weights, n_answers = [], [], [], [], 0
    seq = input_ids.shape[1]
    for b, masks in enumerate(box_masks):
        lab = labels[b] != -100
        starts = (lab & ~torch.cat([lab.new_zeros(1), lab[:-1]])).nonzero().squeeze(1).tolist()
        vis = (input_ids[b] == image_token_id).nonzero().squeeze(1)
        firsts = query_starts[b] if query_starts is not None else [None] * len(starts)
        for q_start, mask, first in zip(starts, masks, firsts):
            if mask is None or not mask.any() or len(vis) != len(mask):
                continue
            q = q_start - 1  # the position that predicts the answer's first token
            rows = list(range(q if first is None else first, q + 1))
            cols = torch.zeros(seq, dtype=torch.bool)
            cols[vis[mask]] = True
            rows_b += [b] * len(rows)
            rows_q += rows
            box_cols += [cols] * len(rows)
            weights += [1.0 / len(rows)] * len(rows)
            n_answers += 1
    if not n_answers:
        return None
    rows_b, rows_q = torch.tensor(rows_b), torch.tensor(rows_q)
    on_box = torch.stack(box_cols).to(attentions[0].dtype)  # [rows, seq]
    on_image = (input_ids == image_token_id)[rows_b].to(attentions[0].dtype)
    shares = []
    # One gather per layer (a loop of per-answer slices made backward write a full-size gradient per slice).
    for layer in layers:
        att = attentions[layer].mean(1)[rows_b, rows_q]  # [rows, seq]
        shares.append((att * on_box).sum(-1) / (att * on_image).sum(-1).clamp_min(1e-9))
    return torch.stack(shares), torch.tensor(weights, dtype=attentions[0].dtype), n_answers


def grounding_loss(attentions, layers, input_ids, labels, box_masks, image_token_id, query_starts=None):
    """Mean over answers with boxes and over ``layers`` of -log(share of the visual attention on the box tokens),
    averaged over the answer's supervised positions (:func:`box_attention_shares`)."""
    import torch

    found = box_attention_shares(attentions, layers, input_ids, labels, box_masks, image_token_id, query_starts)
    if found is None:
        return None
    shares, weights, n_answers = found
    return (weights * -torch.log(shares.clamp_min(1e-6))).sum() / (n_answers * len(layers))


def rms_normalised(x):
    """Parameter-free RMS norm over the last dimension: what the probes read (they must not reward large tokens)."""
    import torch

    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def weighted_cross_entropy(logits, targets, object_weight: float = 1.0):
    """Mean cross-entropy over cells (``-100`` ignored) where object cells (target > 0) weigh ``object_weight``."""
    import torch
    from torch import nn

    valid = targets >= 0
    weights = torch.where(targets > 0, float(object_weight), 1.0) * valid
    ce = nn.functional.cross_entropy(logits, targets.clamp_min(0), reduction="none")
    return (ce * weights).sum() / weights.sum().clamp_min(1e-9)


def word_class_ids(tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids standing for each colour and each shape word (single-token spellings only)."""
    from ..data.scenes import COLOURS, PLURALS, SHAPES

    def ids(words):
        out = []
        for w in words:
            pieces = tokenizer(w, add_special_tokens=False)["input_ids"]
            if len(pieces) == 1:
                out.append(pieces[0])
        if not out:
            raise ValueError(f"none of {words} is a single token")
        return out

    colours = [ids([c, " " + c]) for c in COLOURS]
    shapes = [ids([s, " " + s, " " + PLURALS[s]]) for s in SHAPES]
    return colours, shapes


def aligned_logits(merged, logits, embeddings, colour_ids, shape_ids, scale):
    """Replace the object-class logits of the colour and covering-shape probes with scale·cos(token, word)."""
    import torch
    import torch.nn.functional as F

    def classes(groups):
        return torch.stack([embeddings[g].mean(0) for g in groups])

    h = F.normalize(merged, dim=-1)
    colour = scale * h @ F.normalize(classes(colour_ids), dim=-1).T
    shape = scale * h @ F.normalize(classes(shape_ids), dim=-1).T
    c_bg, _, s_bg, rest = torch.split(logits, [1, N_COLOURS - 1, 1, logits.shape[-1] - N_COLOURS - 1], dim=-1)
    return torch.cat([c_bg, colour, s_bg, shape, rest[:, N_SHAPES - 1:]], dim=-1)


def pointer_loss(logits, targets, grid_thw, null_logit):
    """Softmax relevance loss over each image's visual tokens plus a null slot (see ``relevance_loss``).

    logits, targets: [n_visual_total] for the whole batch, images in order; grid_thw: [n_images, 3] patch grids.
    """
    import torch

    counts = (grid_thw.prod(-1) // 4).tolist()  # 2x2 merge
    terms = []
    for z, t in zip(torch.split(logits, counts), torch.split(targets, counts)):
        pos = t > 0.5
        neg_and_null = torch.cat([z[~pos], null_logit.reshape(1)])
        if pos.any():
            # each marked token against every unmarked token and the null slot
            others = torch.logsumexp(neg_and_null, 0)
            terms.append((torch.logaddexp(z[pos], others) - z[pos]).mean())
        else:
            terms.append(torch.logsumexp(neg_and_null, 0) - null_logit)
    return torch.stack(terms).mean()


def build_tokenizer_processor(examples: list[Example], cfg: PretrainConfig, synthetic: bool):
    from ..tiny import build_qwen_processor, build_qwen_tokenizer

    questions = {ex.question for ex in examples}
    if cfg.lowercase_prob:
        questions |= {q[:1].lower() + q[1:] for q in questions}
    corpus = sorted(questions | {ex.answer for ex in examples})
    if synthetic:
        from ..data.scenes import all_texts

        extra = set(all_texts())
        if cfg.lowercase_prob:
            extra |= {t[:1].lower() + t[1:] for t in extra}
        corpus = sorted(set(corpus) | extra)
    if cfg.role_tokens:
        corpus = sorted(set(corpus) | {"system", "user", "assistant"})
    tok = build_qwen_tokenizer(corpus, vocab_size=cfg.tokenizer_vocab_size)
    return build_qwen_processor(tok, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels,
                                patch_size=cfg.model.patch_size, chat_template=chat_template(cfg.prompt_order))


def chat_template(prompt_order: str) -> str:
    from ..tiny import QWEN_CHAT_TEMPLATE, QWEN_TEXT_FIRST_CHAT_TEMPLATE

    templates = {"image_first": QWEN_CHAT_TEMPLATE, "text_first": QWEN_TEXT_FIRST_CHAT_TEMPLATE}
    if prompt_order not in templates:
        raise ValueError(f"prompt_order must be one of {sorted(templates)}, got {prompt_order!r}")
    return templates[prompt_order]


def save_model(model, processor, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)


# ---- evaluation ------------------------------------------------------------------------------------------------

def greedy_answers(model, processor, examples: list[Example], batch_size: int = 16, max_new_tokens: int = 4):
    """Plain (unpruned) greedy answers with the stock ``generate``."""
    import torch

    from ..processing import build_inputs

    answers = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            inputs = build_inputs(processor, [ex.question for ex in chunk], [[example_image(ex)] for ex in chunk])
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            answers += [a.strip() for a in processor.batch_decode(out[:, inputs["input_ids"].shape[1]:],
                                                                  skip_special_tokens=True)]
    return answers


def accuracy(answers: list[str], examples: list[Example]) -> float:
    from ..eval.scorers import exact_match

    return sum(exact_match(a, ex.answer) for a, ex in zip(answers, examples)) / max(len(examples), 1)


# ---- training --------------------------------------------------------------------------------------------------

def lr_lambda(step: int, cfg: PretrainConfig) -> float:
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


def pretrain(cfg: PretrainConfig, log=print) -> dict:
    import torch
    from torch import nn
    from transformers import AutoModelForImageTextToText

    from ..processing import load_processor
    from ..state_io import load_state, refuse_pickle, save_state, state_exists

    torch.set_num_threads(cfg.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    synthetic = cfg.data is None
    if synthetic:
        s = cfg.synthetic
        train = synthetic_examples(s["n_train"], s.get("seed", 0), s.get("size", 448), "train")
    else:
        train = record_examples(cfg.data)
    if cfg.val_data:
        val = record_examples(cfg.val_data)[:cfg.n_val]
    elif synthetic:
        val = synthetic_examples(cfg.n_val, cfg.synthetic.get("seed", 0), cfg.synthetic.get("size", 448), "val")
    else:
        val = []

    chat_template(cfg.prompt_order)  # validate before any work
    check_choice("attn_from", cfg.attn_from, ATTN_FROM)
    check_choice("turn_sampling", cfg.turn_sampling, TURN_SAMPLINGS)
    if cfg.attn_weight and not all(0 <= int(k) < cfg.model.text_layers for k in cfg.attn_layers):
        raise ValueError(f"attn_layers must be decoder layer indices in 0..{cfg.model.text_layers - 1}, "
                         f"got {cfg.attn_layers}")
    check_objects_curriculum(cfg.objects_curriculum)
    if cfg.relevance_weight and not 1 <= cfg.relevance_layer <= cfg.model.text_layers:
        raise ValueError(f"relevance_layer must be in 1..{cfg.model.text_layers}, got {cfg.relevance_layer}")
    aux_head = nn.Linear(cfg.model.text_hidden, N_COLOURS + 2 * N_SHAPES)
    rel_head = nn.Linear(cfg.model.text_hidden, 1)
    rel_null = nn.Parameter(torch.zeros(()))  # the "nothing here" logit of the softmax relevance loss
    aux_scale = nn.Parameter(torch.tensor(10.0))  # temperature of the aligned probe
    state = None
    if cfg.resume and (ckpt / "state.pt").is_file() and not state_exists(ckpt / "state"):
        raise refuse_pickle(ckpt / "state.pt", "pretrain state")  # older versions pickled it: never unpickled
    if cfg.resume and state_exists(ckpt / "state"):
        model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float32)
        processor = load_processor(ckpt, model.config.model_type)
        state = load_state(ckpt / "state")  # safetensors + JSON: a planted checkpoint cannot run code
        aux_head.load_state_dict(state["aux_head"])
        if "rel_head" in state:
            rel_head.load_state_dict(state["rel_head"])
            with torch.no_grad():
                rel_null.copy_(state["rel_null"])
                aux_scale.copy_(state.get("aux_scale", aux_scale))
        log(f"[pretrain-mini] resuming from {ckpt} at step {state['step']}")
    else:
        processor = build_tokenizer_processor(train, cfg, synthetic)
        model = build_model(processor.tokenizer, cfg.model, cfg.seed)
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed + 1)
            aux_head.reset_parameters()
            rel_head.reset_parameters()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[pretrain-mini] {len(train)} training examples, {len(val)} validation; model {n_params / 1e6:.2f} M "
        f"parameters; {cfg.steps} steps of {cfg.batch_size}; {cfg.threads} thread(s)")

    params = list(model.parameters()) + list(aux_head.parameters()) + list(rel_head.parameters()) + [rel_null, aux_scale]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, cfg))
    start, elapsed, history = 0, 0.0, []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, elapsed, history = state["step"], state["elapsed"], state["history"]

    if cfg.attn_weight:
        # The grounding loss needs attention weights: eager attention in the decoder (the ViT keeps SDPA).
        model.config.text_config._attn_implementation = "eager"
    captured = {}
    hook = model.model.visual.register_forward_hook(
        lambda _m, _a, output: captured.__setitem__("merged", output.pooler_output)
    )
    collator = Collator(processor, cfg.attn_from)
    word_ids = word_class_ids(processor.tokenizer) if cfg.aux_aligned else None
    pixels_for_step = None
    if cfg.warmup_pixels:
        warm_px, warm_steps = int(cfg.warmup_pixels["max_pixels"]), int(cfg.warmup_pixels["steps"])
        pixels_for_step = (cfg.min_pixels, lambda s: warm_px if s < warm_steps else cfg.max_pixels)
    # The curriculum changes the batches' image size: give them their own processor, the saved one must not change.
    batches = StepBatches(train, Collator(copy.deepcopy(processor), cfg.attn_from) if pixels_for_step else collator,
                          cfg.batch_size, cfg.seed, start, cfg.steps, cfg.lowercase_prob, cfg.extra_turns,
                          pixels_for_step, cfg.objects_curriculum, cfg.vision_warmup_steps, cfg.turn_sampling)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=cfg.num_workers,
                                         worker_init_fn=_worker_init if cfg.num_workers else None,
                                         prefetch_factor=2 if cfg.num_workers else None,
                                         persistent_workers=False)

    def save_checkpoint(step: int) -> None:
        tmp = out / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(model, processor, tmp)
        save_state({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "aux_head": aux_head.state_dict(), "rel_head": rel_head.state_dict(), "rel_null": rel_null.detach(),
                    "aux_scale": aux_scale.detach(), "elapsed": elapsed, "history": history,
                    "config": cfg.to_dict()}, tmp / "state")
        shutil.rmtree(ckpt, ignore_errors=True)
        tmp.rename(ckpt)

    def evaluate(step: int) -> float | None:
        if not val:
            return None
        acc = accuracy(greedy_answers(model, processor, val, max_new_tokens=cfg.max_new_tokens), val)
        history.append({"step": step, "val_em": acc, "elapsed_s": round(elapsed, 1)})
        model.train()
        return acc

    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="pretrain-mini", dynamic_ncols=True)
    model.train()
    step, stopped, t_last = start, False, time.perf_counter()
    ema, ema_attn = None, None
    try:
        for batch in loader:
            batch, extras = split_batch(batch)
            aux_targets, box_masks = extras["aux_targets"], extras["box_masks"]
            query_starts, rel_targets = extras["query_starts"], extras["relevance_targets"]
            vision_only = step < cfg.vision_warmup_steps
            if vision_only:  # the vision tower and its probe alone (the hook captures the merged tokens)
                model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
                lm = None
                loss = torch.zeros(())
            else:
                lm = model(**batch, output_attentions=bool(cfg.attn_weight),
                           output_hidden_states=bool(cfg.relevance_weight))
                loss = lm.loss
            rel_loss = None
            if cfg.relevance_weight and not vision_only:
                hidden = lm.hidden_states[cfg.relevance_layer][batch["input_ids"] == model.config.image_token_id]
                hidden = rms_normalised(hidden)
                rel_logits = rel_head(hidden).squeeze(-1)
                if cfg.relevance_loss == "softmax":
                    rel_loss = pointer_loss(rel_logits, rel_targets, batch["image_grid_thw"],
                                            rel_null)
                else:
                    rel_loss = nn.functional.binary_cross_entropy_with_logits(
                        rel_logits, rel_targets, pos_weight=torch.tensor(cfg.relevance_pos_weight))
                loss = loss + cfg.relevance_weight * rel_loss
            attn_loss = None
            if cfg.attn_weight and not vision_only:
                attn_loss = grounding_loss(lm.attentions, cfg.attn_layers, batch["input_ids"], batch["labels"],
                                           box_masks, model.config.image_token_id, query_starts)
                if attn_loss is not None:
                    loss = loss + cfg.attn_weight * attn_loss
            aux_loss = torch.zeros(())
            if (cfg.aux_weight or vision_only) and (aux_targets >= 0).any():
                merged = rms_normalised(captured["merged"])
                logits = aux_head(merged)
                if cfg.aux_aligned:
                    logits = aligned_logits(merged, logits, model.get_input_embeddings().weight, *word_ids, aux_scale)
                parts = torch.split(logits, [N_COLOURS, N_SHAPES, N_SHAPES], dim=-1)
                aux_loss = sum(weighted_cross_entropy(p, aux_targets[k], cfg.aux_object_weight)
                               for k, p in enumerate(parts)) / 3
                loss = loss + (cfg.aux_weight or 1.0) * aux_loss
            if not loss.requires_grad:
                raise ValueError(f"step {step}: nothing to train (vision_warmup_steps needs records with a scene)")
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            now = time.perf_counter()
            elapsed += now - t_last
            t_last = now
            if lm is not None:
                lm_value = float(lm.loss.detach())
                ema = lm_value if ema is None else 0.9 * ema + 0.1 * lm_value
            if attn_loss is not None:
                a_value = float(attn_loss.detach())
                ema_attn = a_value if ema_attn is None else 0.9 * ema_attn + 0.1 * a_value
            if cfg.log_every and step % cfg.log_every == 0:
                log(f"[pretrain-mini] step {step}: lm {'-' if ema is None else f'{ema:.3f}'} "
                    f"aux {float(aux_loss.detach()):.3f}" + ("" if ema_attn is None else f" attn {ema_attn:.3f}")
                    + f" lr {scheduler.get_last_lr()[0]:.1e} ({elapsed / 60:.1f} min)")
            if bar is not None:
                bar.update(1)
                post = dict(lm="-" if ema is None else f"{ema:.3f}", aux=f"{float(aux_loss.detach()):.3f}")
                if rel_loss is not None:
                    post["rel"] = f"{float(rel_loss.detach()):.3f}"
                if attn_loss is not None:
                    post["attn"] = f"{float(attn_loss.detach()):.3f}"
                bar.set_postfix(**post, lr=f"{scheduler.get_last_lr()[0]:.1e}")
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                acc = evaluate(step)
                if acc is not None:
                    log(f"[pretrain-mini] step {step}: val exact match {100 * acc:.1f} % ({elapsed / 60:.1f} min)")
                t_last = time.perf_counter()
            if step % cfg.save_every == 0 or step == cfg.steps:
                save_checkpoint(step)
                t_last = time.perf_counter()
            if cfg.max_minutes is not None and elapsed > 60 * cfg.max_minutes and step < cfg.steps:
                save_checkpoint(step)
                log(f"[pretrain-mini] time budget of {cfg.max_minutes} min used at step {step}: checkpoint saved, "
                    "run again to continue")
                stopped = True
                break
    finally:
        hook.remove()
        if bar is not None:
            bar.close()
    metrics = {"step": step, "train_seconds": round(elapsed, 1), "history": history, "done": not stopped}
    if not stopped and step >= cfg.steps:
        acc = evaluate(step)
        metrics["val_em"] = acc
        if acc is not None:
            log(f"[pretrain-mini] final val exact match {100 * acc:.1f} % on {len(val)} items")
        model.eval()
        save_model(model, processor, out / "final")
        metrics["final"] = str(out / "final")
        log(f"[pretrain-mini] saved {out / 'final'} after {elapsed / 60:.1f} min of training")
    metrics["config"] = cfg.to_dict()
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="pretraining config (JSON); default: the built-in recipe "
                        "(= configs/mini/pretrain.json)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. steps=100")


def run(args: argparse.Namespace) -> int:
    if args.config:
        cfg = PretrainConfig.from_file(args.config, args.overrides)
    else:
        cfg = PretrainConfig.from_dict(DEFAULTS, args.overrides)
    metrics = pretrain(cfg)
    return 0 if metrics.get("done") else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glimpseprune pretrain-mini", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
