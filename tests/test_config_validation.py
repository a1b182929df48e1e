"""What we load is validated before use: glimpse_config.json field types and layer ranges, the base model record
(saved, and checked when the modules are attached to a base of another family or shape), old configs still load."""

import json
from dataclasses import replace

import pytest

from glimpseprune import GlimpsePrune
from glimpseprune.adapters.base import hub_identity
from glimpseprune.checkpoint import load_modules
from glimpseprune.config import GlimpsePruneConfig
from glimpseprune.errors import ConfigError
from glimpseprune.testing.tiny import TinyQwenSpec, tiny_llava, tiny_qwen2_5_vl, tiny_qwen2_vl


def test_saved_config_records_its_base(gp, tmp_path):
    gp.save_pretrained(tmp_path)
    record = json.loads((tmp_path / "glimpse_config.json").read_text())["base_model"]
    text = gp.model.config.text_config
    assert record["family"] == "qwen2_5_vl" and record["model_type"] == gp.model.config.model_type
    assert (record["hidden_size"], record["num_layers"], record["num_heads"]) == (
        text.hidden_size, text.num_hidden_layers, text.num_attention_heads)
    assert record["vision_hidden_size"] == gp.model.config.vision_config.hidden_size
    assert record["vision_depth"] == gp.model.config.vision_config.depth
    assert record["vit_layer_range"] == [0, record["vision_depth"]]
    config, _, _ = load_modules(tmp_path, gp.adapter.default_glimpse_config())
    assert config.base_model == record


@pytest.mark.parametrize("other, needle", [
    (lambda: tiny_llava(), "family"),
    (lambda: tiny_qwen2_vl(), "family"),
    (lambda: tiny_qwen2_5_vl(TinyQwenSpec(hidden_size=32)), "hidden_size"),
    (lambda: tiny_qwen2_5_vl(TinyQwenSpec(num_layers=6)), "num_layers"),
    (lambda: tiny_qwen2_5_vl(TinyQwenSpec(vision_depth=6, fullatt_blocks=(1, 5))), "vision_depth"),
])
def test_refuses_a_base_of_another_family_or_shape(gp, tmp_path, other, needle):
    gp.save_pretrained(tmp_path)
    model, processor = other()
    target = GlimpsePrune(model, processor)
    with pytest.raises(ConfigError, match=needle):
        load_modules(tmp_path, target.adapter.default_glimpse_config())


def test_old_config_without_record_still_loads(gp, tmp_path):
    gp.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "glimpse_config.json").read_text())
    del raw["base_model"]
    (tmp_path / "glimpse_config.json").write_text(json.dumps(raw))
    expected = gp.adapter.default_glimpse_config()
    config, _, _ = load_modules(tmp_path, expected)
    assert config.base_model == expected.base_model  # checked against (and then recorded from) this base
    raw["vip_visual_layers"] = [99, 1]
    (tmp_path / "glimpse_config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"vip_visual_layers \[99\]"):
        load_modules(tmp_path, expected)


@pytest.mark.parametrize("field, value, needle", [
    ("prune_layer", "4", "must be an integer"),
    ("prune_layer", True, "must be an integer"),
    ("prune_layer", 2.5, "must be an integer"),
    ("prune_layer", 0, r"prune_layer \(K\) must be in"),
    ("prune_layer", 99, r"prune_layer \(K\) must be in"),
    ("vip_visual_layers", ["3"], "list of integers"),
    ("vip_visual_layers", [3, 3], "duplicates"),
    ("vip_visual_layers", [-1], r"vip_visual_layers \[-1\]"),
    ("glimpse_layers", "0", "list of integers"),
    ("threshold", "0.5", "must be a number"),
    ("max_keep_ratio", "all", "number or null"),
    ("attention_logits", "yes", "true or false"),
    ("family", 3, "a string"),
    ("glimpse_dropout", 1.5, "glimpse_dropout"),
    ("base_model", {"family": "qwen2_5_vl"}, "base_model.hidden_size"),
])
def test_field_types_and_ranges(gp, tmp_path, field, value, needle):
    gp.save_pretrained(tmp_path)
    path = tmp_path / "glimpse_config.json"
    raw = json.loads(path.read_text())
    raw[field] = value
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=needle) as info:
        GlimpsePruneConfig.load(tmp_path)
    assert str(path) in str(info.value)


def test_not_an_object_and_unknown_fields(tmp_path):
    (tmp_path / "glimpse_config.json").write_text("[1, 2, 3]")
    with pytest.raises(ConfigError, match="JSON object"):
        GlimpsePruneConfig.load(tmp_path)
    (tmp_path / "glimpse_config.json").write_text('{"family": "qwen2_5_vl", "bogus": 1}')
    with pytest.raises(ConfigError, match="bogus"):
        GlimpsePruneConfig.load(tmp_path)


def test_api_overrides_are_checked_too(gp):
    with pytest.raises(ConfigError, match="prune_layer"):
        replace(gp.config, prune_layer=2.5)
    with pytest.raises(ValueError, match="vip_visual_layers"):
        gp.with_new_modules(vip_visual_layers=[99, 1])


def test_hub_identity():
    commit = "a" * 40
    assert hub_identity(f"/cache/hub/models--Qwen--Qwen2.5-VL-3B-Instruct/snapshots/{commit}") == (
        "Qwen/Qwen2.5-VL-3B-Instruct", commit)
    assert hub_identity("/data/my-model") == ("/data/my-model", None)
    assert hub_identity("") == (None, None)
