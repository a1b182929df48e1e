"""Offline demo: unpruned vs GlimpsePrune on glimpse-shapes test scenes, written as a self-contained HTML report.

``glimpseprune demo [--n 6] [--out glimpseprune_demo] [--model BASE --glimpse MODULES]``

The scenes are the first ``n`` items of the benchmark's test split (seed 0), generated on the fly, so the demo
needs no data and no network. For each: the question, the reference answer, the unpruned answer and the
GlimpsePrune answer, how many visual tokens GlimpsePrune kept, and the prefill and decode times of both runs. The
report (``index.html``, images embedded as base64 PNG) and the PNGs (scene with ground-truth boxes; kept tokens
drawn over it) go to the output folder.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli import add_deprecated_alias, add_quiet_argument
    from .data.scenes import LAYOUTS

    parser.add_argument("--n", type=int, default=6, help="number of test scenes")
    parser.add_argument("--output", default="glimpseprune_demo", help="output folder")
    add_deprecated_alias(parser, "--out", "--output", dest="output")
    parser.add_argument("--seed", type=int, default=0, help="benchmark seed of the scenes")
    parser.add_argument("--offset", type=int, default=0, help="start at this test item")
    parser.add_argument("--layout", default="default", choices=sorted(LAYOUTS),
                        help="scene layout: default (3-6 objects, what the mini model trained on) or dense "
                             "(12-14 objects, where question-blind pruners lose the referenced object)")
    parser.add_argument("--model", help="base VLM folder (default: the embedded mini model)")
    parser.add_argument("--glimpse", help="GlimpsePrune modules folder (default: the embedded ones)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_quiet_argument(parser)


def _png_b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def run(args: argparse.Namespace) -> int:
    import torch

    from . import assets
    from .data.scenes import draw_boxes, generate_items, render_scene
    from .eval.scorers import exact_match
    from .model import GlimpsePrune
    from .viz import draw_kept_tokens

    if args.n < 1:
        raise ValueError("--n must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from .cli import progress_bars

    t_start = time.perf_counter()
    with progress_bars(not args.quiet):
        if args.model:
            model = GlimpsePrune.from_pretrained(args.model, args.glimpse, device="cpu")
            description = args.model
        else:
            model, description = assets.default_model(device="cpu", glimpse=args.glimpse)
    if model.glimpse is None:
        raise ValueError("the model has no GlimpsePrune modules: pass --glimpse")
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = generate_items(args.offset + args.n, seed=args.seed, split="test", layout=args.layout)[args.offset:]
    # One untimed warm-up call, so the first scene's timings are not the interpreter's first-call costs.
    warm = render_scene(items[0][0])
    model.answer([warm], items[0][1]["question"], method="glimpse", max_new_tokens=2)

    rows = []
    for scene, record in items:
        image = render_scene(scene)
        question, reference = record["question"], record["short_answer"]
        full_text, full = model.answer([image], question, method="none", max_new_tokens=args.max_new_tokens)
        pruned_text, pruned = model.answer([image], question, method="glimpse", max_new_tokens=args.max_new_tokens)
        sample = pruned.pruning.samples[0]
        stem = record["id"]
        boxed = draw_boxes(image, record["bboxs"], colour=(0, 0, 0), width=2)
        kept_img = draw_kept_tokens(image, sample.images[0])
        boxed.save(out_dir / f"{stem}_scene.png")
        kept_img.save(out_dir / f"{stem}_kept.png")
        rows.append({
            "id": stem, "qtype": record["qtype"], "question": question, "reference": reference,
            "unpruned": full_text, "pruned": pruned_text,
            "correct_unpruned": bool(exact_match(full_text, reference)),
            "correct_pruned": bool(exact_match(pruned_text, reference)),
            "kept": sample.kept, "total": sample.total, "kept_ratio": sample.ratio,
            "prune_layer": pruned.pruning.prune_layer,
            "prefill_ms_unpruned": 1000 * full.prefill_seconds, "prefill_ms_pruned": 1000 * pruned.prefill_seconds,
            "decode_ms_per_token_unpruned": full.decode_ms_per_token,
            "decode_ms_per_token_pruned": pruned.decode_ms_per_token,
            "kv_length_unpruned": full.pruning.kv_lengths[0] if full.pruning.kv_lengths else None,
            "kv_length_pruned": pruned.pruning.kv_lengths[0] if pruned.pruning.kv_lengths else None,
            "_scene_b64": _png_b64(boxed), "_kept_b64": _png_b64(kept_img),
        })
        print(f"{stem}: {question!r} -> unpruned {full_text!r}, GlimpsePrune {pruned_text!r} "
              f"(reference {reference!r}; kept {sample.kept}/{sample.total} tokens)")
    seconds = time.perf_counter() - t_start
    report = out_dir / "index.html"
    report.write_text(_html(rows, description, seconds), encoding="utf-8")
    (out_dir / "results.json").write_text(
        json.dumps({"model": description, "seconds": round(seconds, 2),
                    "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]}, indent=1) + "\n"
    )
    n = len(rows)
    print(f"exact match: unpruned {sum(r['correct_unpruned'] for r in rows)}/{n}, "
          f"GlimpsePrune {sum(r['correct_pruned'] for r in rows)}/{n}; "
          f"mean kept ratio {100 * sum(r['kept_ratio'] for r in rows) / n:.1f} %")
    print(f"report: {report} ({seconds:.1f} s)")
    return 0


def _html(rows: list[dict], description: str, seconds: float) -> str:
    e = html.escape
    n = len(rows)
    cards = []
    for r in rows:
        def verdict(ok: bool) -> str:
            return '<span class="ok">✓</span>' if ok else '<span class="bad">✗</span>'

        cards.append(f"""
