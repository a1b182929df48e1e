"""Compare pruning methods at equal LAYER-AVERAGED retention (docs/method.md §15.1, §16).

For every method × budget (default 11.1 / 22.2 / 33.3 % layer-averaged, plus GlimpsePrune unbounded) this runs
the record dataset through ``GlimpsePrune.generate`` and writes

- ``<out>/compare.json``: one row per (method, budget): accuracy (``exact_match`` against the answer and the short
  answer), visual tokens at the LLM input and after the last cut, kept-after-last-cut ratio, layer-averaged
  retention (measured from the cut schedule actually applied), analytic prefill FLOPs with and without the ViT, the
  method's own scoring FLOPs and the prefill total including them, and decode FLOPs (:mod:`glimpseprune.flops`,
  per sample, averaged), and the cut schedule; budgets a method
  cannot reach (e.g. FastV at K = 2 on a 4-layer model) are listed with the reason instead of silently moved;
- ``<out>/compare.md``: the same as a markdown table, with each row compared item by item against one reference
  row (``--paired-against``, default ``glimpse:unbounded``): items only the reference / only this row got right and
  the exact McNemar p-value (:func:`glimpseprune.eval.stats.paired_exact_test`; per-record scores are in the JSON);
- ``<out>/pareto.png``: accuracy vs layer-averaged retention and vs the share kept after the last cut (matplotlib,
  imported lazily; skipped if missing).

``--glimpse-kept-caps 0.111`` adds GlimpsePrune rows capped to a kept-after-layer-K ratio (budget label
``kept<=0.111``): the paper's "≤ 11.1 %" placement, whose layer-averaged retention stays ≥ K/L because the first K
layers see every token. Both retentions are in every row, so the two conventions are never mixed up.

Equal placement (``--equal-placement``, default ``random,fastv,divprune,cdpruner``): after every GlimpsePrune row,
each listed method's *selection* is applied at GlimpsePrune's cut layer K with GlimpsePrune's per-record kept
counts (rows ``<method>@glimpse``, same budget label). ``random@glimpse`` is the same-K random control every
GlimpsePrune accuracy is stated against (:func:`glimpseprune.methods.random.same_count_control`'s rule, seeded by
``--seed``). FastV reads its attention row at K-1 as usual; DivPrune and CDPruner choose from the input embeddings
exactly as they do at layer 0, and the cut is then made at K. VisionZip (its merged tokens are ViT-stage states),
VScan and PyramidDrop (multi-stage schedules) have no single-cut placement and are refused with that reason. So
the reader sees selection quality apart from placement: at equal placement only *which* tokens stay differs.

FLOPs: LLM layers are summed with the sequence length present at each layer (text + visual tokens present), so
multi-stage schedules are exact; GlimpsePrune uses :func:`~glimpseprune.flops.prefill_flops` (glimpse, VIP).
The baselines' own scoring (FastV/PDrop attention rows, DivPrune/CDPruner greedy selection, VisionZip/VScan ViT
block scores and key-similarity merging, VScan's LLM-stage row) is counted separately by
:func:`~glimpseprune.methods.method_scoring_flops` (each method's own file) as ``scoring_flops`` and added in ``prefill_flops_total``
(``prefill_flops`` itself stays the forward pass only); it is 0 for random / downsample and for GlimpsePrune, whose
glimpse row and VIP are already in its ``prefill_flops``.

Resize anchor (pseudo-method ``resize``, Qwen-VL families only; a clear error on LLaVA, whose ViT always makes 576
tokens): for each budget and image the processor's pixel limit is chosen so that the ViT itself makes the merged-token
count closest to budget × the unpruned count (Qwen's smart resize rounds to 28-px multiples, so the count is
approximate; the actual ratio is reported, per sample under ``resize``), the processor is re-run with that limit and
the model runs unpruned; its ViT FLOPs are counted at the reduced size. It joins the default methods on Qwen models.

Model: ``--model PATH`` (+ ``--glimpse PATH``) or the embedded default (:func:`glimpseprune.assets.default_model`:
the trained mini model once it exists, else a tiny RANDOM model whose accuracies are meaningless).

    python benchmarks/compare_methods.py --data shapes/test.jsonl --methods random,fastv,divprune --out results/cmp
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

DEFAULT_METHODS = "random,downsample,fastv,pyramiddrop,visionzip,divprune,cdpruner,vscan"
DEFAULT_BUDGETS = "0.111,0.222,0.333"


def parse_options(entries: list[str]) -> dict[str, dict]:
    """``fastv:prune_layer=1`` -> {"fastv": {"prune_layer": 1}} (values parsed as JSON when possible)."""
    out: dict[str, dict] = {}
    for entry in entries:
        name, _, rest = entry.partition(":")
        key, _, value = rest.partition("=")
        if not key or not value:
            raise SystemExit(f"bad --option {entry!r}; expected method:key=value")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(name, {})[key] = parsed
    return out


def load_model(args):
    from glimpseprune import GlimpsePrune
    from glimpseprune.assets import default_model

    if args.model:
        gp = GlimpsePrune.from_pretrained(args.model, args.glimpse, device=args.device,
                                          init_glimpse=args.glimpse is None)
        return gp, f"{args.model}" + (f" + {args.glimpse}" if args.glimpse else " (untrained glimpse)")
    return default_model(args.device, args.glimpse)


def scoring_params(method, image_counts: list[int], stages: list[tuple[int, int]]) -> dict:
    """The keyword parameters of :func:`~glimpseprune.methods.method_scoring_flops` for one sample: the method
    object's own (``PruneMethod.scoring_params``: its counting rules, per image where it decides per image, and the cut
    schedule the sample went through); none for an anchor without a method object (``resize``)."""
    return {} if method is None else method.scoring_params(image_counts, stages)


def sample_flops(gp, method, method_name: str, n_text: int, total: int, stages: list[tuple[int, int]], image_counts,
                 decode_steps: int) -> dict:
    """Analytic FLOPs of one sample for the cut schedule it went through, plus the method's own scoring."""
    from glimpseprune.eval.bench import model_dims
    from glimpseprune.flops import decode_flops, decoder_layer_flops, lm_head_flops, prefill_flops, vision_flops
    from glimpseprune.methods import method_scoring_flops

    dims, vip = model_dims(gp)
    lm = dims.lm
    vit = vision_flops(dims.vision, image_counts) if dims.vision is not None and total else 0
    final = stages[-1][1] if stages else total
    if method_name == "glimpse" and stages:
        parts = prefill_flops(lm, n_text, total, final, stages[0][0], glimpse=True, vip=vip,
                              image_token_counts=image_counts or None, vision=dims.vision if total else None)
        pre, pre_wo = parts["total"], parts["total_without_vision"]
    else:
        present, cut = total, dict(stages)
        llm = 0
        for layer in range(lm.layers):
            present = cut.get(layer, present)
            llm += decoder_layer_flops(lm, n_text + present)
        pre_wo = llm + lm_head_flops(lm, 1)
        pre = pre_wo + vit
    scoring = 0
    if total and stages and method_name not in ("none", "glimpse"):
        scoring = method_scoring_flops(method_name, dims, image_counts, n_text,
                                       **scoring_params(method, image_counts, stages))
    dec = decode_flops(lm, n_text + final, decode_steps)["total"]
    return {"prefill_flops": pre, "prefill_flops_without_vit": pre_wo, "vit_flops": vit, "scoring_flops": scoring,
            "prefill_flops_total": pre + scoring, "decode_flops": dec}


