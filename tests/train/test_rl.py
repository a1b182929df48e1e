"""GlimpsePrune+ RL mechanics: pruned rollouts, the consistent scoring forward, the GRPO objective, PEFT LoRA."""

import math

import pytest
import torch

from glimpseprune import GlimpsePrune
from glimpseprune.engine import GenerationParams
from glimpseprune.methods import FixedKeep
from glimpseprune.processing import build_inputs
from glimpseprune.tiny import tiny_qwen2_5_vl
from glimpseprune.train.grpo import group_advantages, grpo_loss, k3_kl
from glimpseprune.train.rl_forward import completion_logprobs, completion_mask, rollout, select_rows
from glimpseprune.train.rl_lora import add_lora, decoder_linear_names

from ..conftest import scene


@pytest.fixture(scope="module")
def lora_gp():
    """A tiny Qwen2.5-VL with fresh GlimpsePrune modules and a PEFT LoRA whose B factors are non-zero (a LoRA at
    its zero init would not show that the scoring forward runs through the adapter)."""
    model, processor = tiny_qwen2_5_vl()
    model.requires_grad_(False)
    gp = GlimpsePrune(model, processor).with_new_modules(seed=0, prune_layer=2)
    peft_model = add_lora(model, gp.adapter, r=4, alpha=8, seed=0)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return gp, peft_model


def _inputs(processor):
    # different image sizes and questions: rows of different lengths, left padded
    questions = ["is there a red circle?", "what colour is the shape in the image?", "how many squares are there?"]
    images = [[scene(112, 112, 0)], [scene(84, 140, 1)], [scene(168, 112, 2)]]
    inputs = build_inputs(processor, questions, images)
    assert (inputs["attention_mask"] == 0).any()  # left padding present
    return dict(inputs)


def _params(temperature=1.3, max_new_tokens=6):
    return GenerationParams.resolve(None, do_sample=True, temperature=temperature, max_new_tokens=max_new_tokens,
                                    eos_token_id=[2])


@pytest.mark.parametrize("source", ["vip", "boxes"])
def test_scoring_forward_reproduces_rollout_logprobs(lora_gp, source):
    gp, _ = lora_gp
    inputs = _inputs(gp.processor)
    n_vis = (inputs["input_ids"] == gp.model.config.image_token_id).sum(1).tolist()
    if source == "vip":
        method = gp.method("glimpse", max_keep_ratio=0.3)
    else:
        g = torch.Generator().manual_seed(3)
        method = FixedKeep([torch.rand(n, generator=g) < 0.4 for n in n_vis], prune_layer=2)
    r = rollout(gp.adapter, inputs, method, _params(), torch.Generator().manual_seed(0))
    assert r.completion.shape[1] == 6 and r.logprobs.shape == r.completion.shape
    kept = [int(k.sum()) for k in r.keep]
    assert all(0 < k < n for k, n in zip(kept, n_vis))  # a real cut, ragged over the rows
    scored = completion_logprobs(gp.adapter, r)
    torch.testing.assert_close(scored, r.logprobs, atol=1e-5, rtol=1e-5)
    # and the scoring forward is not vacuous: another kept set gives other log-probs for the same tokens
    other = select_rows(r, [0, 1, 2])
    other.keep = [~k for k in r.keep]
    assert (completion_logprobs(gp.adapter, other) - r.logprobs).abs().max() > 1e-3


def test_scoring_forward_batch_rows_equal_single_rows(lora_gp):
    gp, _ = lora_gp
    inputs = _inputs(gp.processor)
    r = rollout(gp.adapter, inputs, gp.method("glimpse", max_keep_ratio=0.3), _params(),
                torch.Generator().manual_seed(5))
    full = completion_logprobs(gp.adapter, r)
    for b in range(3):
        single = completion_logprobs(gp.adapter, select_rows(r, [b]))
        torch.testing.assert_close(single[0], full[b], atol=1e-5, rtol=1e-5)


