"""Why does a mini base model (not) answer? Three measurements on a ``pretrain-mini`` checkpoint or final folder.

``python -m glimpseprune.mini.diagnose DIR [--n 64] [--out report.json]``

1. **Exact match on easier scenes**, per question type: the val split as is, and reduced to 1 / 2 / 3 of its
   objects (with and without magnification, :func:`~glimpseprune.mini.pretrain_data.reduced_example`). A model that
   answers one word per question type scores the same everywhere; one that reads the image gains on small scenes.
2. **Does the image reach the answer?** For one-circle scenes asked "What colour is the circle?" (the same
   prompt for every image), per decoder layer: the norm of the hidden state at the position that predicts the
   answer, and how much it differs across images (mean distance to the mean over images). A spread that is a
   tiny fraction of the norm means the logits barely depend on the image (attempts A-H in
   ``docs/mini_model.md``; attempt Z explains why).
3. **Where the answer looks**: per question type and decoder layer, the share of the answer position's visual
   attention (mean over heads) that falls on the referenced objects' box tokens, on full scenes and on scenes
   reduced to 2 objects, next to the share of the image those tokens are (what looking anywhere would give).
4. **What the vision tower encodes** (checkpoints only: needs the dense probe in ``state.pt``): the probe's
   accuracy on *object* cells for colour, covering shape and centred shape. The probe's loss averages over all
   cells, mostly background, so a low loss does not mean shapes are readable.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
from pathlib import Path

SETTINGS = (("full scenes", None, None), ("1 object", 1, None), ("<=2 objects", 2, None), ("<=3 objects", 3, None),
            ("1 object, zoomed", 1, 3.0), ("<=2 objects, zoomed", 2, 3.0))


def qtype_of(question: str) -> str:
    q = question.lower()
    for prefix, name in (("what colour", "colour_of_shape"), ("what shape", "shape_of_colour"),
                         ("is there", "exists"), ("how many", "count")):
        if q.startswith(prefix):
            return name
    return "other"


def reduced_accuracy(model, processor, val, settings=SETTINGS, seed: int = 0) -> dict:
    from ..eval.scorers import exact_match
    from .base_model import greedy_answers
    from .pretrain_data import reduced_example

    out = {}
    for name, max_objects, zoom in settings:
        rng = random.Random(f"diagnose/{seed}/{name}")
        examples = [reduced_example(ex, rng, max_objects, 0, zoom) if max_objects else ex for ex in val]
        answers = greedy_answers(model, processor, examples)
        per = collections.defaultdict(list)
        for answer, ex in zip(answers, examples):
            per[qtype_of(ex.question)].append(float(exact_match(answer, ex.answer)))
        out[name] = {"exact_match": sum(map(sum, per.values())) / max(len(examples), 1),
                     "per_type": {k: {"exact_match": sum(v) / len(v), "n": len(v)} for k, v in sorted(per.items())},
                     "answers": collections.Counter(answers).most_common(8)}
    return out


def image_sensitivity(model, processor, val, seed: int = 0) -> list[dict]:
    import torch

    from .pretrain_data import Collator, Example, reduced_example, split_batch

    rng = random.Random(f"diagnose/{seed}/sensitivity")
    examples = []
    for ex in val:
        one = reduced_example(ex, rng, 1, 0)
        # one circle per image: the same prompt everywhere, so any spread comes from the image alone
        obj = dict(one.scene["objects"][0], shape="circle")
        scene = dict(one.scene, objects=[obj])
        examples.append(Example("What colour is the circle?", obj["colour"], None, scene))
    batch, _ = split_batch(Collator(processor)(examples))
    labels = batch.pop("labels")
    model.eval()
    with torch.inference_mode():
        out = model(**batch, output_hidden_states=True)
    rows = torch.arange(len(examples))
    first_answer = (labels != -100).int().argmax(1)
    report = []
    for layer, hidden in enumerate(out.hidden_states):
        states = hidden[rows, first_answer - 1]  # the position that predicts the answer
        spread = (states - states.mean(0)).norm(dim=-1).mean()
        report.append({"layer": layer, "norm": round(float(states.norm(dim=-1).mean()), 3),
                       "spread": round(float(spread), 4)})
    return report


def attention_on_boxes(model, processor, val, seed: int = 0) -> dict:
    """Per setting, question type and decoder layer: mean share of the visual attention on the box tokens."""
    import torch

    from .pretrain_data import Collator, reduced_example, split_batch
    from .probes import box_attention_shares

    out = {}
    previous = model.config.text_config._attn_implementation
    model.config.text_config._attn_implementation = "eager"  # attention weights are needed
    try:
        for name, max_objects in (("full scenes", None), ("<=2 objects", 2)):
            rng = random.Random(f"diagnose/{seed}/attention/{name}")
            examples = [reduced_example(ex, rng, max_objects, 0) if max_objects else ex for ex in val]
            examples = [ex for ex in examples if ex.boxes]
            if not examples:  # e.g. a small --n whose items all answer "no" (no boxes): nothing to measure
                out[name] = {}
                continue
            batch, extras = split_batch(Collator(processor)(examples))
            labels = batch.pop("labels")
            model.eval()
            with torch.inference_mode():
                attentions = model(**batch, output_attentions=True).attentions
            # one question per example, each with boxes: one row of shares per example, in order
            shares, _, n = box_attention_shares(attentions, range(len(attentions)), batch["input_ids"], labels,
                                                extras["box_masks"], model.config.image_token_id)
            assert n == len(examples) == shares.shape[1]
            per = collections.defaultdict(lambda: collections.defaultdict(list))
            for b, ex in enumerate(examples):
                qtype = qtype_of(ex.question)
                per[qtype]["box_area"].append(float(extras["box_masks"][b][0].float().mean()))
                for layer in range(len(attentions)):
                    per[qtype][f"layer {layer}"].append(float(shares[layer, b]))
            out[name] = {q: {k: round(sum(v) / len(v), 3) for k, v in rows.items()} | {"n": len(rows["box_area"])}
                         for q, rows in sorted(per.items())}
    finally:
        model.config.text_config._attn_implementation = previous
    return out


def probe_accuracy(directory, model, processor, val) -> dict | None:
    """Object-cell accuracy of the checkpoint's dense probe (None without ``state.json``)."""
    import torch
    from torch import nn

    from .pretrain_data import Collator
    from .probes import N_COLOURS, N_SHAPES, rms_normalised

    from ..state_io import load_state, refuse_pickle, state_exists

    stem = Path(directory) / "state"
    if not state_exists(stem):
        if (Path(directory) / "state.pt").is_file():
            raise refuse_pickle(Path(directory) / "state.pt", "pretrain state")  # older versions pickled it
        return None
    state = load_state(stem)
    head = nn.Linear(model.config.text_config.hidden_size, N_COLOURS + 2 * N_SHAPES)
    head.load_state_dict(state["aux_head"])
    batch = Collator(processor)(val)
    captured = {}
    hook = model.model.visual.register_forward_hook(lambda _m, _a, o: captured.__setitem__("m", o.pooler_output))
    try:
        with torch.inference_mode():
            model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
    finally:
        hook.remove()
    with torch.inference_mode():
        parts = torch.split(head(rms_normalised(captured["m"])), [N_COLOURS, N_SHAPES, N_SHAPES], dim=-1)
    out = {}
    for name, logits, target in zip(("colour", "covering_shape", "centred_shape"), parts, batch["aux_targets"]):
        on_object = target > 0
        out[name] = {"accuracy_on_object_cells": float((logits.argmax(-1)[on_object] == target[on_object])
                                                       .float().mean()), "cells": int(on_object.sum())}
    return out


