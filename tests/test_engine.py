"""Exactness of the pruning engine against stock transformers and a slow by-hand reference."""

import pytest
import torch

from glimpseprune.engine import prefill
from glimpseprune.methods import FixedKeep
from glimpseprune.processing import build_inputs

from .reference import reference_generate

QUESTION = "is there a red circle?"


def stock_generate(model, inputs, n):
    return model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)


def test_no_pruning_reproduces_stock_generate(qwen, gp, images):
    model, processor = qwen
    inputs = build_inputs(processor, [QUESTION], [[images["square"]]])
    ref = stock_generate(model, inputs, 12)
    out = gp.generate(**inputs, method="none", max_new_tokens=12, min_new_tokens=12)
    assert torch.equal(out.sequences, ref)
    assert out.pruning.prune_layer is None and out.pruning.keep_ratio == 1.0


@pytest.mark.parametrize("prune_layer", [1, 3])
def test_glimpse_keep_all_reproduces_stock_generate(qwen, gp, images, prune_layer):
    """threshold 0 keeps every visual token: the glimpse is inserted, used, and removed without a trace."""
    model, processor = qwen
    inputs = build_inputs(processor, [QUESTION], [[images["wide"]]])
    ref = stock_generate(model, inputs, 12)
    out = gp.generate(**inputs, threshold=0.0, prune_layer=prune_layer, max_new_tokens=12, min_new_tokens=12)
    assert out.pruning.keep_ratio == 1.0
    assert torch.equal(out.sequences, ref)
    with torch.no_grad():
        stock_logits = model(**inputs).logits[:, -1].float()
    batch = gp.adapter.prepare(dict(inputs), gp.config.vip_visual_layers)
    pre = prefill(gp.adapter, batch, gp.method("glimpse", threshold=0.0, prune_layer=prune_layer))
    torch.testing.assert_close(pre.logits, stock_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prune_layer,seed", [(0, 0), (2, 1), (3, 2)])
def test_fixed_mask_matches_slow_reference(qwen, gp, images, prune_layer, seed):
    model, processor = qwen
    inputs = build_inputs(processor, [QUESTION], [[images["tall"]]])
    n_visual = int((inputs["input_ids"] == model.config.image_token_id).sum())
    keep = torch.rand(n_visual, generator=torch.Generator().manual_seed(seed)) < 0.3
    ref_tokens, ref_logits = reference_generate(model, dict(inputs), keep, prune_layer, 10)
    out = gp.generate(**inputs, keep_masks=[keep], prune_layer=prune_layer, max_new_tokens=10, min_new_tokens=10)
    assert out.generated[0].tolist() == ref_tokens
    batch = gp.adapter.prepare(dict(inputs))
    pre = prefill(gp.adapter, batch, FixedKeep([keep], prune_layer))
    torch.testing.assert_close(pre.logits[0], ref_logits, atol=1e-5, rtol=1e-5)
    assert out.pruning.kept == [int(keep.sum())]


def test_pruning_changes_the_answer_distribution(qwen, gp, images):
    """Guard against a vacuous engine: dropping most tokens must change the logits."""
    model, processor = qwen
    inputs = build_inputs(processor, [QUESTION], [[images["square"]]])
    batch = gp.adapter.prepare(dict(inputs))
    n = int(batch.visual_mask.sum())
    full = prefill(gp.adapter, batch, FixedKeep([torch.ones(n, dtype=torch.bool)], 1)).logits
    keep = torch.zeros(n, dtype=torch.bool)
    keep[:3] = True
    pruned = prefill(gp.adapter, batch, FixedKeep([keep], 1)).logits
    assert (full - pruned).abs().max() > 1e-3


def test_batch_rows_equal_single_runs(qwen, gp, images):
    """Different images, sizes, kept counts and a text-only row in one left-padded batch."""
    _, processor = qwen
    questions = [QUESTION, "what colour is the shape in the image?", "describe the picture in one word.", "how many squares are there?"]
    image_lists = [[images["square"]], [images["tall"], images["wide"]], [], [images["wide"]]]
    kwargs = dict(max_keep_ratio=0.2, max_new_tokens=8, min_new_tokens=8)
    batch_out = gp.generate(**build_inputs(processor, questions, image_lists), **kwargs)
    kept = batch_out.pruning.kept
    assert len(set(kept)) > 1, "rows should keep different counts for this test to mean anything"
    for i, (q, ims) in enumerate(zip(questions, image_lists)):
        single = gp.generate(**build_inputs(processor, [q], [ims]), **kwargs)
        assert batch_out.generated[i].tolist() == single.generated[0].tolist(), f"row {i}"
        assert torch.equal(batch_out.pruning.samples[i].keep, single.pruning.samples[0].keep)
        assert batch_out.pruning.kv_lengths[i] == single.pruning.kv_lengths[0]


def test_kv_cache_holds_only_kept_tokens(qwen, gp, images):
    _, processor = qwen
    inputs = build_inputs(processor, [QUESTION, "what shape is the green object?"], [[images["square"]], [images["tall"]]])
    batch = gp.adapter.prepare(dict(inputs), gp.config.vip_visual_layers)
    pre = prefill(gp.adapter, batch, gp.method(max_keep_ratio=0.25))
    text = (batch.attention_mask.bool() & ~batch.visual_mask).sum(1)
    expected = [int(t) + k for t, k in zip(text, pre.pruning.kept)]
    assert pre.pruning.kv_lengths == expected
    assert pre.attention_mask.sum(1).tolist() == expected
    for layer in pre.cache.layers:
        assert layer.keys.shape[2] == max(expected) == layer.values.shape[2]
    assert max(expected) < batch.input_ids.shape[1]


def test_multi_image_sample_keeps_per_image_breakdown(qwen, gp, images):
    _, processor = qwen
    inputs = build_inputs(processor, ["compare the two pictures"], [[images["square"], images["wide"]]])
    out = gp.generate(**inputs, max_keep_ratio=0.1, max_new_tokens=3)
    sample = out.pruning.samples[0]
    assert len(sample.images) == 2
    assert sample.total == sum(im.total for im in sample.images)
    assert sample.kept <= int(0.1 * sample.total) and sample.kept >= 1
    per_image = gp.generate(**inputs, max_keep_ratio=0.1, per_image=True, max_new_tokens=3).pruning.samples[0]
    for im in per_image.images:
        assert 1 <= im.kept <= max(1, int(0.1 * im.total))


def test_sampling_is_reproducible_and_respects_eos(qwen, gp, images):
    _, processor = qwen
    inputs = build_inputs(processor, [QUESTION, QUESTION], [[images["square"]], [images["tall"]]])
    kwargs = dict(do_sample=True, temperature=0.8, top_k=20, top_p=0.9, max_new_tokens=10, max_keep_ratio=0.3)
    a = gp.generate(**inputs, generator=torch.Generator().manual_seed(3), **kwargs)
    b = gp.generate(**inputs, generator=torch.Generator().manual_seed(3), **kwargs)
    assert torch.equal(a.sequences, b.sequences)
    # Force EOS at the first step: generation stops after one token.
    eos = int(a.generated[0, 0])
    c = gp.generate(**inputs, max_new_tokens=10, eos_token_id=eos, pad_token_id=0, max_keep_ratio=0.3,
                    generator=torch.Generator().manual_seed(3), do_sample=True, temperature=0.8, top_k=20, top_p=0.9)
    assert c.generated[0, 0] == eos
    if c.generated.shape[1] > 1:
        assert (c.generated[0, 1:] == 0).all()


def test_scoring_identical_under_sdpa_and_eager(images):
    from glimpseprune import GlimpsePrune
    from glimpseprune.testing.tiny import tiny_qwen2_5_vl

    model, processor = tiny_qwen2_5_vl()
    gp_sdpa = GlimpsePrune(model, processor).with_new_modules(seed=0)
    inputs = build_inputs(processor, [QUESTION], [[images["wide"]]])
    a = gp_sdpa.generate(**inputs, max_keep_ratio=0.3, max_new_tokens=5)
    model.set_attn_implementation("eager")
    b = gp_sdpa.generate(**inputs, max_keep_ratio=0.3, max_new_tokens=5)
    sa, sb = a.pruning.samples[0].images[0].scores, b.pruning.samples[0].images[0].scores
    torch.testing.assert_close(sa, sb, atol=1e-5, rtol=1e-4)
    assert torch.equal(a.pruning.samples[0].keep, b.pruning.samples[0].keep)
    assert torch.equal(a.sequences, b.sequences)


def test_right_padded_input_is_handled(qwen, gp, images):
    _, processor = qwen
    left = build_inputs(processor, [QUESTION, "describe the picture in one word."], [[images["square"]], [images["tall"]]])
    processor.tokenizer.padding_side = "right"
    prompts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                                             add_generation_prompt=True, tokenize=False)
               for q in [QUESTION, "describe the picture in one word."]]
    right = processor(text=prompts, images=[images["square"], images["tall"]], return_tensors="pt", padding=True)
    processor.tokenizer.padding_side = "left"
    assert not right["attention_mask"][:, -1].all()
    a = gp.generate(**left, max_keep_ratio=0.3, max_new_tokens=6)
    b = gp.generate(**right, max_keep_ratio=0.3, max_new_tokens=6)
    assert torch.equal(a.generated, b.generated)
    # keep_indices refer to the caller's own columns
    for s_right, row in zip(b.pruning.samples, right["input_ids"]):
        kept_ids = row[s_right.keep_indices]
        assert int((kept_ids == gp.model.config.image_token_id).sum()) == s_right.kept


