"""Stage-1 trainer: frozen base, learning signal (box and box-free), exact resume, validation report."""

import json

import pytest
import torch

from glimpseprune.state_io import load_state
from glimpseprune.train.boxfree import budget_shift, exact_budget_logits
from glimpseprune.train.trainer import STATE_NAME, Stage1Trainer, TrainConfig, find_checkpoint
from glimpseprune.train.validate import validate

from .conftest import make_records, train_config


def _trainer(tmp_path, model, records, val=None, **kw):
    m, p = model
    return Stage1Trainer(train_config(tmp_path, **kw), model=m, processor=p, records=records, val_records=val)


def _grads_after_one_backward(trainer, records):
    batch = trainer.collate(records[:1])
    trainer.module.train()
    trainer.module(batch)["loss"].backward()


@pytest.mark.parametrize("mode", ["box", "boxfree"])
def test_only_glimpse_and_vip_train_and_base_is_unchanged(tmp_path, tiny_train_model, shapes_records, mode):
    model, _ = tiny_train_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(tmp_path, tiny_train_model, shapes_records[:2], mode=mode, grad_accum=1, max_steps=1)
    _grads_after_one_backward(trainer, shapes_records)
    assert all(p.grad is None for p in model.parameters())
    assert all(not p.requires_grad for p in model.parameters())
    for name, p in trainer.module.named_parameters():
        if name.startswith("vip.") or name in ("glimpse.embeddings", "glimpse.proj.weight"):
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert trainer.module.vip.out_proj.weight.grad.abs().sum() > 0
    assert trainer.module.glimpse.embeddings.grad.abs().sum() > 0
    trainer.module.zero_grad()
    trainer.train()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # only the trainable modules went to the optimiser
    n_opt = sum(p.numel() for g in trainer._raw_optimizer().param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in trainer.module.parameters())


def test_lm_loss_reaches_glimpse_but_not_vip(tmp_path, tiny_train_model, shapes_records):
    trainer = _trainer(tmp_path, tiny_train_model, shapes_records[:1], loc_weight=0.0, grad_accum=1)
    _grads_after_one_backward(trainer, shapes_records)
    assert trainer.module.glimpse.embeddings.grad.abs().sum() > 0
    vip_grads = [p.grad for p in trainer.module.vip.parameters()]
    assert all(g is None or g.abs().sum() == 0 for g in vip_grads)


@torch.no_grad()
def _eval_losses(trainer, records):
    """Loss parts averaged over ``records``, eval mode (no dropout): a fixed yardstick before/after training."""
    trainer.module.eval()
    parts = [trainer.module(trainer.collate([r])) for r in records]
    trainer.module.train()
    keys = [k for k, v in parts[0].items() if torch.is_tensor(v) and v.dim() == 0]
    return {k: sum(float(p[k]) for p in parts) / len(parts) for k in keys}


def test_box_mode_lowers_mask_and_lm_loss(tmp_path, tiny_train_model, shapes_records):
    # the same 4 grounded samples over and over: the VIP must fit their boxes, the glimpse the answers
    records = shapes_records[:4]
    trainer = _trainer(tmp_path, tiny_train_model, records * 3, lr=1e-3, grad_accum=1, max_steps=12)
    before = _eval_losses(trainer, records)
    history = trainer.train()
    after = _eval_losses(trainer, records)
    assert after["loc"] < before["loc"] - 0.02, (before, after)
    assert after["lm"] < before["lm"] - 0.05, (before, after)
    assert {"dice", "bce", "precision", "recall", "f1", "iou", "keep_ratio"} <= set(history[-1])
    assert (tmp_path / "final" / "glimpse.safetensors").is_file()
    assert len(open(tmp_path / "log.jsonl").read().splitlines()) == 12


def test_boxfree_lowers_kl_plus_sparsity(tmp_path, tiny_train_model, shapes_records):
    records = shapes_records[:4]
    trainer = _trainer(tmp_path, tiny_train_model, records * 3, mode="boxfree", lr=1e-3, grad_accum=1,
                       max_steps=12, boxfree={"target_keep": 0.25, "sparsity_weight": 1.0, "kl_weight": 1.0})
    before = _eval_losses(trainer, records)
    history = trainer.train()
    after = _eval_losses(trainer, records)
    assert after["loss"] < before["loss"], (before, after)
    assert "kl" in history[-1] and "sparsity" in history[-1] and "mean_p" in history[-1]


