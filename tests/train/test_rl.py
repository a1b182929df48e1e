"""GlimpsePrune+ RL mechanics: pruned rollouts, the consistent scoring forward, the GRPO objective, PEFT LoRA."""

import math
from pathlib import Path

import pytest
import torch

from glimpseprune import GlimpsePrune
from glimpseprune.engine import GenerationParams
from glimpseprune.methods import FixedKeep
from glimpseprune.processing import build_inputs
from glimpseprune.testing.tiny import tiny_qwen2_5_vl
from glimpseprune.train.grpo import group_advantages, grpo_loss, k3_kl
from glimpseprune.train.rl_forward import completion_logprobs, completion_mask, rollout, select_prompts
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
    r = rollout(gp.adapter, inputs, method, _params(), torch.Generator().manual_seed(0), group_size=2)
    assert r.completion.shape == (6, 6) and r.logprobs.shape == r.completion.shape
    assert not torch.equal(r.completion[0], r.completion[1])  # a group's completions are sampled independently
    kept = [int(k.sum()) for k in r.keep]
    assert all(0 < k < n for k, n in zip(kept, n_vis))  # a real cut, ragged over the rows
    scored = completion_logprobs(gp.adapter, r)
    torch.testing.assert_close(scored, r.logprobs, atol=1e-5, rtol=1e-5)
    # and the scoring forward is not vacuous: another kept set gives other log-probs for the same tokens
    other = select_prompts(r, [0, 1, 2])
    other.keep = [~k for k in r.keep]
    assert (completion_logprobs(gp.adapter, other) - r.logprobs).abs().max() > 1e-3


def test_scoring_forward_batch_rows_equal_single_rows(lora_gp):
    gp, _ = lora_gp
    inputs = _inputs(gp.processor)
    r = rollout(gp.adapter, inputs, gp.method("glimpse", max_keep_ratio=0.3), _params(),
                torch.Generator().manual_seed(5), group_size=2)
    full = completion_logprobs(gp.adapter, r)
    for b in range(3):
        single = completion_logprobs(gp.adapter, select_prompts(r, [b]))
        torch.testing.assert_close(single, full[2 * b:2 * b + 2], atol=1e-5, rtol=1e-5)


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


