"""GlimpsePrune+ on the mini model: GP+ against the unpruned base, stage 1 and same-K random, paired.

``python -m glimpseprune.mini.evaluate_plus --plus runs/plus_mini/final [--stage1 DIR] [--n 500] [--out FILE]``

On the first ``n`` glimpse-shapes *test* items (never trained or tuned on), greedy, ``max_new_tokens=4``, exact match
against ``short_answer``, it scores

- ``base``: the base model, unpruned;
- ``stage1``: the base model with stage-1 modules (``--stage1``; default the shipped ones, at their own K);
- ``plus_unpruned``: the GP+ LLM (LoRA merged), unpruned;
- ``plus``: GP+ (LoRA merged + the GP+ modules, at their K);
- ``random``: the GP+ LLM with a random selection at GP+'s K keeping exactly GP+'s per-sample kept count
  (the selection control: the same model, cut layer and budget; only *which* tokens differs);

and the exact McNemar test (``eval.stats.paired_exact_test``) of ``plus`` against each other row, overall and per
question type.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

ROWS = ("base", "stage1", "plus_unpruned", "plus", "random")


def random_keep(counts: list[int], totals: list[int], seed: int) -> list:
    import torch

    out = []
    for i, (k, n) in enumerate(zip(counts, totals)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        keep = torch.zeros(n, dtype=torch.bool)
        keep[torch.randperm(n, generator=g)[:k]] = True
        out.append(keep)
    return out


def evaluate(base, stage1, plus, examples, batch_size: int = 8, max_new_tokens: int = 4, seed: int = 0,
             progress: bool = True) -> dict:
    from ..eval.scorers import exact_match
    from ..processing import build_inputs
    from .pretrain_data import example_image

    rows = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(examples), desc="evaluate GP+", dynamic_ncols=True)
    t0 = time.perf_counter()
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        inputs = build_inputs(base.processor, [ex.question for ex in chunk], [[example_image(ex)] for ex in chunk])

        def answers(model, **kw):
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, **kw)
            texts = model.processor.batch_decode(out.generated, skip_special_tokens=True)
            return [t.strip() for t in texts], out.pruning

        texts, kept = {}, {}
        texts["base"], _ = answers(base, method="none")
        texts["stage1"], s1 = answers(stage1, method="glimpse")
        texts["plus_unpruned"], _ = answers(plus, method="none")
        texts["plus"], sp = answers(plus, method="glimpse")
        counts = [s.kept for s in sp.samples]
        totals = [s.total for s in sp.samples]
        keep = random_keep(counts, totals, seed + start)
        texts["random"], sr = answers(plus, keep_masks=keep, prune_layer=plus.config.prune_layer)
        kept = {"stage1": s1, "plus": sp, "random": sr}
        for b, ex in enumerate(chunk):
            row = {"id": ex.id, "qtype": ex.qtype, "question": ex.question, "reference": ex.answer,
                   "total": totals[b]}
            for name in ROWS:
                row[name] = texts[name][b]
                row[f"em_{name}"] = exact_match(texts[name][b], ex.answer)
            for name, state in kept.items():
                row[f"kept_{name}"] = state.samples[b].kept
            assert row["kept_random"] == row["kept_plus"]  # the control keeps GP+'s count exactly
            rows.append(row)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return summarize(rows, time.perf_counter() - t0, stage1.config.prune_layer, plus.config.prune_layer)


def summarize(rows: list[dict], seconds: float, stage1_k: int, plus_k: int) -> dict:
    from ..eval.stats import paired_exact_test

    def block(rs):
        out = {"n": len(rs)}
        for name in ROWS:
            out[f"em_{name}"] = sum(r[f"em_{name}"] for r in rs) / len(rs)
        for name in ("stage1", "plus"):
            out[f"kept_ratio_{name}"] = sum(r[f"kept_{name}"] / r["total"] for r in rs) / len(rs)
        out["paired"] = {f"plus_vs_{name}": paired_exact_test([r["em_plus"] for r in rs], [r[f"em_{name}"] for r in rs])
                         for name in ROWS if name != "plus"}
        return out

    by_type = defaultdict(list)
    for r in rows:
        by_type[r["qtype"]].append(r)
    report = block(rows)
    report.update({"stage1_prune_layer": stage1_k, "plus_prune_layer": plus_k, "seconds": round(seconds, 1),
                   "per_qtype": {q: block(rs) for q, rs in sorted(by_type.items())}, "rows": rows})
    return report


def load_models(plus_dir, stage1_dir=None, base_dir=None):
    from ..assets import MINI_DIR
    from ..model import GlimpsePrune

    base_dir = base_dir or MINI_DIR / "base"
    base = GlimpsePrune.from_pretrained(base_dir, device="cpu")
    stage1 = GlimpsePrune.from_pretrained(base_dir, stage1_dir or MINI_DIR / "glimpse", device="cpu")
    plus_dir = Path(plus_dir)
    plus = GlimpsePrune.from_pretrained(base_dir, plus_dir / "glimpse", adapter=plus_dir / "adapter", device="cpu")
    return base, stage1, plus


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(prog="python -m glimpseprune.mini.evaluate_plus", description=__doc__.splitlines()[0])
    p.add_argument("--plus", required=True, help="GP+ artefacts folder (adapter/ + glimpse/), e.g. runs/plus_mini/final")
    p.add_argument("--stage1", help="stage-1 modules on the base (default: the shipped ones)")
    p.add_argument("--base", help="base model folder (default: the embedded mini model)")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seed", type=int, default=0, help="benchmark seed")
    p.add_argument("--split", default="test", choices=("test", "val"),
                   help="item split: report on test; compare GP+ recipe variants on val (never choose on test)")
    p.add_argument("--random-seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write the full report (with per-item rows) here as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from .pretrain_data import synthetic_examples

    base, stage1, plus = load_models(args.plus, args.stage1, args.base)
    examples = synthetic_examples(args.n, args.seed, 448, args.split)
    report = evaluate(base, stage1, plus, examples, batch_size=args.batch_size, seed=args.random_seed)
    report["split"] = args.split
    short = {k: v for k, v in report.items() if k != "rows"}
    print(json.dumps(short, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