def test_boxfree_exact_budget_holds_keep_and_lowers_kl(tmp_path, tiny_train_model, shapes_records):
    # grad_accum = number of records: every logged step averages the KL over all 4 samples at the same parameters,
    # so the logged curve is the full-data KL, not one sample's. lr 1e-3 / 10 steps: on seeds 0, 1, 2, 3, 42 the
    # last-3 mean was 0.77-0.85 of the first-3 mean (lr 0: exactly 1.0, so the bound below can fail). The penalty
    # budget on the same setup moves mean p by up to 0.5 and its KL ends 14-23 % *higher*.
    target = 0.25
    trainer = _trainer(tmp_path, tiny_train_model, shapes_records[:4], mode="boxfree", lr=1e-3, grad_accum=4,
                       max_steps=10, boxfree={"budget": "exact", "target_keep": target})
    history = trainer.train()
    assert len(history) == 10
    for record in history:
        assert abs(record["mean_p"] - target) <= 1e-3, record
        assert record["loss"] == pytest.approx(record["kl"])  # no sparsity term: the budget holds by construction
    kl = [record["kl"] for record in history]
    first, last = sum(kl[:3]) / 3, sum(kl[-3:]) / 3
    assert last < 0.9 * first, kl
    # the shipped policy ranks tokens at the trained budget instead of thresholding offset-free logits
    assert (trainer.gp_config.threshold, trainer.gp_config.max_keep_ratio) == (0.0, target)
    # ... and the logged keep ratio is that policy's (top floor(target * n)); "p > 0.5" logged 0.03 here
    for record in history:
        assert record["keep_ratio"] == pytest.approx(target, abs=0.02), record


@pytest.mark.parametrize("target", [1e-3, 0.05, 0.3, 0.5, 0.97])
def test_budget_shift_hits_the_target_mean(target):
    g = torch.Generator().manual_seed(0)
    for logits in (torch.randn(300, generator=g) * 4 + 3, torch.full((7,), -2.0), torch.tensor([5.0])):
        shift = budget_shift(logits, target)
        assert abs(torch.sigmoid(logits + shift.float()).mean().item() - target) < 1e-5
        # a common offset of the logits only moves the shift
        assert float(budget_shift(logits + 10.0, target)) == pytest.approx(float(shift) - 10.0, abs=1e-5)


def test_budget_shift_is_monotone_in_the_target():
    logits = torch.randn(100, generator=torch.Generator().manual_seed(1)) * 3
    shifts = [float(budget_shift(logits, t)) for t in (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)]
    assert all(a < b for a, b in zip(shifts, shifts[1:])), shifts


def test_exact_budget_logits_gradient_stays_on_the_budget():
    logits = (torch.randn(40, generator=torch.Generator().manual_seed(2)) * 2).requires_grad_()
    keep = torch.sigmoid(exact_budget_logits(logits, 0.3))
    assert keep.mean().item() == pytest.approx(0.3, abs=1e-6)
    weights = torch.linspace(-1, 1, 40)
    (keep * weights).sum().backward()
    assert logits.grad.abs().sum() > 0  # the loss reaches the logits...
    assert abs(float(logits.grad.sum())) < 1e-5  # ...but a common offset, which the shift cancels, gets none


@pytest.mark.parametrize("target", [0.0, 1.0, -0.1, 1.5])
def test_exact_budget_rejects_targets_outside_0_1(tmp_path, target):
    with pytest.raises(ValueError, match="target_keep"):
        TrainConfig(mode="boxfree", boxfree={"budget": "exact", "target_keep": target})
    with pytest.raises(ValueError, match="target_keep"):
        budget_shift(torch.zeros(3), target)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"mode": "boxfree", "boxfree": {"budget": "exact"}}))
    with pytest.raises(ValueError, match="target_keep"):
        TrainConfig.from_file(path, [f"boxfree.target_keep={target}"])


def test_boxfree_config_is_checked_at_load(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"mode": "boxfree", "boxfree": {"target_keep": 0.2}}))
    cfg = TrainConfig.from_file(path, ["boxfree.budget=exact"])
    assert cfg.boxfree == {"target_keep": 0.2, "budget": "exact"}
    with pytest.raises(ValueError, match="budget"):
        TrainConfig.from_file(path, ["boxfree.budget=hard"])
    with pytest.raises(ValueError, match="unknown boxfree"):
        TrainConfig.from_file(path, ["boxfree.target=0.2"])
    assert TrainConfig(mode="boxfree", boxfree={"target_keep": 0.0}).boxfree["target_keep"] == 0.0  # penalty: ok


def _opt_state(trainer):
    return trainer._raw_optimizer().state_dict()


def _assert_same_state(a, b):
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for name, value in a["state"][k].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][k][name])), (k, name)


