"""The embedded mini model (issue #6): shipped files, a known answer, the demo, and the pretraining recipe."""

import json
from pathlib import Path

import pytest
import torch

from glimpseprune import assets
from glimpseprune.state_io import load_state, state_exists

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


SHIPPED_K = 3  # issue #14: the K sweep's choice (docs/results.md section 5)


@shipped
def test_shipped_modules_cut_at_the_swept_layer_and_the_paths_use_it(mini, tmp_path):
    config = json.loads((MINI / "glimpse" / "glimpse_config.json").read_text())
    assert config["prune_layer"] == SHIPPED_K and config["glimpse_layers"] == list(range(SHIPPED_K))
    # the recipe that made them says the same
    recipe = json.loads((Path(__file__).parents[1] / "configs" / "mini" / "glimpse.json").read_text())
    assert recipe["glimpse"]["prune_layer"] == SHIPPED_K
    _, out = mini.answer([assets.example_image()], assets.EXAMPLE_QUESTION, max_new_tokens=2)
    assert out.pruning.prune_layer == SHIPPED_K and out.pruning.stages[0][0] == SHIPPED_K
    model, _ = assets.default_model()
    assert model.config.prune_layer == SHIPPED_K


@shipped
def test_evaluate_agrees_with_answering_one_item_at_a_time(mini, tmp_path, capsys):
    """mini.evaluate (batched, the source of the card's figures) against the one-image answer path, item by item."""
    from glimpseprune.adapters.qwen2_5_vl import qwen_box_mask
    from glimpseprune.data.masks import mask_metrics
    from glimpseprune.eval.scorers import exact_match
    from glimpseprune.mini.evaluate import main
    from glimpseprune.mini.pretrain_data import example_image, synthetic_examples

    out = tmp_path / "eval.json"
    assert main(["--n", "6", "--layout", "dense", "--batch-size", "3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    examples = synthetic_examples(6, 0, 448, "test", "dense")
    assert [r["id"] for r in rows] == [ex.id for ex in examples] and report["n"] == 6
    for row, ex in zip(rows, examples):
        assert row["question"] == ex.question and row["reference"] == ex.answer
        image = example_image(ex)
        assert row["unpruned"] == mini.answer([image], ex.question, method="none", max_new_tokens=4)[0]
        pruned, res = mini.answer([image], ex.question, method="glimpse", max_new_tokens=4)
        assert row["pruned"] == pruned and row["kept"] == res.pruning.samples[0].kept
        assert row["em_pruned"] == exact_match(pruned, ex.answer) and row["kept_ratio"] == row["kept"] / 256
        if ex.boxes:
            keep = res.pruning.samples[0].images[0].keep.numpy().astype(bool)
            target = qwen_box_mask(ex.boxes, 448, 448).reshape(-1).astype(bool)
            assert row["iou"] == pytest.approx(mask_metrics(keep, target)["iou"])
    assert report["em_unpruned"] == pytest.approx(sum(r["em_unpruned"] for r in rows) / 6)
    assert report["kept_ratio_mean"] == pytest.approx(sum(r["kept_ratio"] for r in rows) / 6)
    assert '"em_pruned"' in capsys.readouterr().out


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
    # the third answer: random tokens at the same cut layer with the same count GlimpsePrune kept
    assert all(r["kept_random"] == r["kept"] and r["kv_length_random"] == r["kv_length_pruned"]
               for r in results["rows"])
    assert "random, same K and count" in html
    assert "report:" in capsys.readouterr().out
    if (MINI / "base" / "config.json").is_file():
        assert all(r["prune_layer"] == SHIPPED_K for r in results["rows"])
    # the dense layout shows other (crowded) scenes
    assert main(["demo", "--n", "1", "--layout", "dense", "--out", str(tmp_path / "dense"), "--threads", "1"]) == 0
    dense = json.loads((tmp_path / "dense" / "results.json").read_text())["rows"][0]
    assert dense["question"] and dense["id"] == results["rows"][0]["id"]  # same ids, other scenes
    scene = f"{dense['id']}_scene.png"
    assert (tmp_path / "dense" / scene).read_bytes() != (tmp_path / "demo" / scene).read_bytes()


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
    assert state_exists(tmp_path / "run" / "checkpoint" / "state")
    assert not (tmp_path / "run" / "final").exists()
    second = pretrain(_tiny_recipe(tmp_path / "run"), log=logs.append)
    assert any("resuming" in line and "step 1" in line for line in logs)
    assert second["done"] and second["step"] == 2 and second["val_em"] is not None
    model = GlimpsePrune.from_pretrained(tmp_path / "run" / "final")
    text, out = model.answer([assets.example_image()], "What colour is the triangle?", method="none",
                             max_new_tokens=2)
    assert isinstance(text, str) and out.new_tokens >= 1


def test_pretrain_data_order_is_a_function_of_seed_and_step():
    from glimpseprune.mini.pretrain_data import StepBatches

    a = StepBatches(list(range(10)), None, 4, seed=3, start=0, stop=5)
    b = StepBatches(list(range(10)), None, 4, seed=3, start=2, stop=5)
    assert [a.indices(s) for s in range(2, 5)] == [b.indices(s) for s in range(2, 5)]
    assert sorted(a.indices(0) + a.indices(1) + a.indices(2)[:2]) == list(range(10))  # an epoch is a permutation


def test_cell_targets_mark_the_objects():
    from glimpseprune.data.scenes import generate_items
    from glimpseprune.mini.pretrain_data import cell_targets

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
    state = load_state(tmp_path / "run" / "checkpoint" / "state")
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

    from glimpseprune.mini.pretrain_data import relevance_targets
    from glimpseprune.mini.probes import pointer_loss

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


def test_zoomed_scene_magnifies_and_keeps_every_object_whole():
    import random

    from glimpseprune.data.scenes import COLOURS, Scene, generate_items, object_box, render_scene
    from glimpseprune.mini.pretrain_data import zoomed_scene

    rng = random.Random(0)
    for scene, _ in generate_items(12, seed=1, split="train"):
        d = scene.to_dict()
        for n in (1, 2, len(d["objects"])):
            part = dict(d, objects=d["objects"][:n])
            z = zoomed_scene(part, rng, 3.0)
            assert [(o["shape"], o["colour"]) for o in z["objects"]] == [(o["shape"], o["colour"]) for o in
                                                                          part["objects"]]
            for before, after in zip(part["objects"], z["objects"]):
                assert after["size"] >= before["size"]  # magnified, never shrunk
                assert 0 <= after["x"] and after["x"] + after["size"] <= z["width"]
                assert 0 <= after["y"] and after["y"] + after["size"] <= z["height"]
            image = render_scene(Scene.from_dict(z))
            for obj in Scene.from_dict(z).objects:  # each object is drawn whole, in its own colour
                x1, y1, x2, y2 = object_box(obj)
                crop = image.crop((x1, y1, x2, y2))
                assert COLOURS[obj.colour] in {c for _, c in crop.getcolors(1 << 16)}
    one = dict(d, objects=d["objects"][:1])
    sizes = [zoomed_scene(one, random.Random(s), 3.0)["objects"][0]["size"] for s in range(20)]
    # a lone object fills 1/f^2 of the canvas with f in [1.3, 3]: its side is a third of the canvas or more
    assert min(sizes) >= 448 / 3 - 1 and max(sizes) <= 448 / 1.3 + 1


def test_reduced_examples_ask_about_the_reduced_scene():
    import random

    from glimpseprune.data.scenes import Scene, object_box
    from glimpseprune.mini.pretrain_data import reduced_example, synthetic_examples

    rng = random.Random(0)
    for ex in synthetic_examples(20, 0, 448, "train"):
        r = reduced_example(ex, rng, 2, 3, 3.0)
        objs = Scene.from_dict(r.scene).objects
        assert 1 <= len(objs) <= 2
        boxes = [object_box(o) for o in objs]
        for q, a, bxs in [(r.question, r.answer, r.boxes)] + r.turns:
            assert all(b in boxes for b in bxs)  # every box is a box of the reduced scene
            if q.startswith("What colour is the "):
                shape = q[len("What colour is the "):-1]
                assert [o.colour for o in objs if o.shape == shape] == [a]
            if q.startswith("How many "):
                plural = q.split()[2]
                assert a == ["zero", "one", "two", "three"][sum(plural.startswith(o.shape) for o in objs)]


def test_objects_curriculum_stages_and_validation(tmp_path):
    from glimpseprune.mini.pretrain import pretrain
    from glimpseprune.mini.pretrain_data import StepBatches, synthetic_examples

    examples = synthetic_examples(16, 0, 448, "train")
    stages = [[2, 1, 3.0], [4, 2]]
    batches = StepBatches(examples, lambda batch: batch, 4, seed=0, start=0, stop=6, extra_turns=2,
                          objects_curriculum=stages)
    counts = {step: [len(ex.scene["objects"]) for ex in batches[step]] for step in range(6)}
    assert all(c == 1 for step in (0, 1) for c in counts[step])
    assert all(1 <= c <= 2 for step in (2, 3) for c in counts[step])
    assert any(c >= 3 for c in counts[4] + counts[5])  # after the last stage: the full scenes
    assert [ex.scene for ex in batches[4]] == [examples[j].scene for j in batches.indices(4)]
    for bad in ([[2, 0]], [[3, 1], [2, 2]], [[2, 1, 1.0]], [[2]], [["a", 1]]):
        with pytest.raises(ValueError, match="objects_curriculum"):
            pretrain(_tiny_recipe(tmp_path / "bad", objects_curriculum=bad), log=lambda _: None)


def test_curriculum_config_parses():
    from pathlib import Path

    from glimpseprune.mini.pretrain import PretrainConfig
    from glimpseprune.mini.schedules import check_objects_curriculum

    root = Path(__file__).resolve().parents[1] / "configs" / "mini"
    for name in ("pretrain.json", "pretrain_curriculum.json"):
        cfg = PretrainConfig.from_file(root / name)
        check_objects_curriculum(cfg.objects_curriculum)
        assert cfg.model.merger_init_std and cfg.model.resid_init_std and cfg.role_tokens


def test_builtin_recipe_is_the_shipped_config_file():
    """`pretrain-mini` without --config runs exactly configs/mini/pretrain.json, the recipe of the shipped model."""
    from pathlib import Path

    from glimpseprune.mini.pretrain import DEFAULTS, PretrainConfig

    path = Path(__file__).resolve().parents[1] / "configs" / "mini" / "pretrain.json"
    assert PretrainConfig.from_dict(DEFAULTS).to_dict() == PretrainConfig.from_file(path).to_dict()


def test_init_options_set_the_scales(tmp_path):
    from glimpseprune.mini.base_model import build_model, build_tokenizer_processor
    from glimpseprune.mini.pretrain_data import synthetic_examples

    cfg = _tiny_recipe(tmp_path / "x", model={"text_hidden": 32, "text_layers": 2, "text_heads": 4,
                                              "text_kv_heads": 2, "text_intermediate": 64, "vision_hidden": 32,
                                              "vision_intermediate": 64, "vision_heads": 2, "vision_depth": 2,
                                              "fullatt_blocks": [1], "resid_init_std": 0.001,
                                              "merger_init_std": 0.5}, role_tokens=True)
    examples = synthetic_examples(8, 0, 448, "train")
    processor = build_tokenizer_processor(examples, cfg, True)
    assert processor.tokenizer.tokenize("<|im_start|>assistant\n") == ["<|im_start|>", "assistant", "Ċ"]
    model = build_model(processor.tokenizer, cfg.model, 0)
    layer = model.model.language_model.layers[0]
    assert abs(float(layer.mlp.down_proj.weight.detach().std()) - 0.001) < 2e-4
    assert abs(float(layer.self_attn.o_proj.weight.detach().std()) - 0.001) < 2e-4
    assert abs(float(layer.mlp.up_proj.weight.detach().std()) - 0.02) < 5e-3  # the rest keeps initializer_range
    assert abs(float(model.model.visual.merger.mlp[-1].weight.detach().std()) - 0.5) < 0.05


def test_diagnose_reports_on_a_checkpoint(tmp_path, capsys):
    from glimpseprune.mini import diagnose
    from glimpseprune.mini.pretrain import pretrain

    pretrain(_tiny_recipe(tmp_path / "run", max_minutes=0), log=lambda _: None)  # leaves checkpoint/ with state.json
    ckpt = tmp_path / "run" / "checkpoint"
    assert diagnose.main([str(ckpt), "--n", "4", "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["exact_match"]) == {name for name, _, _ in diagnose.SETTINGS}
    for row in report["exact_match"].values():
        assert 0 <= row["exact_match"] <= 1 and sum(v["n"] for v in row["per_type"].values()) == 4
    sens = report["image_sensitivity"]
    assert len(sens) == 3  # embeddings + 2 decoder layers
    assert sens[0]["spread"] == 0  # the answer position's own embedding cannot depend on the image
    assert sens[-1]["spread"] > 0  # after attending to the image it does, even untrained
    assert set(report["probe"]) == {"colour", "covering_shape", "centred_shape"}
    attention = report["attention_on_boxes"]
    assert set(attention) == {"full scenes", "<=2 objects"}
    for types in attention.values():
        for row in types.values():
            shares = [v for k, v in row.items() if k.startswith("layer")]
            assert len(shares) == 2 and all(0 <= v <= 1 for v in shares) and 0 < row["box_area"] < 1
    printed = capsys.readouterr().out
    assert "probe on object cells" in printed and "attention on boxes" in printed
    assert diagnose.qtype_of("how many stars are there?") == "count"
    with pytest.raises(SystemExit):
        diagnose.main([str(tmp_path / "missing")])


def test_weighted_cross_entropy_by_hand():
    import math

    from glimpseprune.mini.probes import weighted_cross_entropy

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, -5.0]])
    targets = torch.tensor([0, 1, 1, -100])
    ce = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100)
    assert torch.allclose(weighted_cross_entropy(logits, targets, 1.0), ce)
    per = [math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1)), math.log(2)]  # background, object, object
    expected = (per[0] + 10 * per[1] + 10 * per[2]) / 21
    assert abs(float(weighted_cross_entropy(logits, targets, 10.0)) - expected) < 1e-6


