"""Baseline pruning methods (issue #7): budgets, batching, and each scoring rule against a slow, independent version.

The slow versions are written here without the methods' code: stock eager attention (FastV), a by-hand masked
forward with eager attention per stage (PyramidDrop), brute-force loops (DivPrune max-min, CDPruner log-det
greedy, down-sampling), and full, unchunked ViT attention maps checked against the ViT's own attention output
(VisionZip). The cuts themselves are checked end to end with ``tests/reference.py``.
"""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from glimpseprune.adapters import adapter_for
from glimpseprune.engine import prefill
from glimpseprune.layer_loop import DecoderSequence, LayerHooks, run_layers
from glimpseprune.methods import get_method
from glimpseprune import budget as B
from glimpseprune.methods.downsample import cells, choose_cell
from glimpseprune.processing import build_inputs

from ..conftest import scene
from ..reference import reference_generate

QUESTION = "is there a red circle?"
ALL = ["random", "fastv", "pyramiddrop", "divprune", "cdpruner", "downsample", "visionzip", "vscan"]


class Recorder:
    """Wraps a method and records every Selection it returns (per cut layer)."""

    def __init__(self, inner):
        self.inner, self.seen = inner, {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def select(self, ctx):
        sel = self.inner.select(ctx)
        self.seen[ctx.layer] = sel
        return sel


def run(gp, inputs, method, record=True):
    rec = Recorder(method)
    batch = gp.adapter.prepare(dict(inputs), method.vit_layers)
    from glimpseprune.methods import PruneMethod

    class Proxy(PruneMethod):
        name = method.name
        prune_layer = method.prune_layer
        uses_glimpse = False
        vit_layers = method.vit_layers

        @property
        def prune_layers(self):
            return method.prune_layers

        def select(self, ctx):
            return rec.select(ctx)

    return prefill(gp.adapter, batch, Proxy()), rec.seen, batch


# ---- budget converters ------------------------------------------------------------------------------------------


def test_budget_converters():
    # FastV at K=2: 11.1 % layer-averaged -> ≈ 4.3 % kept on 28 layers, ≈ 5.2 % on 32 (docs/method.md §16.3)
    assert B.kept_ratio_for_retention(0.111, 2, 28) == pytest.approx((0.111 * 28 - 2) / 26)
    assert round(B.kept_ratio_for_retention(0.111, 2, 28), 3) == 0.043
    assert round(B.kept_ratio_for_retention(0.111, 2, 32), 3) == 0.052
    # GlimpsePrune 7.4 % kept at K=19 of 28 ≈ 70 % layer-averaged (docs/method.md §15.1)
    assert B.retention_for_kept_ratio(0.074, 19, 28) == pytest.approx((19 + 9 * 0.074) / 28)
    assert B.kept_ratio_for_retention(B.retention_for_kept_ratio(0.3, 5, 28), 5, 28) == pytest.approx(0.3)
    # pre-LLM: the two axes coincide
    assert B.kept_ratio_for_retention(0.222, 0, 28) == pytest.approx(0.222)
    # VScan on Qwen: 0.167 at the ViT, ×0.333 at layer 14 (docs/method.md §16.3)
    assert B.first_stage_ratio(0.111, [0, 14], [0.333], 28) == pytest.approx(0.1666, abs=1e-3)
    # PyramidDrop's paper default (×0.5 at 8/16/24 of 32) averages 46.9 %; the solver inverts it
    assert B.schedule_retention(list(zip([8, 16, 24], B.cumulative([0.5] * 3))), 32) == pytest.approx(0.46875)
    assert B.uniform_stage_ratio(0.46875, [8, 16, 24], 32) == pytest.approx(0.5, abs=1e-9)
    lam = B.uniform_stage_ratio(0.111, [2, 7, 14, 21], 28)
    assert B.schedule_retention(list(zip([2, 7, 14, 21], B.cumulative([lam] * 4))), 28) == pytest.approx(0.111)
    with pytest.raises(ValueError, match="unreachable"):
        B.kept_ratio_for_retention(0.111, 19, 28)
    with pytest.raises(ValueError, match="unreachable"):
        B.uniform_stage_ratio(0.111, [8, 16, 24], 32)
    assert B.keep_count(100, 0.111) == 11 and B.keep_count(5, 0.01) == 1 and B.keep_count(5, 0.01, 0) == 0


def test_one_budget_class_for_eval_units_and_baselines():
    """Budgets have one home: the eval runner's units and the baselines' resolved budgets are glimpseprune.budget's
    Budget, and its fields (which enter the runner's run hash through ``asdict``) are what saved evaluations hold."""
    import ast
    import dataclasses
    from pathlib import Path

    import glimpseprune
    from glimpseprune.eval import runner

    assert runner.Budget is B.Budget
    src = Path(glimpseprune.__file__).parent
    homes = [str(p.relative_to(src)) for p in sorted(src.rglob("*.py"))
             if any(isinstance(n, ast.ClassDef) and n.name == "Budget" for n in ast.walk(ast.parse(p.read_text())))]
    assert homes == ["budget.py"]
    assert dataclasses.asdict(B.parse_budget("r=0.2,t=0.3")) == {"max_keep_ratio": 0.2, "threshold": 0.3,
                                                                 "retention": None}
    assert B.resolve_common("fastv", ratio=0.25).budget == B.Budget(max_keep_ratio=0.25)
    assert B.resolve_common("fastv").budget == B.Budget(retention=B.DEFAULT_RETENTION)
    assert B.single_cut_fraction(B.Budget(max_keep_ratio=0.25), 2, 28) == 0.25
    with pytest.raises(ValueError, match="not both"):
        B.Budget(max_keep_ratio=0.1, retention=0.2)


def test_budget_options_are_validated(gp):
    with pytest.raises(ValueError, match="threshold"):
        get_method("fastv", gp, threshold=0.5)
    with pytest.raises(ValueError, match="disagree"):
        get_method("random", gp, ratio=0.2, max_keep_ratio=0.3)
    with pytest.raises(ValueError, match="not both"):
        get_method("divprune", gp, ratio=0.2, retention=0.3)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        get_method("cdpruner", gp, max_keep_ratio=1.5)
    with pytest.raises(ValueError, match="unreachable"):  # 4-layer tiny model: K=2 holds everything for half
        get_method("fastv", gp, retention=0.3)
    with pytest.raises(ValueError, match="layer 0"):
        get_method("divprune", gp, prune_layer=2)
    with pytest.raises(ValueError, match="prune_layer"):
        get_method("fastv", gp, prune_layer=0)
    with pytest.raises(TypeError):
        get_method("fastv", gp, bogus=1)
    assert get_method("random", gp, max_keep_ratio=...).fraction == pytest.approx(0.111)  # default budget


def test_generate_resolves_baselines_by_name(qwen, gp, images):
    _, processor = qwen
    inputs = build_inputs(processor, [QUESTION], [[images["square"]]])
    out = gp.generate(**inputs, method="divprune", max_keep_ratio=0.25, max_new_tokens=3)
    assert out.pruning.method == "divprune" and out.pruning.kept == [math.floor(0.25 * out.pruning.total[0])]


# ---- counts + batching ------------------------------------------------------------------------------------------


def make_method(gp, name, per_image=False):
    if name == "pyramiddrop":
        return get_method(name, gp, layers=[1, 2, 3], ratio=0.125, per_image=per_image)
    if name == "fastv":
        return get_method(name, gp, ratio=0.2, per_image=per_image)
    return get_method(name, gp, ratio=0.2, per_image=per_image)


def expected_counts(method, images):
    """Kept count per sample after the last cut, from the documented rules."""
    name = method.name
    if name == "downsample":
        return sum(cells(*im.grid, choose_cell(*im.grid, 0.2 * im.num_tokens)) for im in images)
    if name == "visionzip":
        return sum(sum(method.counts(im.num_tokens)) for im in images)
    if name == "vscan":
        fraction = method.vision_ratio * method.llm_ratio
    else:
        fraction = method.fractions[-1] if name == "pyramiddrop" else method.fraction
    groups = [im.num_tokens for im in images] if method.per_image else [sum(im.num_tokens for im in images)]
    return sum(B.keep_count(n, fraction, method.min_keep) for n in groups)


@pytest.mark.parametrize("name", ALL)
def test_exact_budget_and_batch_rows_equal_single_runs(qwen, gp, images, name):
    _, processor = qwen
    questions = [QUESTION, "what colour is the shape in the image?", "describe the picture in one word.", "how many?"]
    image_lists = [[images["square"]], [images["tall"], images["wide"]], [], [images["wide"]]]
    per_image = name in ("random", "divprune")  # exercise per-image groups on some methods
    method = make_method(gp, name, per_image)
    kwargs = dict(method=method, max_new_tokens=5, min_new_tokens=5)
    batch_out = gp.generate(**build_inputs(processor, questions, image_lists), **kwargs)
    for i, (q, ims) in enumerate(zip(questions, image_lists)):
        single = gp.generate(**build_inputs(processor, [q], [ims]), **kwargs)
        assert batch_out.generated[i].tolist() == single.generated[0].tolist(), f"row {i}"
        assert torch.equal(batch_out.pruning.samples[i].keep, single.pruning.samples[0].keep), f"row {i}"
        infos = [type("I", (), dict(grid=im.grid, num_tokens=im.total))() for im in single.pruning.samples[0].images]
        assert single.pruning.kept[0] == expected_counts(method, infos), f"row {i}"
    if name == "pyramiddrop":  # nested stages: every stage's count from the ORIGINAL n
        for layer, kept in batch_out.pruning.stages:
            f = method.fractions[method.layers.index(layer)]
            assert kept == [B.keep_count(n, f) if n else 0 for n in batch_out.pruning.total]


# ---- FastV ------------------------------------------------------------------------------------------------------


def stock_last_row_attention(model, inputs, layer):
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            att = model(**inputs, output_attentions=True).attentions[layer]
    finally:
        model.set_attn_implementation("sdpa")
    return att[0, :, -1].mean(0)  # head-averaged, last prompt token


def topk_loop(scores, k):
    """Top-k by an explicit sort of (score desc, index asc) pairs."""
    values = [float(v) for v in scores.detach()] if torch.is_tensor(scores) else [float(v) for v in scores]
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    keep = torch.zeros(len(scores), dtype=torch.bool)
    keep[order[:k]] = True
    return keep


def test_fastv_matches_stock_eager_attention_and_reference_cut(qwen, gp, images):
    model, processor = qwen
    inputs = build_inputs(processor, [QUESTION], [[images["wide"]]])
    vis = inputs["input_ids"][0] == model.config.image_token_id
    expected_scores = stock_last_row_attention(model, dict(inputs), 1)[vis]  # layer K-1 = 1
    k = math.floor(0.3 * int(vis.sum()))
    expected_keep = topk_loop(expected_scores, k)
    method = get_method("fastv", gp, ratio=0.3)
    pre, seen, _ = run(gp, inputs, method)
    torch.testing.assert_close(seen[2].scores[0].float(), expected_scores.float(), atol=1e-6, rtol=1e-4)
    assert torch.equal(seen[2].keep[0].cpu(), expected_keep)
    ref_tokens, ref_logits = reference_generate(model, dict(inputs), expected_keep, 2, 6)
    out = gp.generate(**inputs, method=method, max_new_tokens=6, min_new_tokens=6)
    assert out.generated[0].tolist() == ref_tokens
    torch.testing.assert_close(pre.logits[0], ref_logits, atol=1e-5, rtol=1e-5)


# ---- PyramidDrop ------------------------------------------------------------------------------------------------


def masked_last_row_attention(model, inputs, stages, layer_idx, replace0=None):
    """Eager attention of the last prompt token at ``layer_idx``, with earlier cuts expressed only as masks.

    ``replace0``: (keep mask, states) - the kept visual tokens' states on entering layer 0 (pre-LLM merging)."""
    vlm, lm = model.model, model.model.language_model
    ids = inputs["input_ids"]
    image_mask = ids == model.config.image_token_id
    feats = torch.cat(vlm.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output)
    h = lm.embed_tokens(ids).masked_scatter(image_mask[..., None], feats)
    pos, _ = vlm.get_rope_index(ids, mm_token_type_ids=inputs["mm_token_type_ids"],
                                image_grid_thw=inputs["image_grid_thw"])
    n = ids.shape[1]
    cols = image_mask[0].nonzero().squeeze(1)
    if replace0 is not None:
        h = h.clone()
        h[0, image_mask[0].nonzero().squeeze(1)[replace0[0]]] = replace0[1]
    cos, sin = lm.rotary_emb(h, pos)
    captured = {}

    class Masks(LayerHooks):  # earlier cuts as masks only; stop once layer_idx has run
        def before_layer(self, i, seq):
            ok = torch.ones(n, dtype=torch.bool)
            for cut, keep in stages:
                if i >= cut:
                    ok = torch.ones(n, dtype=torch.bool)
                    ok[cols] = keep
            allowed = torch.ones(n, n, dtype=torch.bool).tril() & ok[None, :]
            mask = torch.zeros(n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
            seq.masks = {"full_attention": mask[None, None]}

        def stop_after(self, i):
            return i == layer_idx

    hook = lm.layers[layer_idx].self_attn.register_forward_hook(lambda m, a, o: captured.update(w=o[1]))
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            text_row = torch.arange(n)[None, None]
            seq = DecoderSequence(h, torch.cat([text_row, pos], dim=0), None, cos, sin)
            run_layers(adapter_for(model), seq, Masks())
    finally:
        model.set_attn_implementation("sdpa")
        hook.remove()
    return captured["w"][0, :, -1].mean(0)[cols]


def test_pyramiddrop_matches_by_hand_masked_attention_per_stage(qwen, gp, images):
    model, processor = qwen
    inputs = build_inputs(processor, [QUESTION], [[images["square"]]])
    method = get_method("pyramiddrop", gp, layers=[1, 2, 3], ratios=[0.5, 0.5, 0.5])
    _, seen, _ = run(gp, inputs, method)
    n = int((inputs["input_ids"] == model.config.image_token_id).sum())
    stages, present = [], torch.ones(n, dtype=torch.bool)
    for s, layer in enumerate([1, 2, 3]):
        scores = masked_last_row_attention(model, dict(inputs), stages, layer - 1)
        k = math.floor(0.5 ** (s + 1) * n)
        keep = topk_loop(scores.masked_fill(~present, float("-inf")), k)
        assert torch.equal(seen[layer].keep[0].cpu(), keep), f"stage at layer {layer}"
        got = seen[layer].scores[0].float()
        torch.testing.assert_close(got[present], scores[present].float(), atol=1e-6, rtol=1e-4)
        stages.append((layer, keep))
        present = keep
    ref_tokens, _ = reference_generate(model, dict(inputs), stages, None, 6)
    out = gp.generate(**inputs, method=method, max_new_tokens=6, min_new_tokens=6)
    assert out.generated[0].tolist() == ref_tokens
    expected = B.schedule_retention([(layer, int(k.sum()) / n) for layer, k in stages], 4)
    assert out.pruning.layer_averaged_retention == pytest.approx(expected)


def test_pyramiddrop_budget_mapping(gp):
    m = get_method("pyramiddrop", gp, layers=[1, 2, 3], retention=0.4)
    lam = m.fractions[0]
    assert m.fractions == pytest.approx([lam, lam**2, lam**3])
    assert B.schedule_retention(list(zip([1, 2, 3], m.fractions)), 4) == pytest.approx(0.4)
    assert get_method("pyramiddrop", gp, layers=[1, 3], max_keep_ratio=0.25).fractions == pytest.approx([0.5, 0.25])


# ---- random -----------------------------------------------------------------------------------------------------


def test_random_is_seeded_uniform_and_same_count(qwen, gp, images):
    from types import SimpleNamespace

    _, processor = qwen
    inputs = build_inputs(processor, [QUESTION], [[images["square"]]])
    batch = gp.adapter.prepare(dict(inputs))
    ctx = SimpleNamespace(batch=batch, hidden=batch.inputs_embeds, layer=0)
    keeps = [get_method("random", gp, ratio=0.25, seed=seed).select(ctx).keep[0] for seed in range(200)]
    n = keeps[0].numel()
    assert all(int(k.sum()) == math.floor(0.25 * n) for k in keeps)
    assert torch.equal(get_method("random", gp, ratio=0.25, seed=7).select(ctx).keep[0], keeps[7])
    assert len({tuple(k.nonzero().squeeze(1).tolist()) for k in keeps}) == 200  # seeds give different subsets
    # every token is kept with probability 0.25: 200 draws -> std 0.031 per token; allow 5 sigma
    freq = torch.stack(keeps).float().mean(0)
    assert float((freq - 0.25).abs().max()) < 5 * math.sqrt(0.25 * 0.75 / 200)
    # same cut point as a given method's budget: e.g. FastV's K=2 at ratio 0.3
    _, seen, _ = run(gp, inputs, get_method("random", gp, prune_layer=2, ratio=0.3))
    assert list(seen) == [2] and int(seen[2].keep[0].sum()) == math.floor(0.3 * n)


# ---- DivPrune ---------------------------------------------------------------------------------------------------


def maxmin_bruteforce(x, k):
    """The max-min greedy by plain loops over a full distance table."""
    n = x.shape[0]
    xs = [v / v.norm() for v in x.detach().double()]
    d = [[1 - float(xs[i] @ xs[j]) for j in range(n)] for i in range(n)]
    first = max(range(n), key=lambda i: (min(d[i][j] for j in range(n) if j != i), -i))
    chosen = [first]
    while len(chosen) < k:
        rest = [i for i in range(n) if i not in chosen]
        chosen.append(max(rest, key=lambda i: (min(d[i][j] for j in chosen), -i)))
    return chosen


def test_divprune_matches_bruteforce_maxmin_and_reference_cut(qwen, gp, images):
    model, processor = qwen
    inputs = build_inputs(processor, [QUESTION], [[images["tall"]]])
    method = get_method("divprune", gp, ratio=0.15, chunk=7)  # small chunks exercise the chunked first step
    _, seen, batch = run(gp, inputs, method)
    x = batch.inputs_embeds[0][batch.visual_mask[0]]
    k = math.floor(0.15 * x.shape[0])
    expected = torch.zeros(x.shape[0], dtype=torch.bool)
    expected[maxmin_bruteforce(x, k)] = True
    assert torch.equal(seen[0].keep[0].cpu(), expected)
    ref_tokens, _ = reference_generate(model, dict(inputs), expected, 0, 6)
    out = gp.generate(**inputs, method=method, max_new_tokens=6, min_new_tokens=6)
    assert out.generated[0].tolist() == ref_tokens


# ---- CDPruner ---------------------------------------------------------------------------------------------------


def test_cdpruner_matches_bruteforce_logdet_greedy(qwen, gp, images):
    model, processor = qwen
    question = "what colour is the big circle?"
    inputs = build_inputs(processor, [question], [[images["wide"]]])
    method = get_method("cdpruner", gp, ratio=0.12)
    _, seen, batch = run(gp, inputs, method)
    ids = inputs["input_ids"][0]
    x = batch.inputs_embeds[0][batch.visual_mask[0]].detach().double()
    # instruction: plain-text tokens after <|vision_end|> (the question and the template's tail)
    tok = processor.tokenizer
    end = int((ids == tok.convert_tokens_to_ids("<|vision_end|>")).nonzero().max())
    special = set(tok.all_special_ids)
    text_cols = [j for j in range(end + 1, len(ids)) if int(ids[j]) not in special]
    t = gp.model.model.language_model.embed_tokens(ids[text_cols]).double().mean(0)
    r = torch.stack([(v @ t) / (v.norm() * t.norm()) for v in x])
    q = (r - r.min()) / (r.max() - r.min())
    xn = x / x.norm(dim=1, keepdim=True)
    L = q[:, None] * (xn @ xn.T) * q[None, :]
    k = math.floor(0.12 * x.shape[0])
    chosen = []
    for _ in range(k):
        best = max((i for i in range(x.shape[0]) if i not in chosen),
                   key=lambda i: float(torch.linalg.det(L[chosen + [i]][:, chosen + [i]].detach())))
        chosen.append(best)
    expected = torch.zeros(x.shape[0], dtype=torch.bool)
    expected[chosen] = True
    assert torch.equal(seen[0].keep[0].cpu(), expected)
    ref_tokens, _ = reference_generate(model, dict(inputs), expected, 0, 5)
    assert gp.generate(**inputs, method=method, max_new_tokens=5, min_new_tokens=5).generated[0].tolist() == ref_tokens


# ---- down-sampling ----------------------------------------------------------------------------------------------


def test_downsample_pooling_matches_loops_and_reference_cut(qwen, gp, images):
    assert choose_cell(24, 24, 0.111 * 576) == 3 and cells(24, 24, 3) == 64  # LLaVA: 24×24 -> 8×8 = 11.1 %
    model, processor = qwen
    inputs = build_inputs(processor, [QUESTION], [[images["wide"]]])
    method = get_method("downsample", gp, cell=3)  # the wide image's grid does not divide by 3: edge cells
    _, seen, batch = run(gp, inputs, method)
    x = batch.inputs_embeds[0][batch.visual_mask[0]]
    (h, w), s = batch.images[0][0].grid, 3
    keep = torch.zeros(h * w, dtype=torch.bool)
    pooled = []
    for r0 in range(0, h, s):
        for c0 in range(0, w, s):
            keep[r0 * w + c0] = True
            members = [r * w + c for r in range(r0, min(h, r0 + s)) for c in range(c0, min(w, c0 + s))]
            pooled.append(x[members].mean(0))
    pooled = torch.stack(pooled)
    assert torch.equal(seen[0].keep[0].cpu(), keep)
    torch.testing.assert_close(seen[0].replace[0], pooled, atol=1e-6, rtol=1e-5)
    ref_tokens, _ = reference_generate(model, dict(inputs), keep, 0, 6, replace=pooled)
    out = gp.generate(**inputs, method=method, max_new_tokens=6, min_new_tokens=6)
    assert out.generated[0].tolist() == ref_tokens


# ---- VisionZip --------------------------------------------------------------------------------------------------


def naive_vit_received_attention(gp, inputs, block):
    """Full (unchunked) attention maps of ViT block ``block``, checked against the block's own attention output."""
    visual = gp.adapter.visual
    attn = visual.blocks[block].attn
    got = {}
    h1 = attn.register_forward_pre_hook(lambda m, a, kw: got.update(x=a[0] if a else kw["hidden_states"], kw=kw),
                                        with_kwargs=True)
    h2 = attn.register_forward_hook(lambda m, a, kw, o: got.update(out=o), with_kwargs=True)
    try:
        with torch.no_grad():
            gp.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    finally:
        h1.remove()
        h2.remove()
    x, kw = got["x"], got["kw"]
    n, H = x.shape[0], attn.num_heads
    q, k, v = attn.qkv(x).reshape(n, 3, H, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = kw["position_embeddings"]

    def rot(t):  # rotate_half RoPE, written out
        half = t.shape[-1] // 2
        rotated = torch.cat([-t[..., half:], t[..., :half]], dim=-1)
        return t * cos[:, None] + rotated * sin[:, None]

    q, kr = rot(q.float()), rot(k.float())
    received = torch.zeros(n)
    out = torch.zeros(n, H, q.shape[-1])
    cu = kw["cu_seqlens"].tolist()
    for s, e in zip(cu[:-1], cu[1:]):
        p = torch.softmax(torch.einsum("qhd,khd->hqk", q[s:e], kr[s:e]) * attn.scaling, dim=-1)  # [H, m, m]
        received[s:e] = p.sum((0, 1)) / (H * (e - s))
        out[s:e] = torch.einsum("hqk,khd->qhd", p, v[s:e].float())
    torch.testing.assert_close(attn.proj(out.reshape(n, -1)), got["out"], atol=1e-5, rtol=1e-4)
    return received, k.reshape(n, -1)


def visionzip_by_loops(x, scores, keys, d: int, c: int):
    """VisionZip's selection written as loops: dominant top-d by score; c uniformly spaced targets among the rest;
    every other token joins its most key-similar target and each target becomes its group's mean.
    Returns (keep mask, embeddings with the targets replaced)."""
    n = x.shape[0]
    dom = topk_loop(scores, d)
    rest = [i for i in range(n) if not dom[i]]
    step = max(1, len(rest) // c)
    targets = rest[::step][:c]
    groups = {t: [t] for t in targets}
    kn = (keys / keys.norm(dim=1, keepdim=True)).detach()
    for i in rest:
        if i not in groups:
            sims = [float(kn[i] @ kn[t]) for t in targets]
            groups[targets[sims.index(max(sims))]].append(i)
    keep = dom.clone()
    keep[targets] = True
    new = x.clone()
    for t, members in groups.items():
        new[t] = x[members].mean(0)
    return keep, new


def vscan_keep_by_loops(global_scores, local_scores, n: int, w: int, win: int, n_global: int, n_local: int):
    """VScan's vision-stage pick written as loops: the top ``n_global`` by global score, then ``n_local`` more taken
    round-robin over win×win windows of the token grid (width ``w``), each window in local-score order."""
    local_scores = local_scores.detach()
    keep = topk_loop(global_scores, n_global)
    left = [i for i in range(n) if not keep[i]]
    rank = {}
    for wid in {(i // w // win, i % w // win) for i in left}:
        members = sorted([i for i in left if (i // w // win, i % w // win) == wid],
                         key=lambda i: (-float(local_scores[i]), i))
        rank.update({i: r for r, i in enumerate(members)})
    for i in sorted(left, key=lambda i: (rank[i], -float(local_scores[i]), i))[:n_local]:
        keep[i] = True
    return keep


def merge_into_kept_by_loops(x, keys, keep):
    """Every dropped token joins its most key-similar kept token; each kept token becomes its group's mean."""
    kn = (keys / keys.norm(dim=1, keepdim=True)).detach()
    kept = keep.nonzero().squeeze(1).tolist()
    groups = {t: [t] for t in kept}
    for i in range(x.shape[0]):
        if not keep[i]:
            sims = [float(kn[i] @ kn[t]) for t in kept]
            groups[kept[sims.index(max(sims))]].append(i)
    return torch.stack([x[groups[t]].mean(0) for t in kept])


def test_visionzip_matches_full_attention_maps_and_reference_cut(qwen, gp, images):
    model, processor = qwen
    inputs = build_inputs(processor, [QUESTION], [[images["square"]]])
    method = get_method("visionzip", gp, dominant=0.15, contextual=0.1, max_elems=300)  # tiny chunks
    assert method.block == 3  # the tiny ViT's last full-attention block
    _, seen, batch = run(gp, inputs, method)
    received, keys = naive_vit_received_attention(gp, dict(inputs), 3)
    grid = inputs["image_grid_thw"]
    scores = gp.adapter.pool_block_output(received[:, None], grid)[:, 0]
    tok_keys = gp.adapter.pool_block_output(keys.float(), grid)
    torch.testing.assert_close(seen[0].scores[0].float(), scores, atol=1e-6, rtol=1e-4)
    # selection by loops: dominant top-d; c uniformly spaced targets among the rest; nearest-key groups averaged
    x = batch.inputs_embeds[0][batch.visual_mask[0]]
    n = x.shape[0]
    d, c = int(0.15 * n), int(0.1 * n)
    keep, new = visionzip_by_loops(x, scores, tok_keys, d, c)
    assert torch.equal(seen[0].keep[0].cpu(), keep)
    torch.testing.assert_close(seen[0].replace[0], new[keep], atol=1e-6, rtol=1e-5)
    ref_tokens, _ = reference_generate(model, dict(inputs), keep, 0, 6, replace=new[keep])
    out = gp.generate(**inputs, method=method, max_new_tokens=6, min_new_tokens=6)
    assert out.generated[0].tolist() == ref_tokens


def test_visionzip_large_image_end_to_end(qwen, gp):
    """The largest image the tiny processor accepts (35×35 tokens = 4900 patches in one full-attention segment)."""
    _, processor = qwen
    big = scene(1232, 1232, 3)
    inputs = build_inputs(processor, [QUESTION], [[big]])
    out = gp.generate(**inputs, method=get_method("visionzip", gp, ratio=0.05), max_new_tokens=2)
    n = out.pruning.total[0]
    assert n >= 1000 and out.pruning.kept[0] == math.floor(0.05 * n)


MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys, torch
    torch.set_num_threads(2)
    from glimpseprune.vit_scoring import received_attention
    n, heads, d = 8192, 4, 16  # one 8192-patch full-attention segment with the tiny ViT's heads and width
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(n, heads, d, generator=g), torch.randn(n, heads, d, generator=g)
    cu = torch.tensor([0, n])
    received_attention(q[:64], k[:64], torch.tensor([0, 64]), 0.25)  # warm up kernels and allocator
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = received_attention(q, k, cu, 0.25, max_elems=2**22)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) / 1024, float(out.mean() * n))
    """
)


def test_visionzip_scoring_memory_is_bounded():
    """Peak RSS growth of the chunked scores on an 8192-patch segment stays < 256 MiB.

    The full attention map would be 4 heads × 8192² × 4 B = 1 GiB, 2 GiB with its softmax (measured: +2049 MiB
    with chunking disabled). Chunked, at most max_elems = 2^22 logits (16 MiB) plus their softmax (16 MiB) exist at
    once (measured: +33 MiB); 256 MiB leaves room for allocator slack. The bound does not grow with the image.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    growth_mib, total = map(float, res.stdout.split())
    assert growth_mib < 256, f"peak RSS grew by {growth_mib:.0f} MiB"
    assert total == pytest.approx(1.0, rel=1e-3)  # received attention is a mean of probability rows: the scores sum to 1


# ---- VScan ------------------------------------------------------------------------------------------------------


def test_vscan_matches_loops_full_attention_and_reference_cut(qwen, gp, images):
    model, processor = qwen
    inputs = build_inputs(processor, [QUESTION], [[images["square"]]])
    method = get_method("vscan", gp, vision_ratio=0.4, llm_ratio=0.5, llm_layer=2, max_elems=500)
    assert (method.global_block, method.local_block) == (3, 2)  # tiny ViT: full attention at 1, 3
    _, seen, batch = run(gp, inputs, method)
    grid = inputs["image_grid_thw"]
    pool = gp.adapter.pool_block_output
    g_recv, g_keys = naive_vit_received_attention(gp, dict(inputs), 3)
    l_recv, _ = naive_vit_received_attention(gp, dict(inputs), 2)
    gs, ls, keys = pool(g_recv[:, None], grid)[:, 0], pool(l_recv[:, None], grid)[:, 0], pool(g_keys.float(), grid)
    x = batch.inputs_embeds[0][batch.visual_mask[0]]
    n, (h, w) = x.shape[0], batch.images[0][0].grid
    win = 112 // 14 // 2  # tiny ViT: 112-px windows = 4×4 merged tokens
    k1 = math.floor(0.4 * n)
    n_local = round(0.5 * k1)
    keep1 = vscan_keep_by_loops(gs, ls, n, w, win, k1 - n_local, n_local)
    merged = merge_into_kept_by_loops(x, keys, keep1)
    assert torch.equal(seen[0].keep[0].cpu(), keep1)
    torch.testing.assert_close(seen[0].replace[0], merged, atol=1e-6, rtol=1e-5)
    # LLM stage: last-token attention at layer 1 after the merged vision stage, among the survivors
    scores = masked_last_row_attention(model, dict(inputs), [(0, keep1)], 1, replace0=(keep1, merged))
    keep2 = topk_loop(scores.masked_fill(~keep1, float("-inf")), math.floor(0.4 * 0.5 * n))
    assert torch.equal(seen[2].keep[0].cpu(), keep2)
    ref_tokens, _ = reference_generate(model, dict(inputs), [(0, keep1), (2, keep2)], None, 6, replace=merged,
                                       replace_stage=0)
    out = gp.generate(**inputs, method=method, max_new_tokens=6, min_new_tokens=6)
    assert out.generated[0].tolist() == ref_tokens


def test_vscan_budget_mapping(gp):
    m = get_method("vscan", gp, retention=0.3)  # 4 layers: LLM stage at 2
    assert m.llm_layer == 2 and m.llm_ratio == 0.333
    assert B.schedule_retention([(0, m.vision_ratio), (2, m.vision_ratio * 0.333)], 4) == pytest.approx(0.3)
    m = get_method("vscan", gp, max_keep_ratio=0.05)
    assert m.vision_ratio * m.llm_ratio == pytest.approx(0.05)