def test_stateless_between_calls(qwen, gp, images):
    _, processor = qwen
    inputs_a = build_inputs(processor, [QUESTION], [[images["square"]]])
    inputs_b = build_inputs(processor, ["what shape is the green object?"], [[images["wide"]]])
    sentinel = torch.tensor([[12345]])
    gp.model.model.rope_deltas = sentinel  # stock generate's per-request field: we must neither read nor write it
    first = gp.generate(**inputs_a, max_keep_ratio=0.2, max_new_tokens=6)
    gp.generate(**inputs_b, max_keep_ratio=0.5, max_new_tokens=6)
    again = gp.generate(**inputs_a, max_keep_ratio=0.2, max_new_tokens=6)
    assert torch.equal(first.sequences, again.sequences)
    assert gp.model.model.rope_deltas is sentinel
    gp.model.model.rope_deltas = None


class _TwoStage(FixedKeep):
    """Keep `first` at layer 1, then the subset `second` at layer 3 (a PyramidDrop-shaped schedule)."""

    name = "two_stage"

    def __init__(self, first, second, replace=None):
        super().__init__([first], 1)
        self.first, self.second, self.replace = first, second, replace

    @property
    def prune_layers(self):
        return [1, 3]

    def select(self, ctx):
        from glimpseprune.methods import Selection

        if ctx.layer == 1:
            return Selection(keep=[self.first])
        present = ctx.present()[0]
        assert torch.equal(present, self.first)  # the context reports what the first cut left
        return Selection(keep=[self.second], replace=None if self.replace is None else [self.replace])