QWEN_FAMILIES = ("qwen2_5_vl", "qwen2_vl")


def qwen_resize_settings(gp) -> dict:
    """The Qwen-VL processor's resize rule: factor (patch · merge px), min/max pixels and its own ``smart_resize``.

    The ``resize`` anchor needs an image processor whose token count follows the image size; LLaVA-1.5 always makes
    24 × 24 = 576 tokens per image, so it gets a clear error (its anchor is ``downsample``).
    """
    model_type = getattr(getattr(gp.model, "config", None), "model_type", None)
    if model_type not in QWEN_FAMILIES:
        raise ValueError(
            f"resize: the resize anchor shrinks the input image so the ViT makes fewer tokens, which only the "
            f"Qwen-VL families (Qwen2.5-VL, Qwen2-VL) support; this model is {model_type!r} (LLaVA-1.5 always makes "
            "576 tokens per image: use the downsample anchor instead)")
    ip = gp.processor.image_processor
    size = ip.size
    get = (lambda key: size.get(key)) if isinstance(size, dict) else (lambda key: getattr(size, key, None))
    min_pixels = get("shortest_edge") or getattr(ip, "min_pixels", None)
    max_pixels = get("longest_edge") or getattr(ip, "max_pixels", None)
    smart_resize = getattr(sys.modules[type(ip).__module__], "smart_resize", None)
    if smart_resize is None:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    return {"factor": ip.patch_size * ip.merge_size, "min_pixels": int(min_pixels), "max_pixels": int(max_pixels),
            "smart_resize": smart_resize}


