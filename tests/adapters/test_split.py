"""Split models (issue 20): a model loaded with ``device_map`` (accelerate's big-model inference) gives the same
tokens, kept sets and KV lengths as the undivided model, for every family.

On this CPU-only machine the split is over the CPU and disk offload: accelerate's hooks then keep offloaded weights
on the ``meta`` device between calls and load them from the offload folder for each forward, so every weight read
outside a hooked module call, every ``next(model.parameters()).device`` and every module the engine runs by hand is
exercised. Placement over several accelerators (tensors moved to each layer's device) is the same code path but
needs a machine with them; see docs/scaling.md for what was verified where.
"""

import re

import pytest
import torch

from glimpseprune import GlimpsePrune
from glimpseprune.methods import get_method
from glimpseprune.placement import execution_device
from glimpseprune.processing import build_inputs

QUESTIONS = ["is there a red circle?", "what colour is the shape in the image?"]

# accelerate needs a device for AnyRes's bare ``model.image_newline`` parameter yet warns that the key names no
# submodule (its check lists modules only); exactly that key is expected, any other stray key still warns.
# (the filter's fields are colon-separated, so the message's colon is matched by ".")
pytestmark = pytest.mark.filterwarnings(
    r"ignore:The following device_map keys do not match any submodules in the model. \['model\.image_newline'\]$"
    ":UserWarning")

BASELINES = ["random", "fastv", "pyramiddrop", "divprune", "cdpruner", "downsample", "visionzip", "vscan"]


def block_names(model, adapter) -> list[str]:
    """Every module a device map can place: the vision side and the LLM's parts, each decoder layer on its own."""
    names = {id(m): n for n, m in model.named_modules()}
    text = names[id(adapter.text_model)]
    layers = names[id(adapter.layers)]
    out = [n for n, _ in model.named_children() if n != "model"]  # lm_head
    out += [f"model.{n}" for n, _ in model.model.named_children() if f"model.{n}" != text]  # ViT, projector
    out += [f"{text}.{n}" for n, _ in adapter.text_model.named_children() if f"{text}.{n}" != layers]
    out += [f"{layers}.{i}" for i in range(adapter.num_layers)]
    return out


def hand_map(model, adapter) -> dict:
    """Vision tower, embeddings, lm_head and every other decoder layer (layer K-1 among them) on disk."""
    device_map = {}
    for name in block_names(model, adapter):
        last = name.rsplit(".", 1)[-1]
        on_disk = not last.isdigit() or int(last) % 2 == 1
        device_map[name] = "disk" if on_disk and not name.endswith(("norm", "rotary_emb")) else "cpu"
    # A bare parameter outside any submodule (AnyRes's image_newline) stays resident: accelerate hooks modules only,
    # so the stock forward cannot load it from disk either.
    device_map.update({f"model.{n}": "cpu" for n, _ in model.model.named_parameters(recurse=False)})
    return device_map


@pytest.fixture(scope="module")
def saved(fam, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"split_{fam.name}")
    fam.model.save_pretrained(folder / "base")
    fam.processor.save_pretrained(folder / "base")
    fam.gp.save_pretrained(folder / "glimpse")
    return folder


@pytest.fixture(scope="module")
def split(fam, saved) -> GlimpsePrune:
    """The family's model over CPU + disk by the hand-written map (loaded once per family)."""
    return load_split(saved, hand_map(fam.model, fam.gp.adapter))


def load_split(saved, device_map, **kw) -> GlimpsePrune:
    return GlimpsePrune.from_pretrained(saved / "base", saved / "glimpse", dtype=torch.float32,
                                        device_map=device_map, offload_folder=saved / "offload", **kw)


def assert_same(ref, out):
    assert torch.equal(out.sequences, ref.sequences)
    assert out.pruning.kv_lengths == ref.pruning.kv_lengths
    assert out.pruning.stages == ref.pruning.stages
    for a, b in zip(ref.pruning.samples, out.pruning.samples):
        assert torch.equal(a.keep, b.keep)
        assert torch.equal(a.keep_indices, b.keep_indices)


def inputs_for(fam, images):
    return build_inputs(fam.processor, QUESTIONS, [[images["wide"]], [images["tall"]]])


def check_split(fam, split, images):
    placed = set(split.model.hf_device_map.values())
    assert placed == {"cpu", "disk"}, placed  # really split: some weights are offloaded
    offloaded = [p for p in split.model.parameters() if p.device.type == "meta"]
    assert offloaded, "offloaded weights should read as meta between calls"

    inputs = inputs_for(fam, images)
    kwargs = dict(max_keep_ratio=0.3, max_new_tokens=6, min_new_tokens=6)
    ref = fam.gp.generate(**inputs, **kwargs)
    out = split.generate(**inputs, **kwargs)
    assert_same(ref, out)
    assert min(ref.pruning.kept) < min(ref.pruning.total), "the comparison should include a real cut"
    # keep-all still equals the undivided model's unpruned run: the glimpse leaves no trace when split either
    assert torch.equal(split.generate(**inputs, method="none", max_new_tokens=6, min_new_tokens=6).sequences,
                       fam.gp.generate(**inputs, method="none", max_new_tokens=6, min_new_tokens=6).sequences)


def test_hand_written_split_matches_undivided(fam, split, images):
    check_split(fam, split, images)


@pytest.mark.parametrize("fam", ["qwen2_5_vl", "llava"], indirect=True)  # the planner path; the map is the same code
def test_auto_split_with_max_memory_matches_undivided(fam, saved, images):
    """accelerate's planner with a CPU budget of a third of the model: the rest goes to disk."""
    size = sum(p.numel() * p.element_size() for p in fam.model.parameters())
    check_split(fam, load_split(saved, "auto", max_memory={"cpu": size // 3}), images)


def test_glimpse_modules_sit_with_layer_k_minus_1(fam, split):
    layer = split.adapter.layers[split.config.prune_layer - 1]
    assert next(split.vip.parameters()).device == execution_device(split.model, layer) == torch.device("cpu")
    assert next(split.glimpse.parameters()).device.type == "cpu"  # never meta, whatever the first weight is


@pytest.mark.parametrize("fam", ["qwen2_5_vl", "qwen2_vl", "llava"], indirect=True)  # llava_cls: llava's modules
@pytest.mark.parametrize("name", BASELINES)
def test_baselines_on_a_split_model(fam, split, images, name):
    """Baselines that read the ViT (VisionZip, DivPrune, CDPruner) or an attention row (FastV, PyramidDrop, VScan)
    give the undivided model's result on the split one."""
    inputs = inputs_for(fam, images)
    options = dict(layers=[1, 2, 3], ratio=0.25) if name == "pyramiddrop" else dict(ratio=0.25)
    try:
        ref = fam.gp.generate(**inputs, method=get_method(name, fam.gp, **options), max_new_tokens=4,
                              min_new_tokens=4)
    except ValueError as err:  # a method that does not support this family says so on the undivided model too
        with pytest.raises(ValueError, match=re.escape(str(err)[:40])):
            split.generate(**inputs, method=get_method(name, split, **options), max_new_tokens=4)
        return
    out = split.generate(**inputs, method=get_method(name, split, **options), max_new_tokens=4, min_new_tokens=4)
    assert_same(ref, out)


def test_device_map_argument_checks(fam, saved):
    with pytest.raises(ValueError, match="device or device_map"):
        GlimpsePrune.from_pretrained(saved / "base", device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="need a device_map"):
        GlimpsePrune.from_pretrained(saved / "base", max_memory={"cpu": 10**9})