def test_multi_stage_cuts_and_replacement_match_slow_reference(qwen, gp, images):
    model, processor = qwen
    inputs = build_inputs(processor, [QUESTION], [[images["square"]]])
    n = int((inputs["input_ids"] == model.config.image_token_id).sum())
    g = torch.Generator().manual_seed(5)
    first = torch.rand(n, generator=g) < 0.5
    second = first & (torch.rand(n, generator=g) < 0.5)
    ref_tokens, _ = reference_generate(model, dict(inputs), [(1, first), (3, second)], None, 8)
    out = gp.generate(**inputs, method=_TwoStage(first, second), max_new_tokens=8, min_new_tokens=8)
    assert out.generated[0].tolist() == ref_tokens
    assert out.pruning.stages == [(1, [int(first.sum())]), (3, [int(second.sum())])]
    expected = (1 + 2 * first.sum().item() / n + 1 * second.sum().item() / n) / 4
    assert abs(out.pruning.layer_averaged_retention - expected) < 1e-9
    merged = torch.randn(int(second.sum()), model.config.text_config.hidden_size, generator=g)
    ref_tokens, _ = reference_generate(model, dict(inputs), [(1, first), (3, second)], None, 8, replace=merged)
    out = gp.generate(**inputs, method=_TwoStage(first, second, merged), max_new_tokens=8, min_new_tokens=8)
    assert out.generated[0].tolist() == ref_tokens