@pytest.mark.parametrize("val_every", [0, 1])
def test_kill_and_resume_is_exact(tmp_path, tiny_train_model, shapes_records, val_every):
    records = shapes_records[:6]
    val = make_records(2, split="val") if val_every else None  # held-out passes at steps 1 and 2 must not matter
    kw = dict(grad_accum=2, max_steps=3, save_every=2, glimpse_dropout=0.1, scheduler="cosine", warmup_ratio=0.3,
              val_every=val_every)
    full = _trainer(tmp_path / "full", tiny_train_model, records, val, **kw)
    full.train()

    killed = _trainer(tmp_path / "run", tiny_train_model, records, val, **kw)
    killed.train(stop_at=2)  # checkpoint-2 written, then the process "dies" before step 3
    saved_state = load_state(tmp_path / "run" / "checkpoint-2" / STATE_NAME)
    _assert_same_state(saved_state["optimizer"], _opt_state(killed))
    assert find_checkpoint(tmp_path / "run").name == "checkpoint-2"

    resumed = _trainer(tmp_path / "run", tiny_train_model, records, val, resume="auto", **kw)
    resumed.load(find_checkpoint(tmp_path / "run"))
    assert resumed.step == 2
    _assert_same_state(_opt_state(resumed), saved_state["optimizer"])
    assert resumed.scheduler.state_dict()["last_epoch"] == 2
    resumed = _trainer(tmp_path / "run", tiny_train_model, records, val, resume="auto", **kw)
    resumed.train()
    assert [h["step"] for h in resumed.history] == [3]
    _assert_same_state(_opt_state(resumed), _opt_state(full))
    for (n, a), (_, b) in zip(full.module.named_parameters(), resumed.module.named_parameters()):
        assert torch.equal(a, b), n


def test_validation_reports_keep_ratio_distribution(tmp_path, tiny_train_model, shapes_records):
    trainer = _trainer(tmp_path, tiny_train_model, shapes_records[:2])
    val = make_records(4, split="val")
    report = validate(trainer.adapter, trainer.processor, trainer.gp_config, trainer.module.glimpse,
                      trainer.module.vip, val, max_pixels=trainer.cfg.max_pixels)
    assert report["n"] == 4
    assert 0.0 <= report["keep_ratio_min"] <= report["keep_ratio_median"] <= report["keep_ratio_max"] <= 1.0
    assert report["keep_ratio_min"] > 0  # min_keep = 1
    assert report["n_with_box"] == sum(bool(r["bboxs"]) for r in val)
    assert 0.0 <= report["mask_iou"] <= 1.0
    assert trainer.module.training  # restored


def test_val_every_logs_held_out_passes_without_changing_training(tmp_path, tiny_train_model, shapes_records,
                                                                  monkeypatch):
    import random

    import glimpseprune.train.trainer as trainer_module

    records, val = shapes_records[:4], make_records(5, split="val")
    kw = dict(grad_accum=1, max_steps=6, glimpse_dropout=0.1)  # dropout on: validation must not consume its RNG
    plain = _trainer(tmp_path / "plain", tiny_train_model, records, val, **kw)
    plain.train()

    def validate_drawing_random_numbers(*args, **kwargs):  # whatever validation draws must not reach training
        torch.rand(3), random.random()
        return validate(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "validate", validate_drawing_random_numbers)
    trainer = _trainer(tmp_path / "val", tiny_train_model, records, val, val_every=2, val_max_items=3, **kw)
    trainer.train()

    lines = [json.loads(line) for line in open(tmp_path / "val" / "log.jsonl").read().splitlines()]
    val_records = [r for r in lines if any(k.startswith("val/") for k in r)]
    # steps 2 and 4; not 6, the final step, which is left to the full pass after training
    assert [r["step"] for r in val_records] == [2, 4]
    assert [r["step"] for r in trainer.history if "val/n" in r] == [2, 4]
    for r in val_records:
        assert r["val/n"] == 3  # val_max_items
        assert 0.0 <= r["val/keep_ratio_min"] <= r["val/keep_ratio_median"] <= r["val/keep_ratio_max"] <= 1.0
        assert "val/mask_iou" in r and not any(k in r for k in ("loss", "lr"))
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert trainer.module.training and trainer.module.glimpse.training and trainer.module.vip.training
    for (n, a), (_, b) in zip(plain.module.named_parameters(), trainer.module.named_parameters()):
        assert torch.equal(a, b), n
    assert not any("val/n" in r for r in plain.history)


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"_comment": "x", "mode": "box", "lr": 1e-4, "glimpse": {"vip_size": 32}}))
    cfg = TrainConfig.from_file(path, ["lr=2e-4", "mode=boxfree", "glimpse.prune_layer=2", "resume=null"])
    assert cfg.lr == 2e-4 and cfg.mode == "boxfree" and cfg.resume is None
    assert cfg.glimpse == {"vip_size": 32, "prune_layer": 2}
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_file(path, ["learning_rate=1"])


@pytest.mark.parametrize("name", ["qwen2_5_vl_3b_gqa20k", "qwen2_5_vl_7b_gqa20k", "llava_1_5_7b_gqa20k",
                                  "tiny_offline"])
def test_shipped_configs_parse(name):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs" / "train"
    cfg = TrainConfig.from_file(root / f"{name}.json")
    if name != "tiny_offline":
        assert (cfg.lr, cfg.scheduler, cfg.warmup_ratio, cfg.epochs, cfg.grad_accum, cfg.seed) == (
            1e-4, "cosine", 0.1, 1, 8, 42)
        assert cfg.mixed_precision == "bf16" and cfg.glimpse_dropout == 0.1 and cfg.weight_decay == 0.0
        assert cfg.data == "viscot/gqa_cot_train.jsonl:random:20000"