def choose_pixel_limit(height: int, width: int, fraction: float, rule: dict) -> dict:
    """The pixel limit whose smart-resized image makes the merged-token count closest to ``fraction`` × unpruned.

    Qwen's smart resize rounds both sides to multiples of ``factor`` (28 px) and, above ``max_pixels``, shrinks to
    the largest multiples under it, so only some counts are reachable: every limit m·factor² for m = 1..n0 is tried
    and the closest count wins (ties: fewer tokens). The processor's ``min_pixels`` is lowered to the limit when the
    limit is below it (so the image is not scaled back up). Returns the limits, the grid (merged rows, cols), the
    token counts (``tokens``, unpruned ``tokens_full``, ``target``) and the actual ratio.
    """
    factor, resize = rule["factor"], rule["smart_resize"]
    h0, w0 = resize(height, width, factor=factor, min_pixels=rule["min_pixels"], max_pixels=rule["max_pixels"])
    n0 = (h0 // factor) * (w0 // factor)
    target = fraction * n0
    best = None
    for m in range(1, n0 + 1):
        limit = m * factor * factor
        low = min(rule["min_pixels"], limit)
        h, w = resize(height, width, factor=factor, min_pixels=low, max_pixels=limit)
        tokens = (h // factor) * (w // factor)
        key = (abs(tokens - target), tokens)
        if best is None or key < best[0]:
            best = (key, {"max_pixels": limit, "min_pixels": low, "grid": [h // factor, w // factor],
                          "tokens": tokens, "tokens_full": n0, "target": target, "ratio": tokens / n0})
    return best[1]


def with_pixel_limit(processor, min_pixels: int, max_pixels: int, build):
    """Run ``build()`` with the image processor's pixel limits temporarily set (the processor re-run with them)."""
    ip = processor.image_processor
    old = ip.size
    ip.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    try:
        return build()
    finally:
        ip.size = old


def run_resize_unit(gp, records, budget: float, args) -> dict:
    """The Qwen resize anchor: per image the pixel limit that makes ≈ budget × the unpruned tokens, model unpruned.

    The cut is before the ViT, so the layer-averaged retention is the kept ratio: ``budget`` is the fraction of the
    unpruned token count aimed at; the reported ratio is the one actually reached. ViT FLOPs are counted at the
    reduced size, there is no scoring. Samples run one at a time (every image has its own pixel limit).
    """
    from glimpseprune.eval.runner import SHORT_ANSWER_PROMPT, references_for
    from glimpseprune.eval.scorers import exact_match
    from glimpseprune.processing import build_inputs, load_image

    row = {"method": "resize", "budget": f"{budget:g}", "options": {}}
    try:
        rule = qwen_resize_settings(gp)
        if not 0 < budget <= 1:
            raise ValueError(f"resize: the budget must be in (0, 1], got {budget}")
    except ValueError as err:
        row["skipped"] = str(err)
        return row
    merge = gp.processor.image_processor.merge_size ** 2
    scores, ratios, n_in, n_out, flops, samples = [], [], [], [], [], []
    start = time.perf_counter()
    for record in records:
        image = load_image(record.image)
        choice = choose_pixel_limit(image.height, image.width, budget, rule)
        question = record.question + ("\n" + SHORT_ANSWER_PROMPT if not args.free_form else "")
        inputs = with_pixel_limit(gp.processor, choice["min_pixels"], choice["max_pixels"],
                                  lambda: build_inputs(gp.processor, [question], [[image]]))
        tokens = int(inputs["image_grid_thw"].prod(-1).sum()) // merge
        out = gp.generate(**inputs, method="none", max_new_tokens=args.max_new_tokens)
        text = gp.processor.batch_decode(out.generated, skip_special_tokens=True)[0]
        scores.append(exact_match(text.strip(), references_for(record)))
        n_text = int(inputs["attention_mask"][0].sum()) - tokens
        ratios.append(tokens / choice["tokens_full"])
        n_in.append(choice["tokens_full"])
        n_out.append(tokens)
        samples.append({**choice, "tokens": tokens})
        flops.append(sample_flops(gp, None, "resize", n_text, tokens, [], [tokens], max(out.new_tokens - 1, 0)))
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    row.update({
        "n": len(scores),
        "accuracy": mean(scores),
        "scores": scores,  # per record, in data order: for paired tests between rows
        "kept_ratio": mean(ratios),
        "layer_averaged_retention": mean(ratios),
        "visual_tokens_in": mean(n_in),  # what the processor's own limits would make
        "visual_tokens_kept": mean(n_out),  # what the ViT made at the reduced size
        "cut_layers": "input",
        "seconds": time.perf_counter() - start,
        **{k: mean([f[k] for f in flops]) for k in flops[0]},
        "resize": samples,
    })
    return row


# Methods whose selection can be placed at GlimpsePrune's K with a given count (see the module docstring).
PLACEABLE = ("random", "fastv", "divprune", "cdpruner")


def placed_method(gp, name: str, layer: int, counts: list[int], totals: list[int], options: dict, seed: int):
    """``name``'s selection at cut layer ``layer`` keeping exactly ``counts`` (one per record of the batch)."""
    from glimpseprune.methods import get_method

    if name == "random":
        return get_method("random", gp, prune_layer=layer, seed=seed, kept_counts=counts)
    if name not in PLACEABLE:
        raise ValueError(f"{name}: no single-cut placement at GlimpsePrune's K (only {', '.join(PLACEABLE)})")
    if len(counts) != 1:
        raise ValueError("equal placement of a baseline runs one record at a time")
    # floor(((k + 0.5) / n) * n) == k: the baseline's own count rule lands on GlimpsePrune's count.
    ratio = min(1.0, (counts[0] + 0.5) / totals[0])
    if name == "fastv":
        return get_method("fastv", gp, prune_layer=layer, ratio=ratio, **options)
    method = get_method(name, gp, ratio=ratio, **options)
    # DivPrune / CDPruner select from the input embeddings only; the same selection is cut at layer K instead of
    # before the LLM (an attribute of this fresh instance; the method itself is unchanged).
    method.prune_layer = layer
    return method


def run_unit(gp, records, method_name: str, budget, options: dict, args, placed_from: dict | None = None) -> dict:
    from glimpseprune.budget import Budget
    from glimpseprune.eval.runner import SHORT_ANSWER_PROMPT, references_for, resolve_method
    from glimpseprune.eval.scorers import exact_match
    from glimpseprune.processing import build_inputs

    kept_cap = budget[1] if isinstance(budget, tuple) else None  # ("kept", cap): the paper's placement of GlimpsePrune
    label = "unbounded" if budget is None else f"kept<={kept_cap:g}" if kept_cap is not None else f"{budget:g}"
    if placed_from is not None:  # equal placement: GlimpsePrune's K and per-record kept counts
        label = placed_from["budget"]
        method_name = f"{method_name}@glimpse"
    row = {"method": method_name, "budget": label, "options": options}
    # Unbounded (a cap of 1.0 keeps whatever the threshold keeps, overriding any cap in the modules' config), a cap
    # after the cut, or a layer-averaged retention (the fair axis).
    unit_budget = Budget(max_keep_ratio=1.0) if budget is None else Budget(max_keep_ratio=kept_cap) \
        if kept_cap is not None else Budget(retention=budget)
    base_name = method_name.split("@")[0]
    try:
        if placed_from is None:
            method = resolve_method(gp, method_name, unit_budget, **options)
        else:
            method = None
            layer = placed_from["cut_layers"][0]
            placed_method(gp, base_name, layer, placed_from["kept_counts"][:1], placed_from["total_counts"][:1],
                          options, args.seed)  # refuse an unplaceable method before any work
    except ValueError as err:
        row["skipped"] = str(err)
        return row
    batch_size = args.batch_size if placed_from is None or base_name == "random" else 1
    scores, kept_ratio, retention, flops, n_in, n_out = [], [], [], [], [], []
    stages_seen = None
    start = time.perf_counter()
    for i in range(0, len(records), batch_size):
        chunk = records[i:i + batch_size]
        questions = [r.question + ("\n" + SHORT_ANSWER_PROMPT if not args.free_form else "") for r in chunk]
        inputs = build_inputs(gp.processor, questions, [[r.image] for r in chunk])
        if placed_from is not None:
            method = placed_method(gp, base_name, layer, placed_from["kept_counts"][i:i + batch_size],
                                   placed_from["total_counts"][i:i + batch_size], options, args.seed)
        out = gp.generate(**inputs, method=method if method is not None else "none",
                          max_new_tokens=args.max_new_tokens)
        texts = gp.processor.batch_decode(out.generated, skip_special_tokens=True)
        state = out.pruning
        for b, (record, text) in enumerate(zip(chunk, texts)):
            sample = state.samples[b]
            scores.append(exact_match(text.strip(), references_for(record)))
            stages = [(layer, kept[b]) for layer, kept in state.stages]
            stages_seen = [layer for layer, _ in state.stages]
            n_text = int(inputs["attention_mask"][b].sum()) - sample.total
            if sample.total:
                retention.append(state.sample_retention(b))
            kept_ratio.append(sample.ratio)
            n_in.append(sample.total)
            n_out.append(sample.kept)
            flops.append(sample_flops(gp, method, state.method, n_text, sample.total, stages,
                                      [im.total for im in sample.images], max(out.new_tokens - 1, 0)))
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    row.update({
        "n": len(scores),
        "accuracy": mean(scores),
        "scores": scores,  # per record, in data order: for paired tests between rows
        "kept_ratio": mean(kept_ratio),
        "layer_averaged_retention": mean(retention),
        "visual_tokens_in": mean(n_in),
        "visual_tokens_kept": mean(n_out),
        "kept_counts": n_out,  # per record, in data order (equal placement reuses GlimpsePrune's)
        "total_counts": n_in,
        "cut_layers": stages_seen,
        "seconds": time.perf_counter() - start,
        **{k: mean([f[k] for f in flops]) for k in flops[0]},
    })
    if placed_from is not None:
        row["counts_match"] = n_out == placed_from["kept_counts"]
        row["placed_at"] = layer
    return row


def paired_reference(rows: list[dict], label: str) -> dict | None:
    """The row named ``METHOD:BUDGET`` (e.g. ``glimpse:unbounded``) that the others are paired against, if it ran."""
    method, _, budget = label.partition(":")
    return next((r for r in rows if r["method"] == method and r["budget"] == budget and "scores" in r), None)


def paired_cell(row: dict, ref: dict | None) -> str:
    """``ref-only / row-only (p)``: items only the reference / only this row got right, exact McNemar p-value."""
    from glimpseprune.eval.stats import paired_exact_test

    if ref is None or row is ref:
        return "—"
    t = paired_exact_test(ref["scores"], row["scores"])
    return f"{t['a_only']} / {t['b_only']} (p={t['p_value']:.2g})"


def markdown(rows: list[dict], model_label: str, data: str, title: str | None = None,
             paired_against: str = "glimpse:unbounded") -> str:
    base = next((r for r in rows if r["method"] == "none" and "accuracy" in r), None)
    ref = paired_reference(rows, paired_against)
    lines = ([f"**{title}**", ""] if title else []) + [f"Model: {model_label}  ", f"Data: {data}", "",
             "| method | budget (layer-avg) | n | accuracy (EM) | kept after last cut | layer-avg retention | "
             "visual in → kept | cut layers | prefill GFLOPs (w/o ViT) | prefill / full | scoring GFLOPs | "
             f"prefill GFLOPs total | total / full | decode GFLOPs | vs {paired_against}: its wins / this row's (p) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['method']} | {r['budget']} | — | skipped: {r['skipped'].split(';')[0]} ||||||||||||")
            continue
        rel = f"{r['prefill_flops'] / base['prefill_flops']:.3f}" if base else "—"
        rel_total = f"{r['prefill_flops_total'] / base['prefill_flops_total']:.3f}" if base else "—"
        lines.append(
            f"| {r['method']} | {r['budget']} | {r['n']} | {r['accuracy']:.3f} | {r['kept_ratio']:.3f} | "
            f"{r['layer_averaged_retention']:.3f} | {r['visual_tokens_in']:.1f} → {r['visual_tokens_kept']:.1f} | "
            f"{r['cut_layers']} | {r['prefill_flops'] / 1e9:.4g} ({r['prefill_flops_without_vit'] / 1e9:.4g}) | "
            f"{rel} | {r['scoring_flops'] / 1e9:.4g} | {r['prefill_flops_total'] / 1e9:.4g} | {rel_total} | "
            f"{r['decode_flops'] / 1e9:.4g} | {paired_cell(r, ref)} |")
    return "\n".join(lines) + "\n"


def pareto_plot(rows: list[dict], path: Path, title: str | None = None) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    # Both axes of the field: layer-averaged retention (FastV/PDrop/VScan's grid) and the share kept after the last
    # cut (where the GlimpsePrune paper places itself; its first K layers still see every token).
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, key, xlabel in ((axes[0], "layer_averaged_retention", "layer-averaged visual-token retention"),
                            (axes[1], "kept_ratio", "visual tokens kept after the last cut")):
        by_method: dict[str, list] = {}
        for r in rows:
            if "accuracy" in r:
                by_method.setdefault(r["method"], []).append((r[key], r["accuracy"]))
        for name, points in sorted(by_method.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (exact match)")
    axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="record JSONL (load_records spec, e.g. test.jsonl:first:200)")
    parser.add_argument("--image-root", default=None)
    parser.add_argument("--model", default=None, help="base model folder (default: the embedded default model)")
    parser.add_argument("--glimpse", default=None, help="GlimpsePrune modules folder")
    parser.add_argument("--methods", default=None,
                        help=f"comma list (default {DEFAULT_METHODS}, plus resize on Qwen-VL models)")
    parser.add_argument("--budgets", default=DEFAULT_BUDGETS, help="layer-averaged retentions, comma list")
    parser.add_argument("--no-glimpse", action="store_true", help="skip GlimpsePrune (unbounded)")
    parser.add_argument("--glimpse-kept-caps", default="",
                        help="extra GlimpsePrune rows capped to these kept-after-layer-K ratios (comma list, e.g. "
                             "0.111: the paper's '<= 11.1 %%' placement); layers before K still hold every token")
    parser.add_argument("--paired-against", default="glimpse:unbounded",
                        help="METHOD:BUDGET row every other row is compared with item by item (exact McNemar test), "
                             "e.g. glimpse:kept<=0.111 or none:unbounded")
    parser.add_argument("--equal-placement", default=",".join(PLACEABLE),
                        help="after every GlimpsePrune row, these methods' selection at GlimpsePrune's K with its "
                             "per-record kept counts (rows METHOD@glimpse; random@glimpse is the same-K control); "
                             "'' for none")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random@glimpse control")
    parser.add_argument("--no-full", action="store_true", help="skip the unpruned model")
    parser.add_argument("--option", action="append", default=[], help="method:key=value, e.g. fastv:prune_layer=1")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--free-form", action="store_true", help="no short-answer instruction")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="benchmarks/results/compare_methods")
    parser.add_argument("--title", default=None, help="a label for the table and the plot (e.g. 'SMOKE TEST')")
    args = parser.parse_args(argv)

    from glimpseprune.data.records import load_records

    records, report = load_records(args.data, root=args.image_root)
    if not records:
        raise SystemExit(f"no usable records in {args.data}:\n{report.summary()}")
    gp, model_label = load_model(args)
    options = parse_options(args.option)
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    units = [] if args.no_full else [("none", None)]
    units += [] if args.no_glimpse or gp.glimpse is None else [("glimpse", None)]
    kept_caps = [float(c) for c in args.glimpse_kept_caps.split(",") if c.strip()]
    if kept_caps and gp.glimpse is None:
        raise SystemExit("--glimpse-kept-caps needs GlimpsePrune modules (--glimpse)")
    if any(not 0 < c <= 1 for c in kept_caps):
        raise SystemExit(f"--glimpse-kept-caps must lie in (0, 1], got {kept_caps}")
    units += [("glimpse", ("kept", c)) for c in kept_caps]
    qwen = getattr(gp.model.config, "model_type", None) in QWEN_FAMILIES
    if args.methods is None:  # the resize anchor joins the defaults on the Qwen families only
        args.methods = DEFAULT_METHODS + (",resize" if qwen else "")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "resize" in methods:
        try:
            qwen_resize_settings(gp)
        except ValueError as err:
            raise SystemExit(str(err)) from None
    units += [(m, b) for m in methods for b in budgets]
    placements = [m.strip() for m in args.equal_placement.split(",") if m.strip()]
    rows = []
    for name, budget in units:
        if name == "resize":
            row = run_resize_unit(gp, records, budget, args)
        else:
            row = run_unit(gp, records, name, budget, options.get(name, {}), args)
        rows.append(row)
        shown = row.get("skipped") or f"acc {row['accuracy']:.3f}  retention {row['layer_averaged_retention']:.3f}"
        print(f"{name:12s} {row['budget']:>9s}  {shown}", file=sys.stderr)
        if name == "glimpse" and "skipped" not in row and row["cut_layers"]:
            for placed in placements:
                prow = run_unit(gp, records, placed, budget, options.get(placed, {}), args, placed_from=row)
                rows.append(prow)
                shown = prow.get("skipped") or f"acc {prow['accuracy']:.3f}  counts match {prow['counts_match']}"
                print(f"{prow['method']:12s} {prow['budget']:>9s}  {shown}", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"title": args.title, "model": model_label, "data": args.data, "n_records": len(records), "budgets": budgets,
              "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
              "record_ids": [r.id for r in records], "paired_against": args.paired_against, "rows": rows}
    (out / "compare.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    table = markdown(rows, model_label, args.data, args.title, args.paired_against)
    (out / "compare.md").write_text(table, encoding="utf-8")
    plotted = pareto_plot(rows, out / "pareto.png", args.title)
    print(table)
    print(f"wrote {out / 'compare.json'}, {out / 'compare.md'}" + (f", {out / 'pareto.png'}" if plotted else
                                                                      " (matplotlib missing: no plot)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