def diagnose(directory, n: int = 64, seed: int = 0) -> dict:
    import torch
    from transformers import AutoModelForImageTextToText

    from ..processing import load_processor
    from .pretrain_data import synthetic_examples

    model = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32)
    processor = load_processor(directory, model.config.model_type)
    val = synthetic_examples(n, seed, 448, "val")
    return {"model": str(directory), "n": n,
            "exact_match": reduced_accuracy(model, processor, val, seed=seed),
            "image_sensitivity": image_sensitivity(model, processor, val[:16], seed=seed),
            "attention_on_boxes": attention_on_boxes(model, processor, val, seed=seed),
            "probe": probe_accuracy(directory, model, processor, val[:16])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="a pretrain-mini checkpoint/ or final/ folder")
    parser.add_argument("--n", type=int, default=64, help="val items per setting (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the report here (JSON)")
    args = parser.parse_args(argv)
    if not (Path(args.directory) / "config.json").is_file():
        parser.error(f"{args.directory} holds no model (config.json missing)")
    report = diagnose(args.directory, args.n, args.seed)
    for name, row in report["exact_match"].items():
        types = "  ".join(f"{k} {100 * v['exact_match']:.0f}% ({v['n']})" for k, v in row["per_type"].items())
        print(f"{name:>20}: {100 * row['exact_match']:5.1f} %   {types}")
    for row in report["image_sensitivity"]:
        print(f"layer {row['layer']}: answer-position norm {row['norm']:.2f}, spread across images {row['spread']:.4f}")
    for name, types in report["attention_on_boxes"].items():
        for qtype, row in types.items():
            layers = " ".join(f"{row[k]:.2f}" for k in row if k.startswith("layer"))
            print(f"attention on boxes, {name}, {qtype} (n={row['n']}, boxes are {100 * row['box_area']:.0f} % of "
                  f"the image): by layer {layers}")
    if report["probe"]:
        print("probe on object cells: " + ", ".join(f"{k} {100 * v['accuracy_on_object_cells']:.1f}%"
                                                    for k, v in report["probe"].items()))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