<div class="card">
  <div class="q">{e(r['question'])} <span class="muted">({e(r['qtype'])}, {e(r['id'])})</span></div>
  <div class="imgs">
    <figure><img src="data:image/png;base64,{r['_scene_b64']}" alt="scene"><figcaption>scene, ground-truth
      boxes</figcaption></figure>
    <figure><img src="data:image/png;base64,{r['_kept_b64']}" alt="kept tokens"><figcaption>kept tokens
      ({r['kept']}/{r['total']}, {100 * r['kept_ratio']:.1f} %), pruned after layer {r['prune_layer']}</figcaption>
    </figure>
  </div>
  <table>
    <tr><th></th><th>answer</th><th>prefill</th><th>decode</th><th>KV length</th></tr>
    <tr><td>reference</td><td><b>{e(r['reference'])}</b></td><td></td><td></td><td></td></tr>
    <tr><td>unpruned</td><td>{e(r['unpruned'])} {verdict(r['correct_unpruned'])}</td>
      <td>{r['prefill_ms_unpruned']:.1f} ms</td><td>{r['decode_ms_per_token_unpruned']:.1f} ms/token</td>
      <td>{r['kv_length_unpruned']}</td></tr>
    <tr><td>GlimpsePrune</td><td>{e(r['pruned'])} {verdict(r['correct_pruned'])}</td>
      <td>{r['prefill_ms_pruned']:.1f} ms</td><td>{r['decode_ms_per_token_pruned']:.1f} ms/token</td>
      <td>{r['kv_length_pruned']}</td></tr>
  </table>
</div>""")
    mean_ratio = sum(r["kept_ratio"] for r in rows) / n
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>GlimpsePrune demo</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
.card {{ border: 1px solid #ddd; border-radius: 8px; padding: 1em; margin: 1em 0; max-width: 980px; }}
.q {{ font-size: 1.15em; font-weight: 600; margin-bottom: .5em; }}
.imgs {{ display: flex; gap: 1em; flex-wrap: wrap; }}
figure {{ margin: 0; }} img {{ width: 448px; max-width: 100%; image-rendering: pixelated; }}
figcaption, .muted {{ color: #777; font-size: .85em; font-weight: normal; }}
table {{ border-collapse: collapse; margin-top: .5em; }} td, th {{ padding: .2em .8em; text-align: left; }}
.ok {{ color: #1a7f37; font-weight: bold; }} .bad {{ color: #cf222e; font-weight: bold; }}
</style></head><body>
<h1>GlimpsePrune demo</h1>
<p>Model: {e(description)}. {n} glimpse-shapes test scenes. Exact match: unpruned
{sum(r['correct_unpruned'] for r in rows)}/{n}, GlimpsePrune {sum(r['correct_pruned'] for r in rows)}/{n};
GlimpsePrune kept {100 * mean_ratio:.1f} % of the visual tokens on average
(min {100 * min(r['kept_ratio'] for r in rows):.1f} %, max {100 * max(r['kept_ratio'] for r in rows):.1f} %).
Dark cells: visual tokens dropped after layer K; outlined cells: kept. Timings on CPU, batch 1; the whole demo
took {seconds:.1f} s.</p>
{''.join(cards)}
</body></html>
"""