def test_scoring_forward_has_gradients_on_lora_only(lora_gp):
    gp, peft_model = lora_gp
    inputs = _inputs(gp.processor)
    r = rollout(gp.adapter, inputs, gp.method("glimpse", max_keep_ratio=0.3), _params(),
                torch.Generator().manual_seed(1))
    peft_model.zero_grad()
    (completion_logprobs(gp.adapter, r) * r.completion_mask).sum().backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_A" in n)
    peft_model.zero_grad()
    # the adapter-disabled model (the reference policy) scores the same tokens differently
    with torch.no_grad(), peft_model.disable_adapter():
        ref = completion_logprobs(gp.adapter, r)
    assert (ref - r.logprobs).abs().max() > 1e-3


def test_lora_targets_every_decoder_linear(lora_gp):
    gp, peft_model = lora_gp
    n_layers = gp.adapter.num_layers
    lora_modules = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A." in n}
    assert len(lora_modules) == 7 * n_layers
    assert all(".language_model.layers." in n for n in lora_modules)
    assert {n.rsplit(".", 1)[1] for n in lora_modules} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                            "up_proj", "down_proj"}


def test_decoder_linear_names_skip_vision_and_head():
    model, _ = tiny_qwen2_5_vl()
    gp = GlimpsePrune(model)
    names = decoder_linear_names(model, gp.adapter)
    assert not any("visual" in n or "lm_head" in n or "embed" in n for n in names)


def test_completion_mask_stops_after_first_end_token():
    tokens = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 2, 2, 2]])
    assert completion_mask(tokens, [2]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_rollout_refuses_processors_that_change_the_sampling_distribution(lora_gp):
    gp, _ = lora_gp
    inputs = _inputs(gp.processor)
    method = gp.method("glimpse")
    for bad in (dict(top_k=5), dict(top_p=0.9), dict(repetition_penalty=1.2), dict(do_sample=False)):
        params = GenerationParams.resolve(None, **{"do_sample": True, "max_new_tokens": 2, **bad})
        with pytest.raises(ValueError, match="sample|unsupported"):
            rollout(gp.adapter, inputs, method, params)


# ---- GRPO objective --------------------------------------------------------------------------------------------


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, 4, eps=1e-4)
    # group 1: mean 0.5, unbiased std sqrt(((.5)^2 * 4) / 3) = 0.57735
    s = math.sqrt(1 / 3)
    expected = [0.5 / (s + 1e-4), -0.5 / (s + 1e-4), -0.5 / (s + 1e-4), 0.5 / (s + 1e-4), 0, 0, 0, 0]
    torch.testing.assert_close(adv, torch.tensor(expected))
    with pytest.raises(ValueError):
        group_advantages(torch.ones(6), 4)


def test_k3_kl_by_hand():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.0, -1.0, -1.5])
    # d = ref - logp = [0, 1, -1]; exp(d) - d - 1 = [0, e - 2, 1/e]
    torch.testing.assert_close(k3_kl(logp, ref), torch.tensor([0.0, math.e - 2, math.exp(-1)]))
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def test_grpo_loss_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
    old = torch.tensor([[-1.0, -2.5, -3.0], [-0.5, -0.5, -0.5]])
    ref = torch.tensor([[-1.0, -2.0, -2.0], [-0.5, -0.5, -0.5]])
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    out = grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, beta=0.1)
    # row 0: ratios [1, e^0.5=1.6487]; A = 1: min(r, clip(r)) = [1, 1.2]; kl on token 0,1: [0, 0] -> mean -(1+1.2)/2
    # row 1: ratios 1, A = -2: policy 2 per token, kl 0 -> 2
    expected = (-(1 + 1.2) / 2 + 2.0) / 2
    torch.testing.assert_close(out.loss, torch.tensor(expected))
    assert out.clipped == pytest.approx(1 / 5)
    # the KL term: row 0 token 2 is masked, so only a visible difference counts
    ref2 = ref.clone()
    ref2[0, 0] = -2.0  # d = -1 -> k3 = 1/e on one of two tokens of row 0
    out2 = grpo_loss(logp, old, ref2, adv, mask, clip_eps=0.2, beta=0.1)
    torch.testing.assert_close(out2.loss - out.loss, torch.tensor(0.1 * math.exp(-1) / 2 / 2))
    # gradient at ratio 1 is -A * d log pi (the published single-iteration objective)
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    grpo_loss(lp, lp.detach(), None, torch.tensor([3.0]), torch.ones(1, 2), beta=0.0).loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-1.5, -1.5]]))
