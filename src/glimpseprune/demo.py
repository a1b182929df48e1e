"""Offline demo: unpruned vs GlimpsePrune on glimpse-shapes test scenes, written as a self-contained HTML report.

``glimpseprune demo [--n 6] [--output glimpseprune_demo] [--layout dense] [--model BASE --glimpse MODULES]``

The scenes are the first ``n`` items of the benchmark's test split (seed 0), generated on the fly, so the demo
needs no data and no network. For each: the question, the reference answer, the unpruned answer, the
GlimpsePrune answer and the answer with *random* tokens kept at the same cut layer and the same count as
GlimpsePrune kept (:func:`glimpseprune.methods.random.same_count_control`: what the selection is worth), how many
visual tokens GlimpsePrune kept, the KV length, and the prefill and decode times of the unpruned and GlimpsePrune
runs (batch size 1, medians over ``--repeats`` runs after an untimed warm-up). A section measures what pruning
buys at a batch of all the scenes (KV length, prefill, decode per step; medians with min-max), with the load average
noted. The report (``index.html``, images embedded as base64 PNG, every image captioned) and the captioned PNGs
(scene with the ground-truth boxes; kept tokens drawn over it) go to the output folder, with ``results.json``."""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import statistics
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
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per scene and method after the warm-up; the report shows medians")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_quiet_argument(parser)


def _png_b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


SCENE_CAPTION = ("the scene; black boxes: the ground-truth boxes of the objects the question refers to (drawn for "
                 "you, never shown to the model; none when the question refers to no object)")


def _timed_answer(model, image, question, method, max_new_tokens, repeats):
    """``repeats`` identical greedy runs: (text, first output, median prefill ms, median decode ms/token, spreads)."""
    runs = [model.answer([image], question, method=method, max_new_tokens=max_new_tokens) for _ in range(repeats)]
    text, out = runs[0]
    prefill = [1000 * o.prefill_seconds for _, o in runs]
    decode = [o.decode_ms_per_token for _, o in runs]
    return text, out, statistics.median(prefill), statistics.median(decode), (min(prefill), max(prefill))