def test_last_token_row_matches_eager_attention(qwen, gp, images):
    """The one-row recomputation equals the stock eager attention probabilities of the last prompt token."""
    from glimpseprune.methods import Selection

    model, processor = qwen
    inputs = build_inputs(processor, [QUESTION], [[images["wide"]]])
    seen = {}

    class Probe(FixedKeep):
        def select(self, ctx):
            seen["row"] = ctx.last_token_row(log_softmax=True).exp()
            return Selection(keep=[torch.ones(n, dtype=torch.bool)])

    n = int((inputs["input_ids"] == model.config.image_token_id).sum())
    gp.generate(**inputs, method=Probe([torch.ones(n, dtype=torch.bool)], 2), max_new_tokens=1)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            stock = model(**inputs, output_attentions=True).attentions[1][:, :, -1]
    finally:
        model.set_attn_implementation("sdpa")
    torch.testing.assert_close(seen["row"], stock.float(), atol=1e-5, rtol=1e-4)


def test_config_overrides_reach_every_field(gp):
    """Any field, including the family defaults, can be overridden when building modules."""
    for family_default in (dict(prune_layer=2), dict(vip_visual_layers=[3]), dict(attention_logits=False)):
        config = gp.with_new_modules(seed=0, **family_default).config
        for name, value in family_default.items():
            assert getattr(config, name) == value
    assert gp.with_new_modules(seed=0, vip_size=32, vip_cond_size=32).vip.in_proj.out_features == 32


def test_sliding_window_layers_get_their_own_mask(images):
    """Per-layer masks from config.layer_types: with sliding-window layers and a prompt longer than the window,
    the unpruned engine reproduces stock generate token for token (one full causal mask for every layer would
    not: the sliding model's outputs differ from the same weights with full attention), and a cut is refused."""
    from glimpseprune import GlimpsePrune
    from glimpseprune.testing.tiny import TinyQwenSpec, tiny_qwen2_5_vl

    kinds = ["full_attention", "sliding_attention", "full_attention", "sliding_attention"]
    sliding = TinyQwenSpec(text_overrides=(("use_sliding_window", True), ("sliding_window", 12),
                                           ("layer_types", kinds)))
    model, processor = tiny_qwen2_5_vl(sliding)
    full_model, _ = tiny_qwen2_5_vl()
    assert model.config.text_config.layer_types == kinds
    inputs = build_inputs(processor, [QUESTION], [[images["square"]]])
    assert inputs["input_ids"].shape[1] > 3 * 12
    n = 8
    stock = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    stock_full = full_model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    assert not torch.equal(stock, stock_full), "the window must matter, or this test proves nothing"
    gp = GlimpsePrune(model, processor).with_new_modules(seed=0)
    out = gp.generate(**inputs, method="none", max_new_tokens=n, min_new_tokens=n)
    assert torch.equal(out.sequences, stock)
    with pytest.raises(ValueError, match="full-attention layers only"):
        gp.generate(**inputs, max_new_tokens=2)
