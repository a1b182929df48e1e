"""The embedded mini model (issue #6): shipped files, a known answer, the demo, and the pretraining recipe."""

import json

import pytest
import torch

from glimpseprune import assets

MINI = assets.MINI_DIR
shipped = pytest.mark.skipif(not (MINI / "base" / "config.json").is_file(), reason="mini assets not built")


@pytest.fixture(scope="module")
def mini():
    from glimpseprune.model import GlimpsePrune

    torch.set_num_threads(1)
    # The normal public path, offline: local folders only.
    return GlimpsePrune.from_pretrained(MINI / "base", MINI / "glimpse", device="cpu")


@shipped
def test_shipped_files_are_small_and_complete():
    names = {p.name for p in (MINI / "base").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.json"} <= names
    assert {p.name for p in (MINI / "glimpse").iterdir()} >= {"glimpse_config.json", "glimpse.safetensors"}
    assert (MINI / "MODEL_CARD.md").is_file()
    total = sum(p.stat().st_size for p in MINI.rglob("*") if p.is_file())
    assert total < 15 * 2**20


@shipped
@pytest.mark.parametrize("question", [assets.EXAMPLE_QUESTION, "what colour is the triangle?"])
def test_shipped_model_answers_the_example_scene(mini, question):
    image = assets.example_image()
    full, full_out = mini.answer([image], question, method="none", max_new_tokens=4)
    pruned, out = mini.answer([image], question, method="glimpse", max_new_tokens=4)
    assert full == assets.EXAMPLE_ANSWER
    assert pruned == assets.EXAMPLE_ANSWER
    sample = out.pruning.samples[0]
    assert sample.total == 256
    assert 1 <= sample.kept <= 0.2 * sample.total
    assert full_out.pruning.samples[0].kept == sample.total  # unpruned keeps everything


@shipped
def test_default_model_is_the_mini_model():
    model, description = assets.default_model()
    assert "mini" in description and model.glimpse is not None


def test_demo_writes_a_self_contained_report(tmp_path, capsys):
    from glimpseprune.cli import main

    assert main(["demo", "--n", "2", "--out", str(tmp_path / "demo"), "--threads", "1"]) == 0
    html = (tmp_path / "demo" / "index.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "GlimpsePrune" in html and "prefill" in html
    pngs = sorted(p.name for p in (tmp_path / "demo").glob("*.png"))
    assert len(pngs) == 4
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert len(results["rows"]) == 2 and all(0 < r["kept"] <= r["total"] for r in results["rows"])
    assert "report:" in capsys.readouterr().out


def _tiny_recipe(out_dir, **extra):
    from glimpseprune.mini.pretrain import PretrainConfig

    overrides = [f"output_dir={out_dir}", "steps=2", "batch_size=2", "save_every=1", "eval_every=0", "n_val=2",
                 "synthetic.n_train=8", "num_workers=0", "progress=false", "max_pixels=12544", "warmup_steps=1",
                 "model.text_hidden=32", "model.text_layers=2", "model.text_heads=4", "model.text_kv_heads=2",
                 "model.text_intermediate=64", "model.vision_hidden=32", "model.vision_intermediate=64",
                 "model.vision_heads=2", "model.vision_depth=2", "model.fullatt_blocks=[1]"]
    overrides += [f"{k}={json.dumps(v)}" for k, v in extra.items()]
    return PretrainConfig.from_dict({}, overrides)


def test_pretrain_recipe_runs_and_resumes(tmp_path):
    from glimpseprune.mini.pretrain import pretrain
    from glimpseprune.model import GlimpsePrune

    logs = []
    # max_minutes=0: stop (with a checkpoint) after the first step, as an interrupted run would.
    first = pretrain(_tiny_recipe(tmp_path / "run", max_minutes=0), log=logs.append)
    assert not first["done"] and first["step"] == 1
    assert (tmp_path / "run" / "checkpoint" / "state.pt").is_file()
    assert not (tmp_path / "run" / "final").exists()
    second = pretrain(_tiny_recipe(tmp_path / "run"), log=logs.append)
    assert any("resuming" in line and "step 1" in line for line in logs)
    assert second["done"] and second["step"] == 2 and second["val_em"] is not None
    model = GlimpsePrune.from_pretrained(tmp_path / "run" / "final")
    text, out = model.answer([assets.example_image()], "What colour is the triangle?", method="none",
                             max_new_tokens=2)
    assert isinstance(text, str) and out.new_tokens >= 1


def test_pretrain_data_order_is_a_function_of_seed_and_step():
    from glimpseprune.mini.pretrain import StepBatches

    a = StepBatches(list(range(10)), None, 4, seed=3, start=0, stop=5)
    b = StepBatches(list(range(10)), None, 4, seed=3, start=2, stop=5)
    assert [a.indices(s) for s in range(2, 5)] == [b.indices(s) for s in range(2, 5)]
    assert sorted(a.indices(0) + a.indices(1) + a.indices(2)[:2]) == list(range(10))  # an epoch is a permutation


def test_cell_targets_mark_the_objects():
    from glimpseprune.data.scenes import generate_items
    from glimpseprune.mini.pretrain import cell_targets

    scene, record = generate_items(1, seed=0, split="test")[0]
    targets = cell_targets(scene.to_dict(), 16, 16)
    assert targets.shape == (3, 256)
    assert (targets[2] > 0).sum() == len(scene.objects)  # one centre cell per object
    assert 0 < (targets[0] > 0).float().mean() < 0.5


def test_pretrain_options_text_first_relevance_aligned_curriculum(tmp_path):
    """The optional recipe parts run end to end, resume with their own state, and the prompt order is saved."""
    import torch

    from glimpseprune.mini.pretrain import pretrain
    from glimpseprune.model import GlimpsePrune

    extra = dict(prompt_order="text_first", relevance_weight=1.0, relevance_loss="softmax", relevance_layer=1,
                 aux_aligned=True, extra_turns=0, warmup_pixels={"max_pixels": 3136, "steps": 1})
    first = pretrain(_tiny_recipe(tmp_path / "run", max_minutes=0, **extra), log=lambda _: None)
    state = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=False)
    assert first["step"] == 1 and {"rel_head", "rel_null", "aux_scale"} <= set(state)
    second = pretrain(_tiny_recipe(tmp_path / "run", **extra), log=lambda _: None)
    assert second["done"]
    model = GlimpsePrune.from_pretrained(tmp_path / "run" / "final")
    prompt = model.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}],
        add_generation_prompt=True, tokenize=False)
    assert prompt.index("Q?") < prompt.index("<|vision_start|>")  # the question precedes the image
    # the saved processor is the full-resolution one, not the curriculum's down-scaled copy
    assert model.processor.image_processor.size["longest_edge"] == 12544