def test_vision_warmup_trains_only_the_vision_tower(tmp_path):
    from transformers import AutoModelForImageTextToText

    from glimpseprune.mini.base_model import build_model, build_tokenizer_processor
    from glimpseprune.mini.pretrain import pretrain
    from glimpseprune.mini.pretrain_data import synthetic_examples

    cfg = _tiny_recipe(tmp_path / "run", steps=1, vision_warmup_steps=1, aux_object_weight=10.0)
    pretrain(cfg, log=lambda _: None)
    trained = AutoModelForImageTextToText.from_pretrained(tmp_path / "run" / "final").state_dict()
    examples = synthetic_examples(cfg.synthetic["n_train"], 0, 448, "train")
    fresh = build_model(build_tokenizer_processor(examples, cfg, True).tokenizer, cfg.model, cfg.seed).state_dict()
    decoder = [k for k in trained if "language_model" in k or "lm_head" in k]
    vision = [k for k in trained if "visual" in k and k.endswith("weight")]
    assert decoder and vision
    assert all(torch.equal(trained[k], fresh[k]) for k in decoder)  # the decoder never ran
    assert any(not torch.equal(trained[k], fresh[k]) for k in vision)  # the vision tower learnt from the probe


def test_lr_schedule_restarts_after_the_vision_warmup(tmp_path):
    from glimpseprune.mini.schedules import lr_lambda

    plain = _tiny_recipe(tmp_path, steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_lambda(0, plain) == 0.1 and lr_lambda(9, plain) == 1.0
    assert abs(lr_lambda(55, plain) - 0.55) < 1e-9 and abs(lr_lambda(100, plain) - 0.1) < 1e-9
    same = _tiny_recipe(tmp_path, steps=100, warmup_steps=10, min_lr_ratio=0.1, vision_warmup_steps=40)
    assert [lr_lambda(s, same) for s in range(101)] == [lr_lambda(s, plain) for s in range(101)]
    split = _tiny_recipe(tmp_path, steps=100, warmup_steps=10, min_lr_ratio=0.1, vision_warmup_steps=40,
                         decoder_lr_restart=True)
    assert lr_lambda(0, split) == 0.1 and lr_lambda(39, split) == 1.0  # vision phase: warm-up, then hold the peak
    assert lr_lambda(40, split) == 0.1 and lr_lambda(49, split) == 1.0  # decoder phase: its own warm-up ...
    assert abs(lr_lambda(75, split) - 0.55) < 1e-9 and abs(lr_lambda(100, split) - 0.1) < 1e-9  # ... and cosine


def test_vision_warmup_needs_scenes(tmp_path):
    from glimpseprune.data.scenes import generate_benchmark
    from glimpseprune.mini.pretrain import pretrain

    generate_benchmark(tmp_path / "bench", n_train=4, n_val=0, n_test=0, seed=0)
    lines = (tmp_path / "bench" / "train.jsonl").read_text().splitlines()
    plain = [json.dumps({k: v for k, v in json.loads(line).items() if k != "scene"}) for line in lines]
    (tmp_path / "bench" / "plain.jsonl").write_text("\n".join(plain) + "\n")
    cfg = _tiny_recipe(tmp_path / "run", data=str(tmp_path / "bench" / "plain.jsonl"), vision_warmup_steps=1)
    with pytest.raises(ValueError, match="vision_warmup_steps needs records with a scene"):
        pretrain(cfg, log=lambda _: None)


def test_question_grounding_starts_at_the_last_colour_or_shape_word():
    import random
    from dataclasses import replace

    from glimpseprune.mini.base_model import build_tokenizer_processor
    from glimpseprune.mini.pretrain_data import Collator, derive_turns, synthetic_examples

    cfg = _tiny_recipe("unused", role_tokens=True)
    examples = synthetic_examples(8, 0, 448, "train")
    processor = build_tokenizer_processor(examples, cfg, True)
    rng = random.Random(0)
    examples = [replace(ex, turns=derive_turns(ex.scene, rng, 3)) for ex in examples[:4]]
    batch = Collator(processor, "question")(examples)
    words = {"red", "green", "blue", "yellow", "purple", "orange", "circle", "square", "triangle", "star", "cross",
             "circles", "squares", "triangles", "stars", "crosses"}
    n = 0
    for b, ex in enumerate(examples):
        ids = batch["input_ids"][b].tolist()
        questions = [ex.question] + [t[0] for t in ex.turns]
        assert len(batch["query_starts"][b]) == len(questions)
        for start, question in zip(batch["query_starts"][b], questions):
            tail = processor.tokenizer.decode(ids[start:]).lstrip()
            last_word = [w.strip("?").lower() for w in question.split() if w.strip("?").lower() in words][-1]
            # the supervised positions start at the question's last colour/shape word and run past its end
            assert tail.lower().startswith(last_word) and tail.index("<|im_end|>") == len(
                question[question.lower().rindex(last_word):])
            n += 1
    assert n == 16
    plain = Collator(processor)(examples)  # "answer": no extra positions
    assert all(s is None for starts in plain["query_starts"] for s in starts)
    with pytest.raises(ValueError, match="attn_from"):
        Collator(processor, "everywhere")


def test_grounding_loss_by_hand():
    from glimpseprune.mini.probes import grounding_loss

    image_id = 7
    input_ids = torch.tensor([[1, 7, 7, 7, 2, 3, 4, 5]])
    labels = torch.full_like(input_ids, -100)
    labels[0, 6:8] = input_ids[0, 6:8]  # one answer, predicted from position 5
    attn = torch.rand(1, 2, 8, 8)  # [batch, heads, query, key]
    mask = torch.tensor([False, True, True])
    layers_ = [attn, attn * 0 + 1]

    def share(row):  # head-averaged attention of a query row, over the visual keys 1..3
        a = attn[0, :, row, 1:4].mean(0)
        return float(a[mask].sum() / a.sum())

    import math

    only_answer = grounding_loss([attn], [0], input_ids, labels, [[mask]], image_id)
    assert abs(float(only_answer) + math.log(share(5))) < 1e-6
    from_word = grounding_loss([attn], [0], input_ids, labels, [[mask]], image_id, query_starts=[[4]])
    assert abs(float(from_word) + (math.log(share(4)) + math.log(share(5))) / 2) < 1e-6
    uniform = grounding_loss(layers_, [1], input_ids, labels, [[mask]], image_id, query_starts=[[4]])
    assert abs(float(uniform) + math.log(2 / 3)) < 1e-6  # uniform attention: 2 of 3 visual tokens are on the box
    assert grounding_loss([attn], [0], input_ids, labels, [[None]], image_id) is None  # no box: no term


def test_pretrain_with_question_grounding_logs_its_losses(tmp_path):
    from glimpseprune.mini.pretrain import pretrain

    logs = []
    with pytest.raises(ValueError, match="attn_layers"):
        pretrain(_tiny_recipe(tmp_path / "bad", attn_weight=1.0, attn_layers=[2]), log=logs.append)
    metrics = pretrain(_tiny_recipe(tmp_path / "run", attn_weight=1.0, attn_layers=[1], attn_from="question",
                                    extra_turns=2, log_every=1), log=logs.append)
    assert metrics["done"]
    lines = [line for line in logs if line.startswith("[pretrain-mini] step ")]
    assert len(lines) == 2 and all(" lm " in line and " attn " in line for line in lines)


def test_benchmark_turn_sampling_matches_the_benchmark_answers():
    import collections
    import random

    from glimpseprune.data.scenes import COUNT_WORDS, Scene, object_box
    from glimpseprune.mini.pretrain_data import derive_turns, synthetic_examples

    examples = synthetic_examples(150, 0, 448, "train")
    answers = {"uniform": collections.Counter(), "benchmark": collections.Counter()}
    for mode in answers:
        rng = random.Random(0)
        for ex in examples:
            objs = Scene.from_dict(ex.scene).objects
            for question, answer, boxes in derive_turns(ex.scene, rng, 6, mode):
                words = question.rstrip("?").lower().split()
                if question.startswith("Is there"):
                    colour, shape = words[-2], words[-1]
                    match = [o for o in objs if o.shape == shape and o.colour == colour]
                    assert answer == ("yes" if match else "no")
                    if mode == "benchmark" and not match:  # a "no" always has a partial match as evidence
                        assert boxes and all(b in [object_box(o) for o in objs if o.shape == shape or
                                                   o.colour == colour] for b in boxes)
                    answers[mode][answer] += 1
                elif question.startswith("How many"):
                    n = sum(o.shape + ("es" if o.shape == "cross" else "s") == words[2] for o in objs)
                    assert answer == COUNT_WORDS[n] and len(boxes) == n
                    answers[mode][answer] += 1
    bench, uniform = answers["benchmark"], answers["uniform"]
    assert abs(bench["yes"] - bench["no"]) < 0.15 * (bench["yes"] + bench["no"])
    assert bench["two"] + bench["three"] > uniform["two"] + uniform["three"]
    with pytest.raises(ValueError, match="turn sampling"):
        derive_turns(examples[0].scene, random.Random(0), 1, "skewed")
