"""Measure a model on glimpse-shapes through the inference engine: unpruned vs GlimpsePrune vs same-K random.

``python -m glimpseprune.mini.evaluate [--model BASE --glimpse MODULES] [--n 500] [--seed 0] [--out FILE.json]``

Defaults: the embedded mini model and the first ``n`` items of the benchmark's *test* split (generated in
memory; the same items ``python -m glimpseprune.data.scenes DIR --test N`` writes). For each item: greedy answers
with ``method="none"``, ``method="glimpse"`` and the **same-K random control** (``random`` at GlimpsePrune's cut
layer with GlimpsePrune's per-sample kept counts on the same batch, seeded: ``--random-seed``), all through
``GlimpsePrune.generate`` in batches of ``--batch-size``; exact match against ``short_answer``
(:func:`glimpseprune.eval.scorers.exact_match`), the kept ratio of the visual tokens, and the token-level IoU of
the kept mask against the ground-truth boxes (:func:`glimpseprune.adapters.qwen2_5_vl.qwen_box_mask` /
:func:`~glimpseprune.data.masks.mask_metrics`).

The summary states GlimpsePrune's accuracy as a margin over the control with the exact paired test
(:func:`glimpseprune.eval.stats.paired_exact_test`), and gives the layer-averaged retention, the analytic
LLM-prefill FLOPs ratio (:func:`glimpseprune.eval.bench.flops_for`, ViT excluded, glimpse row and VIP included) and
the measured LLM-prefill time ratio vs unpruned (``GenerateOutput.prefill_seconds``: the decoder layers, glimpse,
VIP and cut, not the ViT; the three methods run back to back on every batch, so the ratio shares the machine's
load; sums over batches and the median of per-batch ratios).
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


def evaluate(model, examples, batch_size: int = 8, max_new_tokens: int = 4, progress: bool = True,
             random_seed: int = 0, unpruned: dict[str, str] | None = None) -> dict:
    """Per-item rows and the summary. ``unpruned``: the unpruned answers by item id from an earlier run of the same
    base model (they do not depend on the modules); the unpruned pass is then skipped and no times are measured."""
    import numpy as np

    from ..adapters.qwen2_5_vl import qwen_box_mask
    from ..data.masks import mask_metrics
    from ..eval.bench import flops_for
    from ..eval.scorers import exact_match
    from ..methods.random import same_count_control
    from ..processing import build_inputs
    from .pretrain_data import example_image

    image_processor = model.processor.image_processor
    grid_kwargs = dict(patch_size=image_processor.patch_size, merge_size=image_processor.merge_size,
                       min_pixels=image_processor.size["shortest_edge"],
                       max_pixels=image_processor.size["longest_edge"])
    rows, timings = [], []
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
        for method in ("none", "glimpse", "random"):
            if method == "none" and unpruned is not None:
                continue
            chosen = model.method(method)
            if method == "random":  # same cut layer, same per-sample kept counts as GlimpsePrune on this batch
                chosen = same_count_control(model, outs["glimpse"][0].pruning, seed=random_seed)
            out = model.generate(**inputs, method=chosen, max_new_tokens=max_new_tokens)
            texts = model.processor.batch_decode(out.generated, skip_special_tokens=True)
            outs[method] = (out, [t.strip() for t in texts], chosen)
        if unpruned is None:
            timings.append({m: outs[m][0].prefill_seconds for m in outs})
        full = [unpruned[ex.id] for ex in chunk] if unpruned is not None else outs["none"][1]
        state, control = outs["glimpse"][0].pruning, outs["random"][0].pruning
        for b, ex in enumerate(chunk):
            im = state.samples[b].images[0]
            target = qwen_box_mask(ex.boxes, images[b].width, images[b].height, **grid_kwargs).reshape(-1)
            metrics = mask_metrics(im.keep.cpu().numpy().astype(bool), np.asarray(target, dtype=bool))
            n_visual = state.samples[b].total
            n_text = int(inputs["attention_mask"][b].sum()) - n_visual
            kept = {"none": n_visual, "glimpse": im.kept, "random": control.samples[b].kept}
            layer = {"none": None, "glimpse": state.prune_layer, "random": control.prune_layer}
            flops = {m: flops_for(model, model.method(m) if m != "random" else outs[m][2], n_text, n_visual, kept[m],
                                  layer[m], [n_visual], 0)["prefill_flops_without_vit"] for m in kept}
            rows.append({
                "id": ex.id, "qtype": ex.qtype, "question": ex.question, "reference": ex.answer,
                "unpruned": full[b], "pruned": outs["glimpse"][1][b], "random": outs["random"][1][b],
                "em_unpruned": exact_match(full[b], ex.answer),
                "em_pruned": exact_match(outs["glimpse"][1][b], ex.answer),
                "em_random": exact_match(outs["random"][1][b], ex.answer),
                "kept": im.kept, "total": im.total, "kept_ratio": im.ratio,
                "kept_random": control.samples[b].kept,
                "layer_averaged_retention": state.sample_retention(b),
                "prefill_flops_unpruned": flops["none"], "prefill_flops_pruned": flops["glimpse"],
                "prefill_flops_random": flops["random"],
                "has_box": bool(ex.boxes), "iou": metrics["iou"], "recall": metrics["recall"],
                "precision": metrics["precision"],
            })
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    report = summarize(rows, time.perf_counter() - t0, timings)
    report["batch_timings"] = timings  # per batch: LLM-prefill seconds of each method (to merge partial runs)
    report["prune_layer"] = model.config.prune_layer
    report["random_seed"] = random_seed
    return report


def prefill_time_ratios(timings: list[dict]) -> dict:
    """LLM-prefill seconds of each method over unpruned, from per-batch timings of the same run."""
    out = {}
    for method in ("glimpse", "random"):
        per_batch = [t[method] / t["none"] for t in timings if t.get("none")]
        out[method] = {
            "total_ratio": sum(t[method] for t in timings) / sum(t["none"] for t in timings),
            "median_batch_ratio": statistics.median(per_batch),
            "batch_ratio_q25_q75": [statistics.quantiles(per_batch, n=4)[0], statistics.quantiles(per_batch, n=4)[2]]
            if len(per_batch) >= 2 else [per_batch[0], per_batch[0]],
        }
    out["batches"] = len(timings)
    out["unpruned_seconds"] = sum(t["none"] for t in timings)
    return out


def summarize(rows: list[dict], seconds: float, timings: list[dict] | None = None) -> dict:
    from ..eval.stats import paired_exact_test

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
        "em_random": mean([r["em_random"] for r in rows]),
        "margin_over_random": mean([r["em_pruned"] for r in rows]) - mean([r["em_random"] for r in rows]),
        "paired_vs_random": paired_exact_test([r["em_pruned"] for r in rows], [r["em_random"] for r in rows]),
        "paired_vs_unpruned": paired_exact_test([r["em_pruned"] for r in rows], [r["em_unpruned"] for r in rows]),
        "random_counts_match": all(r["kept_random"] == r["kept"] for r in rows),
        "kept_ratio_mean": mean(ratios),
        "kept_ratio_min": min(ratios),
        "kept_ratio_median": statistics.median(ratios),
        "kept_ratio_max": max(ratios),
        "kept_tokens_min": min(r["kept"] for r in rows),
        "kept_tokens_max": max(r["kept"] for r in rows),
        "visual_tokens_per_image": rows[0]["total"],
        "kept_tokens_mean": mean([r["kept"] for r in rows]),
        "kept_tokens_median": statistics.median([r["kept"] for r in rows]),
        "layer_averaged_retention_mean": mean([r["layer_averaged_retention"] for r in rows]),
        "prefill_flops_ratio": sum(r["prefill_flops_pruned"] for r in rows) / sum(r["prefill_flops_unpruned"]
                                                                                   for r in rows),
        "prefill_flops_ratio_random": sum(r["prefill_flops_random"] for r in rows) / sum(
            r["prefill_flops_unpruned"] for r in rows),
        "prefill_time": prefill_time_ratios(timings) if timings else None,
        "n_with_box": len(boxed),
        "mask_iou_mean": mean([r["iou"] for r in boxed]),
        "mask_recall_mean": mean([r["recall"] for r in boxed]),
        "mask_precision_mean": mean([r["precision"] for r in boxed]),
        "per_qtype": {
            q: {"n": len(rs), "em_unpruned": mean([r["em_unpruned"] for r in rs]),
                "em_pruned": mean([r["em_pruned"] for r in rs]),
                "em_random": mean([r["em_random"] for r in rs]),
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
    p.add_argument("--random-seed", type=int, default=0, help="seed of the same-K random control")
    p.add_argument("--out", help="write the full report (with per-item rows) here as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from .pretrain_data import synthetic_examples

    model = load(args.model, args.glimpse)
    examples = synthetic_examples(args.n, args.seed, 448, args.split, args.layout)
    report = evaluate(model, examples, batch_size=args.batch_size, random_seed=args.random_seed)
    short = {k: v for k, v in report.items() if k != "rows"}
    print(json.dumps(short, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
