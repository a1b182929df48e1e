"""Decoding with per-call rotary tables and a grown mask (issue 17) stays exact: a left-padded batch decodes token
for token like stock ``generate``, under SDPA (boolean mask) and eager attention (additive float mask)."""

import pytest
import torch

from glimpseprune import GlimpsePrune
from glimpseprune.processing import build_inputs
from glimpseprune.testing.tiny import tiny_qwen2_5_vl


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padded_batch_decodes_like_stock_generate(attn, images):
    model, processor = tiny_qwen2_5_vl()
    model.set_attn_implementation(attn)
    gp = GlimpsePrune(model, processor)
    inputs = build_inputs(processor, ["is there a red circle?", "describe the picture in one word please."],
                          [[images["square"]], [images["tall"]]])
    assert not inputs["attention_mask"][:, 0].all()  # left padding: the decode mask is a real tensor
    stock = model.generate(**inputs, max_new_tokens=10, min_new_tokens=10, do_sample=False)
    ours = gp.generate(**inputs, method="none", max_new_tokens=10, min_new_tokens=10)
    assert torch.equal(ours.sequences, stock)
