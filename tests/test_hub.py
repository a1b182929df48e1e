"""Hub-ready modules: saving writes a model card with what is known (base model, K, VIP size, training data and
measured figures); push_to_hub goes through huggingface_hub's HfApi (an offline stand-in here, never the network)
and what it uploads loads back and answers the same; training writes the card with its data and validation
figures."""

import json
import re
import shutil
from pathlib import Path

import pytest

from glimpseprune import GlimpsePrune, assets


@pytest.fixture(scope="module")
def mini():
    model, _ = assets.default_model(device="cpu")
    return model


class LocalHub:
    """Offline stand-in for huggingface_hub.HfApi: the two calls push_folder makes, into a local folder."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)

    def upload_folder(self, *, folder_path, repo_id, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)
        return f"commit to {repo_id}"


def test_save_pretrained_writes_a_model_card(mini, tmp_path):
    out = mini.save_pretrained(tmp_path / "mods", metrics={"exact match": 0.5}, training={"data": "shapes"})
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: glimpseprune\n")
    assert str(assets.MINI_DIR / "base") in card  # the base model it was loaded from
    assert "base_model:" not in card  # a local folder is not a hub id: no hub metadata claims it
    assert f"K = {mini.config.prune_layer} (of {mini.config.num_layers})" in card
    n_vip = sum(p.numel() for p in mini.vip.parameters())
    n_glimpse = sum(p.numel() for p in mini.glimpse.parameters())
    assert f"glimpse {n_glimpse:,}, VIP {n_vip:,}" in card and f"size {mini.config.vip_size}," in card
    assert "| exact match | 0.5 |" in card and "| data | shapes |" in card
    bare = mini.save_pretrained(tmp_path / "bare")
    bare_card = (bare / "README.md").read_text()
    assert "were not recorded" in bare_card and "No measured figures" in bare_card  # unknown stays unknown


def test_push_to_hub_uploads_what_loads_back(mini, tmp_path):
    hub = LocalHub(tmp_path / "hub")
    result = mini.push_to_hub("someone/mini-glimpse", api=hub, private=True, metrics={"kept ratio": 0.04})
    assert result == "commit to someone/mini-glimpse"
    assert hub.calls[0] == ("create_repo", "someone/mini-glimpse",
                            {"private": True, "exist_ok": True, "repo_type": "model"})
    pushed = tmp_path / "hub" / "someone" / "mini-glimpse"
    assert sorted(p.name for p in pushed.iterdir()) == ["README.md", "glimpse.safetensors", "glimpse_config.json"]
    assert 'glimpse="someone/mini-glimpse"' in (pushed / "README.md").read_text()
    again = GlimpsePrune.from_pretrained(assets.MINI_DIR / "base", pushed, device="cpu")
    image = assets.example_image()
    text, out = mini.answer([image], assets.EXAMPLE_QUESTION, max_new_tokens=4)
    text2, out2 = again.answer([image], assets.EXAMPLE_QUESTION, max_new_tokens=4)
    assert text2 == text and out2.pruning.samples[0].keep.equal(out.pruning.samples[0].keep)


def test_push_uses_huggingface_hub_and_never_the_network(mini, monkeypatch):
    import huggingface_hub.constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineModeIsEnabled):  # the real HfApi was called, and refused to go online
        mini.push_to_hub("someone/mini-glimpse", token="not-a-token")


def test_model_card_names_a_hub_base_model():
    from glimpseprune.config import GlimpsePruneConfig
    from glimpseprune.hub import model_card

    config = GlimpsePruneConfig(family="qwen2_5_vl", prune_layer=19, hidden_size=64, num_heads=2,
                                vision_hidden_size=32, num_layers=28, vip_visual_layers=[31])
    card = model_card(config, base_model="Qwen/Qwen2.5-VL-7B-Instruct")
    assert "\nbase_model: Qwen/Qwen2.5-VL-7B-Instruct\n" in card and "K = 19 (of 28)" in card


def test_training_writes_the_card_with_its_data_and_validation_figures(tmp_path, capsys):
    from glimpseprune.cli import main

    out = tmp_path / "run"
    assert main(["train", "--config", "train/tiny_offline.json", f"output_dir={out}", "max_steps=2", "grad_accum=1",
                 "progress=false", 'synthetic={"n_train": 4, "n_val": 2, "seed": 0}', "max_pixels=12544"]) == 0
    card = (out / "final" / "README.md").read_text()
    validation = json.loads((out / "validation.json").read_text())
    assert "| config | train/tiny_offline.json |" in card and "glimpse-shapes synthetic" in card
    assert "| optimiser steps | 2 |" in card and "| train records | 4 |" in card
    numbers = {k: v for k, v in validation.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numbers
    for key, value in numbers.items():  # every held-out figure, as measured
        row = re.search(rf"\| held-out {re.escape(key)} \(n = 2\) \| ([^|]+) \|", card)
        assert row and float(row.group(1)) == pytest.approx(value, rel=1e-3, abs=1e-9), key