def _batched(model, images, questions, max_new_tokens, repeats) -> dict:
    """Every scene in one batch, unpruned vs GlimpsePrune: medians over ``repeats`` timed passes (one untimed
    warm-up each) of prefill and decode, and the mean KV length after prefill."""
    from .processing import build_inputs

    inputs = build_inputs(model.processor, questions, [[im] for im in images])
    result = {"batch_size": len(images), "repeats": repeats}
    for method in ("none", "glimpse"):
        model.generate(**inputs, method=method, max_new_tokens=2)  # warm-up at this batch shape
        # EOS suppressed (min_new_tokens): every pass decodes the same number of steps, so decode is measured on
        # max_new_tokens - 1 steps, not on the one or two an answer of this model takes
        outs = [model.generate(**inputs, method=method, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
                for _ in range(repeats)]
        prefill = [1000 * o.prefill_seconds for o in outs]
        decode = [o.decode_ms_per_token for o in outs]
        kv = outs[0].pruning.kv_lengths
        result[method] = {
            "prefill_ms": statistics.median(prefill), "prefill_ms_min": min(prefill), "prefill_ms_max": max(prefill),
            "decode_ms_per_step": statistics.median(decode), "decode_ms_min": min(decode),
            "decode_ms_max": max(decode), "kv_length_mean": sum(kv) / len(kv), "new_tokens": outs[0].new_tokens,
        }
    state = outs[0].pruning
    result["prune_layer"], result["num_layers"] = state.prune_layer, state.num_layers
    return result


def run(args: argparse.Namespace) -> int:
    import torch

    from . import assets
    from .data.scenes import draw_boxes, generate_items, render_scene
    from .eval.scorers import exact_match
    from .methods.random import same_count_control
    from .model import GlimpsePrune
    from .viz import KEPT_TOKENS_CAPTION, add_caption, draw_kept_tokens

    if args.n < 1:
        raise ValueError("--n must be at least 1")
    if args.repeats < 1:
        raise ValueError("--repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from .cli import progress_bars

    t_start = time.perf_counter()
    with progress_bars(not args.quiet):
        if args.model:
            model = GlimpsePrune.from_pretrained(args.model, args.glimpse, device="cpu")
            description = args.model
        else:
            model, _ = assets.default_model(device="cpu", glimpse=args.glimpse)
            # the layout-neutral label: the card's accuracy figure is for the default layout only
            description = assets.MINI_LABEL + " (measured accuracy per layout: its MODEL_CARD.md)"
    if model.glimpse is None:
        raise ValueError("the model has no GlimpsePrune modules: pass --glimpse")
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = generate_items(args.offset + args.n, seed=args.seed, split="test", layout=args.layout)[args.offset:]
    # One untimed warm-up call per method, so no timing includes the interpreter's first-call costs.
    warm = render_scene(items[0][0])
    for method in ("none", "glimpse"):
        model.answer([warm], items[0][1]["question"], method=method, max_new_tokens=2)

    rows, images = [], []
    for scene, record in items:
        image = render_scene(scene)
        images.append(image)
        question, reference = record["question"], record["short_answer"]
        full_text, full, full_prefill, full_decode, full_spread = _timed_answer(
            model, image, question, "none", args.max_new_tokens, args.repeats)
        pruned_text, pruned, pruned_prefill, pruned_decode, pruned_spread = _timed_answer(
            model, image, question, "glimpse", args.max_new_tokens, args.repeats)
        sample = pruned.pruning.samples[0]
        random_text, control = model.answer([image], question, method=same_count_control(model, pruned.pruning),
                                            max_new_tokens=args.max_new_tokens)
        stem = record["id"]
        boxed = draw_boxes(image, record["bboxs"], colour=(0, 0, 0), width=2)
        kept_img = draw_kept_tokens(image, sample.images[0])
        kept_caption = (f"{KEPT_TOKENS_CAPTION}; {sample.kept}/{sample.total} kept after layer "
                        f"{pruned.pruning.prune_layer}. Q: {question}")
        add_caption(boxed, f"{SCENE_CAPTION}. Q: {question}").save(out_dir / f"{stem}_scene.png")
        add_caption(kept_img, kept_caption).save(out_dir / f"{stem}_kept.png")
        rows.append({
            "id": stem, "qtype": record["qtype"], "question": question, "reference": reference,
            "unpruned": full_text, "pruned": pruned_text,
            "correct_unpruned": bool(exact_match(full_text, reference)),
            "correct_pruned": bool(exact_match(pruned_text, reference)),
            "random": random_text, "correct_random": bool(exact_match(random_text, reference)),
            "kept_random": control.pruning.samples[0].kept,
            "kv_length_random": control.pruning.kv_lengths[0] if control.pruning.kv_lengths else None,
            "kept": sample.kept, "total": sample.total, "kept_ratio": sample.ratio,
            "prune_layer": pruned.pruning.prune_layer,
            "prefill_ms_unpruned": full_prefill, "prefill_ms_pruned": pruned_prefill,
            "prefill_ms_range_unpruned": full_spread, "prefill_ms_range_pruned": pruned_spread,
            "decode_ms_per_token_unpruned": full_decode,
            "decode_ms_per_token_pruned": pruned_decode,
            "kv_length_unpruned": full.pruning.kv_lengths[0] if full.pruning.kv_lengths else None,
            "kv_length_pruned": pruned.pruning.kv_lengths[0] if pruned.pruning.kv_lengths else None,
            "_scene_b64": _png_b64(boxed), "_kept_b64": _png_b64(kept_img),
        })
        if not args.quiet:
            print(f"{stem}: {question!r} -> unpruned {full_text!r}, GlimpsePrune {pruned_text!r}, "
                  f"random same K and count {random_text!r} "
                  f"(reference {reference!r}; kept {sample.kept}/{sample.total} tokens)")
    batched = _batched(model, images, [r["question"] for r in rows], args.max_new_tokens, args.repeats)
    seconds = time.perf_counter() - t_start
    timing = {"device": "cpu", "threads": torch.get_num_threads(), "repeats": args.repeats, "batch_size": 1,
              "warmup": "one untimed call per method before the first scene; medians over the repeats"}
    load = _load_average()
    report = out_dir / "index.html"
    report.write_text(_html(rows, description, seconds, args.layout, timing, batched, load), encoding="utf-8")
    (out_dir / "results.json").write_text(
        json.dumps({"model": description, "layout": args.layout, "seconds": round(seconds, 2), "timing": timing,
                    "load_average": load, "batched": batched,
                    "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]}, indent=1) + "\n"
    )
    n = len(rows)
    print(f"exact match ({args.layout} layout, {n} scenes): unpruned {sum(r['correct_unpruned'] for r in rows)}/{n}, "
          f"GlimpsePrune {sum(r['correct_pruned'] for r in rows)}/{n}, "
          f"random with the same K and kept counts {sum(r['correct_random'] for r in rows)}/{n}; "
          f"mean kept ratio {100 * sum(r['kept_ratio'] for r in rows) / n:.1f} %")
    print(f"report: {report} ({seconds:.1f} s)")
    return 0


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _html(rows: list[dict], description: str, seconds: float, layout: str, timing: dict, batched: dict,
          load) -> str:
    from .viz import KEPT_TOKENS_CAPTION

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
    <figure><img src="data:image/png;base64,{r['_scene_b64']}" alt="scene"><figcaption>{e(SCENE_CAPTION)}
      </figcaption></figure>
    <figure><img src="data:image/png;base64,{r['_kept_b64']}" alt="kept tokens"><figcaption>{e(KEPT_TOKENS_CAPTION)}:
      {r['kept']}/{r['total']} ({100 * r['kept_ratio']:.1f} %) kept after decoder layer {r['prune_layer']}
      </figcaption>
    </figure>
  </div>
  <table>
    <tr><th></th><th>answer</th><th>prefill (median)</th><th>decode (median)</th><th>KV length</th></tr>
    <tr><td>reference</td><td><b>{e(r['reference'])}</b></td><td></td><td></td><td></td></tr>
    <tr><td>unpruned</td><td>{e(r['unpruned'])} {verdict(r['correct_unpruned'])}</td>
      <td>{r['prefill_ms_unpruned']:.1f} ms</td><td>{r['decode_ms_per_token_unpruned']:.1f} ms/token</td>
      <td>{r['kv_length_unpruned']}</td></tr>
    <tr><td>GlimpsePrune</td><td>{e(r['pruned'])} {verdict(r['correct_pruned'])}</td>
      <td>{r['prefill_ms_pruned']:.1f} ms</td><td>{r['decode_ms_per_token_pruned']:.1f} ms/token</td>
      <td>{r['kv_length_pruned']}</td></tr>
    <tr><td>random, same K and count</td><td>{e(r['random'])} {verdict(r['correct_random'])}</td>
      <td></td><td></td><td>{r['kv_length_random']}</td></tr>
  </table>
</div>""")
    mean_ratio = sum(r["kept_ratio"] for r in rows) / n
    b, full, gp = batched, batched["none"], batched["glimpse"]

    def ratio(a: float, base: float) -> str:
        return f"{a / base:.2f}×" if base else "n/a"

    load_text = f"load average {', '.join(str(x) for x in load)}" if load else "load average unknown"
    buys = f"""
<h2>What pruning buys on this model (measured in this run)</h2>
<p>All {b['batch_size']} scenes in one batch (batch size {b['batch_size']}), medians over {b['repeats']} timed passes
after an untimed warm-up, min–max in brackets; {gp['new_tokens']} tokens decoded per row (end of answer
suppressed, so every pass decodes the same steps); {timing['threads']} CPU thread(s), {e(load_text)}.</p>
<table>
<tr><th></th><th>unpruned</th><th>GlimpsePrune</th><th>GlimpsePrune / unpruned</th></tr>
<tr><td>KV length after prefill (mean per row)</td><td>{full['kv_length_mean']:.1f}</td>
  <td>{gp['kv_length_mean']:.1f}</td><td>{ratio(gp['kv_length_mean'], full['kv_length_mean'])}</td></tr>
<tr><td>prefill, whole batch</td><td>{full['prefill_ms']:.1f} ms [{full['prefill_ms_min']:.1f}–{full['prefill_ms_max']:.1f}]</td>
  <td>{gp['prefill_ms']:.1f} ms [{gp['prefill_ms_min']:.1f}–{gp['prefill_ms_max']:.1f}]</td>
  <td>{ratio(gp['prefill_ms'], full['prefill_ms'])}</td></tr>
<tr><td>decode, per step for the whole batch</td><td>{full['decode_ms_per_step']:.2f} ms [{full['decode_ms_min']:.2f}–{full['decode_ms_max']:.2f}]</td>
  <td>{gp['decode_ms_per_step']:.2f} ms [{gp['decode_ms_min']:.2f}–{gp['decode_ms_max']:.2f}]</td>
  <td>{ratio(gp['decode_ms_per_step'], full['decode_ms_per_step'])}</td></tr>
</table>
<p class="muted">How to read this: the dropped tokens leave the hidden states and the KV cache after decoder layer
K = {b['prune_layer']} of {b['num_layers']}, so prefill saves work only in the last {b['num_layers'] - b['prune_layer']}
layer(s) while the glimpse token and the VIP add some; decoding attends over the short cache in every layer. On a
{e('2 M-parameter model on CPU')} the per-call overheads (Python, kernel launches) are a large share of each step, so
the time ratios here say little about a full-size model on a GPU: <code>glimpseprune bench</code> and
docs/results.md measure those. The KV length is exact whatever the machine.</p>"""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>GlimpsePrune demo</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
.card {{ border: 1px solid #ddd; border-radius: 8px; padding: 1em; margin: 1em 0; max-width: 980px; }}
.q {{ font-size: 1.15em; font-weight: 600; margin-bottom: .5em; }}
.imgs {{ display: flex; gap: 1em; flex-wrap: wrap; }}
figure {{ margin: 0; max-width: 448px; }} img {{ width: 448px; max-width: 100%; image-rendering: pixelated; }}
figcaption, .muted {{ color: #777; font-size: .85em; font-weight: normal; }}
table {{ border-collapse: collapse; margin-top: .5em; }} td, th {{ padding: .2em .8em; text-align: left; }}
.ok {{ color: #1a7f37; font-weight: bold; }} .bad {{ color: #cf222e; font-weight: bold; }}
</style></head><body>
<h1>GlimpsePrune demo</h1>
<p>Model: {e(description)}.</p>
<p><b>On the {n} glimpse-shapes test scenes of this report ({e(layout)} layout):</b> exact match unpruned
{sum(r['correct_unpruned'] for r in rows)}/{n}, GlimpsePrune {sum(r['correct_pruned'] for r in rows)}/{n},
random tokens at the same layer and count {sum(r['correct_random'] for r in rows)}/{n};
GlimpsePrune kept {100 * mean_ratio:.1f} % of the visual tokens on average
(min {100 * min(r['kept_ratio'] for r in rows):.1f} %, max {100 * max(r['kept_ratio'] for r in rows):.1f} %).
{n} scenes are too few for an accuracy claim: the model card and docs/results.md give figures on 500 items per layout,
with the margin over random selection at the same kept counts.</p>
<p>Per-scene timings: batch size {timing['batch_size']}, medians over {timing['repeats']} identical runs, after one
untimed warm-up call per method; CPU, {timing['threads']} thread(s), {e(load_text)}. The whole demo took
{seconds:.1f} s.</p>
{buys}
{''.join(cards)}
</body></html>
"""
