"""Measure a model on glimpse-shapes video clips: unpruned vs GlimpsePrune vs same-K random (docs/method.md §10.1).

``python -m glimpseprune.mini.evaluate_video [--model BASE --glimpse MODULES] [--n 200] [--seed 0] [--out FILE.json]``

Defaults: the embedded mini model and the first ``n`` clips of the *test* split of
:mod:`glimpseprune.data.video_shapes` (224 px, 8 frames at 2 fps: 4 temporal patches of 8 × 8 merged tokens),
generated in memory. For each clip: greedy answers with ``method="none"``, ``method="glimpse"`` and the same-K random
control (``random`` at GlimpsePrune's cut layer with GlimpsePrune's per-sample kept counts on the same batch), all
through ``GlimpsePrune.generate`` on ``build_inputs(videos=...)``; exact match against ``short_answer``. The summary
states GlimpsePrune's accuracy as a margin over the control with the exact paired test.

The embedded mini model and its modules were trained on still images only: what this measures is how they transfer
to video with no video training, not a video model.
"""

from __future__ import annotations

import argparse
import json
import time


def evaluate(model, pairs, batch_size: int = 8, random_seed: int = 0) -> dict:
    from ..data.video_shapes import render_clip
    from ..eval.scorers import exact_match
    from ..eval.stats import paired_exact_test
    from ..methods.random import same_count_control
    from ..processing import build_inputs

    methods = ("none", "glimpse", "random_same_counts")
    scores = {m: [] for m in methods}
    kept, total, rows = [], [], []
    start = time.perf_counter()
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        inputs = build_inputs(model.processor, [r["question"] for _, r in chunk], [[] for _ in chunk],
                              videos=[[render_clip(c)] for c, _ in chunk], model_type=model.model.config.model_type)
        outs = {"none": model.generate(**inputs, method="none", max_new_tokens=4),
                "glimpse": model.generate(**inputs, method="glimpse", max_new_tokens=4)}
        control = same_count_control(model, outs["glimpse"].pruning, seed=random_seed)
        outs["random_same_counts"] = model.generate(**inputs, method=control, max_new_tokens=4)
        answers = {m: model.processor.batch_decode(out.generated, skip_special_tokens=True) for m, out in outs.items()}
        for b, (_, record) in enumerate(chunk):
            sample = outs["glimpse"].pruning.samples[b]
            row = {"id": record["id"], "answer": record["short_answer"], "kept": sample.kept, "total": sample.total}
            for m in methods:
                row[m] = answers[m][b].strip()
                scores[m].append(int(exact_match(answers[m][b], record["short_answer"])))
            rows.append(row)
            kept.append(sample.kept)
            total.append(sample.total)
    ordered = sorted(kept)
    return {
        "items": len(pairs),
        "prune_layer": model.config.prune_layer,
        "accuracy": {m: sum(s) / len(s) for m, s in scores.items()},
        "glimpse_minus_random": (sum(scores["glimpse"]) - sum(scores["random_same_counts"])) / len(pairs),
        "glimpse_vs_random": paired_exact_test(scores["glimpse"], scores["random_same_counts"]),
        "glimpse_vs_none": paired_exact_test(scores["glimpse"], scores["none"]),
        "keep_ratio": sum(kept) / sum(total),
        "kept_median": ordered[len(ordered) // 2],
        "kept_min": ordered[0],
        "kept_max": ordered[-1],
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    from ..data.video_shapes import generate_clips
    from .evaluate import load

    p = argparse.ArgumentParser(prog="python -m glimpseprune.mini.evaluate_video", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="base model folder (default: the embedded mini model)")
    p.add_argument("--glimpse", help="GlimpsePrune modules folder (default: the embedded ones)")
    p.add_argument("--n", type=int, default=200, help="clips (the first n of the split)")
    p.add_argument("--seed", type=int, default=0, help="clip generator seed")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--random-seed", type=int, default=0, help="seed of the same-K random control")
    p.add_argument("--out", help="write the full report (with per-item rows) here as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load(args.model, args.glimpse)
    pairs = generate_clips(args.n, args.seed, args.split, size=224, frames=8)
    report = evaluate(model, pairs, batch_size=args.batch_size, random_seed=args.random_seed)
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