def test_relevance_targets_and_pointer_loss():
    import torch

    from glimpseprune.mini.pretrain import pointer_loss, relevance_targets

    t = relevance_targets([[0, 0, 10, 10], [20, 20, 40, 40]], "target", 40, 40, 4, 4)
    assert t.nonzero().squeeze(1).tolist() == [0, 15]  # centres (5, 5) -> cell 0, (30, 30) -> cell 15
    assert relevance_targets([[0, 0, 10, 10]], "evidence", 40, 40, 4, 4).sum() == 0
    grid = torch.tensor([[1, 4, 4], [1, 4, 4]])  # two images of 2x2 merged tokens
    targets = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])
    good = torch.tensor([9.0, 0, 0, 0, 0, 0, 0, 0])
    bad = torch.tensor([0.0, 9, 0, 0, 9, 0, 0, 0])
    null = torch.tensor(1.0)
    assert pointer_loss(good, targets, grid, null) < 0.5 < pointer_loss(bad, targets, grid, null)
    # by hand: image 1 -> log(1 + (3 + e) / e^9); image 2 (no mark) -> logsumexp(0, 0, 0, 0, 1) - 1
    import math

    expected = (math.log(1 + (3 + math.e) / math.exp(9)) + math.log(4 + math.e) - 1) / 2
    assert abs(float(pointer_loss(good, targets, grid, null)) - expected) < 1e-5


def test_pretrain_rejects_unknown_prompt_order(tmp_path):
    from glimpseprune.mini.pretrain import pretrain

    with pytest.raises(ValueError, match="prompt_order"):
        pretrain(_tiny_recipe(tmp_path / "run", prompt_order="sideways"), log=lambda _: None)