def test_group_advantages_leave_out_unscored_completions():
    rewards = torch.tensor([1.0, 0.0, 123.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    valid = torch.tensor([True, True, False, True, True, False, False, False])
    adv = group_advantages(rewards, 4, valid=valid)
    a = group_advantages(torch.tensor([1.0, 0.0, 1.0]), 3)  # the scored three alone
    torch.testing.assert_close(adv[:4], torch.stack([a[0], a[1], a.new_zeros(()), a[2]]))
    assert adv[4:].abs().sum() == 0  # one scored completion: no group baseline, no signal


def test_rewards_exact_judge_and_user_functions(tmp_path):
    from glimpseprune.eval.judge import JudgeResult
    from glimpseprune.train.rewards import build_reward, exact_match_reward, judge_reward, mixed_reward

    records = [{"question": "q", "answer": "There are two.", "short_answer": "two"}, {"question": "q", "answer": "red"}]
    assert exact_match_reward(records, ["Two.", "blue"]) == [1.0, 0.0]

    class Judge:  # a failed request and a scored one
        def score(self, question, reference, prediction):
            if prediction == "fail":
                return JudgeResult(score=0.0, raw="", cached=False, ok=False, error="timeout")
            return JudgeResult(score=0.7, raw="score: 0.7", cached=False, ok=True)

    assert judge_reward(Judge())(records, ["fail", "x"]) == [None, 0.7]  # flagged, never scored 0
    assert mixed_reward(Judge())(records, ["two", "fail"]) == [1.0, None]
    with pytest.raises(ValueError, match="judge"):
        mixed_reward(None)(records, ["two", "x"])
    assert build_reward("glimpseprune.train.rewards:exact_match_reward") is exact_match_reward
    with pytest.raises(ValueError, match="cannot import"):
        build_reward("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="needs reward_judge"):
        build_reward("judge")


# ---- the Run-A trainer -------------------------------------------------------------------------------------------


def _odd_length_reward(records, completions):
    """A reward that varies on a random tiny model (exact match would be 0 everywhere, so no gradient): the parity
    of the completion's character codes."""
    return [float(sum(map(ord, c)) % 2) for c in completions]


def _rl_trainer(tmp_path, records, **kw):
    from glimpseprune.train.rl_trainer import GRPOTrainer, RLConfig

    base = dict(model="tiny", output_dir=str(tmp_path), keep_source="vip", prune_layer=2, group_size=3,
                prompts_per_step=2, micro_batch=4, max_new_tokens=4, temperature=1.0, lr=1e-2, warmup_ratio=0.0,
                scheduler="constant", max_steps=2, lora_r=4, lora_alpha=8, max_pixels=112 * 112, save_every=1000,
                progress=False, resume=None, seed=3)
    base.update(kw)
    cfg = RLConfig(**base)
    from glimpseprune.train.rl_trainer import build_policy_model

    gp = build_policy_model(cfg, torch.device("cpu"))
    return GRPOTrainer(cfg, gp=gp, records=records, reward_fn=_odd_length_reward)


def _lora(trainer):
    return {n: p.detach().clone() for n, p in trainer.peft_model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("keep_source", ["vip", "boxes"])
def test_two_rl_steps_change_only_lora(tmp_path, shapes_records, keep_source):
    trainer = _rl_trainer(tmp_path, shapes_records[:4], keep_source=keep_source)
    base = {n: p.detach().clone() for n, p in trainer.gp.model.named_parameters() if "lora_" not in n}
    modules = {n: p.detach().clone() for n, p in list(trainer.gp.glimpse.named_parameters())
               + list(trainer.gp.vip.named_parameters())}
    lora_before = _lora(trainer)
    history = trainer.train()
    assert [h["step"] for h in history] == [1, 2]
    for key in ("reward", "kl", "kept_ratio", "completion_tokens", "reward/failed"):
        assert key in history[0]
    assert 0 < history[0]["kept_ratio"] < 1
    after = dict(trainer.gp.model.named_parameters())
    assert all(torch.equal(base[n], after[n]) for n in base)  # base weights bitwise unchanged
    assert all(torch.equal(modules[n], p) for n, p in list(trainer.gp.glimpse.named_parameters())
               + list(trainer.gp.vip.named_parameters()))
    lora_after = _lora(trainer)
    assert any(not torch.equal(lora_before[n], lora_after[n]) for n in lora_before)
    assert history[1]["kl"] > 0  # after one update the policy has left the reference
    assert (tmp_path / "final" / "adapter" / "adapter_model.safetensors").is_file()
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.bin"))  # nothing pickled


def test_rl_resume_is_exact(tmp_path, shapes_records):
    records = shapes_records[:4]
    straight = _rl_trainer(tmp_path / "a", records, max_steps=2)
    straight.train()
    killed = _rl_trainer(tmp_path / "b", records, max_steps=2, save_every=1)
    killed.train(stop_at=1)  # the process dies after step 1 (checkpoint-1 is on disk)
    resumed = _rl_trainer(tmp_path / "b", records, max_steps=2, save_every=1, resume="auto")
    history = resumed.train()
    assert [h["step"] for h in history] == [2]
    assert resumed.history[-1]["kl"] > 0  # the resumed step starts from the trained LoRA, not from zero
    a, b = _lora(straight), _lora(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert straight.history[-1] == history[-1] | {"seconds": straight.history[-1]["seconds"]}


# ---- GP+ pipeline: Run A -> merge -> Run B -> artefacts in both layouts ----------------------------------------


def test_train_plus_artefacts_round_trip(tmp_path, shapes_records):
    from glimpseprune.checkpoint import load_modules
    from glimpseprune.data.scenes import all_texts
    from glimpseprune.train.plus import train_plus

    from .conftest import MAX_PIXELS, SMALL_VIP

    base_dir = tmp_path / "base"
    model, processor = tiny_qwen2_5_vl(corpus=all_texts())
    model.save_pretrained(base_dir)
    processor.save_pretrained(base_dir)
    config = {
        "output_dir": str(tmp_path / "plus"),
        "run_a": dict(model=str(base_dir), keep_source="boxes", prune_layer=2, group_size=4, prompts_per_step=2,
                      max_new_tokens=3, lr=1e-2, warmup_ratio=0.0, scheduler="constant", max_steps=1, lora_r=4,
                      lora_alpha=8, max_pixels=MAX_PIXELS, progress=False, resume=None, seed=0),
        "run_b": dict(model=str(base_dir), dtype="float32", mode="box", lr=1e-3, warmup_ratio=0.0,
                      scheduler="constant", max_steps=1, batch_size=1, grad_accum=1, mixed_precision="no",
                      glimpse=dict(SMALL_VIP), glimpse_dropout=0.0, max_pixels=MAX_PIXELS, progress=False,
                      resume=None, log_every=1, save_every=1000),
    }
    paths = train_plus(config, records=shapes_records[:2], reward_fn=_odd_length_reward)
    ours, ref = Path(paths["final"]), Path(paths["final_reference"])
    assert {p.name for p in ref.iterdir()} == {"config.json", "new_modules_gp.pt", "adapter_config.json",
                                              "adapter_model.safetensors"}
    # the reference layout uses the transformers-4.51 key prefix; ours the 5.x one; same tensors
    from safetensors.torch import load_file

    a, b = load_file(str(ours / "adapter" / "adapter_model.safetensors")), load_file(
        str(ref / "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.model.layers.") for k in b)
    assert sorted(k.replace("model.language_model.layers.", "model.layers.") for k in a) == sorted(b)
    assert all(torch.equal(a[k], b[k.replace("model.language_model.layers.", "model.layers.")]) for k in a)

    gp_ours = GlimpsePrune.from_pretrained(base_dir, glimpse=ours / "glimpse", adapter=ours / "adapter",
                                           dtype=torch.float32)
    gp_ref = GlimpsePrune.from_pretrained(base_dir, glimpse=ref, adapter=ref, dtype=torch.float32)
    assert gp_ours.config.prune_layer == 2 == gp_ref.config.prune_layer
    # the LoRA really was merged (and the same way from both layouts)
    plain = GlimpsePrune.from_pretrained(base_dir, dtype=torch.float32)
    w = "model.language_model.layers.0.self_attn.q_proj.weight"
    sd_ours, sd_ref, sd_plain = gp_ours.model.state_dict(), gp_ref.model.state_dict(), plain.model.state_dict()
    assert not torch.equal(sd_ours[w], sd_plain[w])
    assert all(torch.equal(sd_ours[k], sd_ref[k]) for k in sd_ours)
    # modules: ours bit for bit as trained; the reference layout stores bfloat16
    run_b_final = load_modules(tmp_path / "plus" / "run_b" / "final", gp_ours.adapter.default_glimpse_config())
    for x, y in zip(gp_ours.vip.state_dict().values(), run_b_final[2].state_dict().values()):
        assert torch.equal(x, y)
    for x, y in zip(gp_ref.vip.state_dict().values(), gp_ours.vip.state_dict().values()):
        torch.testing.assert_close(x, y.to(torch.bfloat16).float())
    inputs = build_inputs(gp_ours.processor, ["what colour is the shape in the image?"], [[scene(112, 112, 0)]])
    out = gp_ours.generate(**inputs, max_new_tokens=3)
    assert out.pruning.prune_layer == 2
    # the mini evaluation runs on these artefacts: every row scored, the random control at GP+'s counts
    from glimpseprune.mini.evaluate_plus import evaluate
    from glimpseprune.mini.pretrain import synthetic_examples

    report = evaluate(plain, plain.with_new_modules(seed=0, prune_layer=2), gp_ours,
                      synthetic_examples(2, 0, 448, "test"), batch_size=2, progress=False)
    assert report["n"] == 2 and report["plus_prune_layer"] == 2
    assert all(r["kept_random"] == r["kept_plus"] for r in report["rows"])


def test_plus_evaluation_control_keeps_the_same_counts_and_pairs_rows():
    from glimpseprune.mini.evaluate_plus import ROWS, random_keep, summarize

    keep = random_keep([3, 0, 7], [16, 16, 20], seed=1)
    assert [int(k.sum()) for k in keep] == [3, 0, 7] and [k.numel() for k in keep] == [16, 16, 20]
    assert not torch.equal(keep[0], random_keep([3], [16], seed=2)[0])  # the seed matters
    rows = []
    for i in range(6):
        row = {"qtype": "count" if i < 3 else "exists", "total": 16, "kept_stage1": 2, "kept_plus": 4}
        row.update({f"em_{name}": 1.0 for name in ROWS})
        row["em_random"] = float(i % 2)
        rows.append(row)
    report = summarize(rows, 1.0, 2, 2)
    assert report["em_random"] == 0.5 and report["em_plus"] == 1.0
    assert report["paired"]["plus_vs_random"]["a_only"] == 3
    assert report["per_qtype"]["count"]["n"] == 3 and report["kept_ratio_plus"] == 0.25


def test_train_plus_cli_is_registered(capsys):
    from glimpseprune.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train-plus", "--help"])
    assert exc.value.code == 0
    assert "--config" in capsys.readouterr().out


def test_plus_config_rejects_unknown_keys(tmp_path):
    from glimpseprune.train.plus import load_config
    from glimpseprune.train.rl_trainer import RLConfig

    path = tmp_path / "c.json"
    path.write_text('{"output_dir": "x", "run_a": {"max_steps": 3}}')
    assert load_config(path, ["run_a.max_steps=5", "run_b.lr=0.1"]) == {
        "output_dir": "x", "run_a": {"max_steps": 5}, "run_b": {"lr": 0.1}}
    path.write_text('{"output_dir": "x", "run_c": {}}')
    with pytest.raises(ValueError, match="run_c"):
        load_config(path)
    with pytest.raises(ValueError, match="unknown RL config keys"):
        RLConfig.from_dict({"lora_rank": 3})
    with pytest.raises(ValueError, match="keep_source"):
        RLConfig(keep_source="random")
