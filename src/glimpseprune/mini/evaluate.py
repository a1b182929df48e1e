"""Measure a model on glimpse-shapes through the inference engine: unpruned vs GlimpsePrune.

``python -m glimpseprune.mini.evaluate [--model BASE --glimpse MODULES] [--n 500] [--seed 0] [--out FILE.json]``

Defaults: the embedded mini model and the first ``n`` items of the benchmark's *test* split (generated in
memory; the same items ``python -m glimpseprune.data.scenes DIR --test N`` writes). For each item: greedy answers
with ``method="none"`` and ``method="glimpse"`` (``GlimpsePrune.generate``, batch of ``--batch-size``), exact match
against ``short_answer`` (:func:`glimpseprune.eval.scorers.exact_match`), the kept ratio of the visual tokens,
and the token-level IoU of the kept mask against the ground-truth boxes
(:func:`glimpseprune.data.masks.qwen_box_mask` / :func:`~glimpseprune.data.masks.mask_metrics`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict


def load(model_dir=None, glimpse_dir=None):
    from ..model import GlimpsePrune

    if model_dir is None:
        from .. import assets

        model, _ = assets.default_model(device="cpu", glimpse=glimpse_dir)
        return model
    return GlimpsePrune.from_pretrained(model_dir, glimpse_dir, device="cpu")


def evaluate(model, examples, batch_size: int = 8, max_new_tokens: int = 4, progress: bool = True) -> dict:
    import numpy as np

    from ..data.masks import mask_metrics, qwen_box_mask
    from ..eval.scorers import exact_match
    from ..processing import build_inputs
    from .pretrain import example_image

    image_processor = model.processor.image_processor
    grid_kwargs = dict(patch_size=image_processor.patch_size, merge_size=image_processor.merge_size,
                       min_pixels=image_processor.size["shortest_edge"],
                       max_pixels=image_processor.size["longest_edge"])
    rows = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(examples), desc="evaluate", dynamic_ncols=True)
    t0 = time.perf_counter()
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        images = [example_image(ex) for ex in chunk]
        inputs = build_inputs(model.processor, [ex.question for ex in chunk], [[im] for im in images])
        outs = {}
        for method in ("none", "glimpse"):
            out = model.generate(**inputs, method=method, max_new_tokens=max_new_tokens)
            texts = model.processor.batch_decode(out.generated, skip_special_tokens=True)
            outs[method] = (out, [t.strip() for t in texts])
        state = outs["glimpse"][0].pruning
        for b, ex in enumerate(chunk):
            im = state.samples[b].images[0]
            target = qwen_box_mask(ex.boxes, images[b].width, images[b].height, **grid_kwargs).reshape(-1)
            metrics = mask_metrics(im.keep.cpu().numpy().astype(bool), np.asarray(target, dtype=bool))
            rows.append({
                "id": ex.id, "qtype": ex.qtype, "question": ex.question, "reference": ex.answer,
                "unpruned": outs["none"][1][b], "pruned": outs["glimpse"][1][b],
                "em_unpruned": exact_match(outs["none"][1][b], ex.answer),
                "em_pruned": exact_match(outs["glimpse"][1][b], ex.answer),
                "kept": im.kept, "total": im.total, "kept_ratio": im.ratio,
                "has_box": bool(ex.boxes), "iou": metrics["iou"], "recall": metrics["recall"],
                "precision": metrics["precision"],
            })
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return summarize(rows, time.perf_counter() - t0)


def summarize(rows: list[dict], seconds: float) -> dict:
    ratios = [r["kept_ratio"] for r in rows]
    boxed = [r for r in rows if r["has_box"]]
    by_type = defaultdict(list)
    for r in rows:
        by_type[r["qtype"]].append(r)

    def mean(xs):
        return sum(xs) / len(xs) if xs else None

    return {
        "n": len(rows),
        "em_unpruned": mean([r["em_unpruned"] for r in rows]),
        "em_pruned": mean([r["em_pruned"] for r in rows]),
        "kept_ratio_mean": mean(ratios),
        "kept_ratio_min": min(ratios),
        "kept_ratio_median": statistics.median(ratios),
        "kept_ratio_max": max(ratios),
        "kept_tokens_min": min(r["kept"] for r in rows),
        "kept_tokens_max": max(r["kept"] for r in rows),
        "visual_tokens_per_image": rows[0]["total"],
        "n_with_box": len(boxed),
        "mask_iou_mean": mean([r["iou"] for r in boxed]),
        "mask_recall_mean": mean([r["recall"] for r in boxed]),
        "mask_precision_mean": mean([r["precision"] for r in boxed]),
        "per_qtype": {
            q: {"n": len(rs), "em_unpruned": mean([r["em_unpruned"] for r in rs]),
                "em_pruned": mean([r["em_pruned"] for r in rs]),
                "kept_ratio_mean": mean([r["kept_ratio"] for r in rs])}
            for q, rs in sorted(by_type.items())
        },
        "seconds": round(seconds, 1),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    from ..data.scenes import LAYOUTS

    p = argparse.ArgumentParser(prog="python -m glimpseprune.mini.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="base model folder (default: the embedded mini model)")
    p.add_argument("--glimpse", help="GlimpsePrune modules folder (default: the embedded ones)")
    p.add_argument("--n", type=int, default=500, help="test items (the first n of the test split)")
    p.add_argument("--seed", type=int, default=0, help="benchmark seed")
    p.add_argument("--split", default="test")
    p.add_argument("--layout", default="default", choices=sorted(LAYOUTS),
                   help="scene layout (glimpseprune.data.scenes.LAYOUTS); the model trains on default")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="write the full report (with per-item rows) here as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from .pretrain import synthetic_examples

    model = load(args.model, args.glimpse)
    examples = synthetic_examples(args.n, args.seed, 448, args.split, args.layout)
    report = evaluate(model, examples, batch_size=args.batch_size)
    short = {k: v for k, v in report.items() if k != "rows"}
    print(json.dumps(short, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
