"""The embedded default model and example image, used when the CLI is given no ``--model`` / ``--image``.

A trained mini model shipped in ``glimpseprune/assets/mini`` (base + glimpse modules, see its ``MODEL_CARD.md``
and ``docs/mini_model.md``) is used when present. Until it
exists, the default is a tiny *randomly initialised* Qwen2.5-VL with untrained GlimpsePrune modules, built offline
in a second: it exercises every code path (vision tower, glimpse, VIP, pruning, decoding) but its answers are
gibberish and its keep decisions are arbitrary. The CLI says so whenever it uses it.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

MINI_DIR = Path(__file__).parent / "assets" / "mini"
MINI_LABEL = "embedded mini model (glimpseprune/assets/mini): a tiny Qwen2.5-VL for glimpse-shapes scenes only"
# Its measured figures (test split, unpruned / GlimpsePrune / same-count random): the one place they are written;
# the description below, its MODEL_CARD.md and the modules' hub card read them (tests/test_model_card.py).
MINI_RESULTS = MINI_DIR / "results.json"
TINY_RANDOM_LABEL = "tiny random Qwen2.5-VL with untrained GlimpsePrune modules (mechanics only: answers are gibberish)"


def default_model(device: str | None = "cpu", glimpse: str | None = None, **placement):
    """``placement``: ``device_map`` / ``max_memory`` / ``offload_folder`` for the shipped mini model."""
    from .model import GlimpsePrune

    if (MINI_DIR / "base" / "config.json").is_file():
        model = GlimpsePrune.from_pretrained(MINI_DIR / "base", glimpse or MINI_DIR / "glimpse", device=device,
                                             **placement)
        # Say what it is every time, with its measured accuracy: a toy model must not pass for a general answerer.
        return model, mini_description(model, shipped_modules=glimpse is None)
    from .offline_models import tiny_qwen2_5_vl  # only when the shipped mini model is absent

    if placement:
        raise ValueError("--device-map needs a saved model: pass --model (no embedded mini model in this install)")
    base, processor = tiny_qwen2_5_vl()
    model = GlimpsePrune(base.to(device), processor)
    if glimpse is not None:
        from .checkpoint import load_modules

        config, g, v = load_modules(glimpse, model.adapter.default_glimpse_config())
        return GlimpsePrune(model.model, processor, config, g, v), "tiny random Qwen2.5-VL + " + str(glimpse)
    return model.with_new_modules(seed=0), TINY_RANDOM_LABEL


def mini_results() -> dict:
    """The shipped mini model's measured figures (``assets/mini/results.json``; each section names its source)."""
    import json

    return json.loads(MINI_RESULTS.read_text(encoding="utf-8"))


def mini_description(model, shipped_modules: bool = True) -> str:
    """:data:`MINI_LABEL` with the model's parameter count and its measured accuracy, read from :func:`mini_results`
    (the GlimpsePrune figure only when ``model`` carries the shipped modules, which it was measured with)."""
    test = mini_results()["test"]["measured"]
    n_params = sum(p.numel() for p in model.model.parameters())
    text = (f"{MINI_LABEL}, {n_params / 1e6:.2f} M parameters, {100 * test['em_unpruned']:.1f} % exact match on its "
            f"test split unpruned (n = {test['n']})")
    if shipped_modules:
        text += (f", {100 * test['em_pruned']:.1f} % with its GlimpsePrune modules keeping "
                 f"{100 * test['kept_ratio_mean']:.1f} % of the visual tokens")
    return text + ", see its MODEL_CARD.md"


def mini_modules_card(model) -> str:
    """The hub card of the shipped modules (``assets/mini/glimpse/README.md``, what ``save_pretrained`` writes):
    training facts from the shipped ``configs/mini/glimpse.json``, measured figures from :func:`mini_results`.
    ``model``: the mini model with its shipped modules. Rewrite the file after either changes::

        python -c "from glimpseprune import assets; assets.write_mini_modules_card()"
    """
    import json

    from .hub import model_card
    from .shipped_configs import CONFIG_DIR

    recipe = json.loads((CONFIG_DIR / "mini" / "glimpse.json").read_text(encoding="utf-8"))
    test = mini_results()["test"]["measured"]
    training = {"recipe": "configs/mini/glimpse.json (glimpseprune train)",
                "data": "glimpse-shapes train split (seed 0), boxes of the objects each question refers to",
                "mode": recipe["mode"], "steps": recipe["max_steps"], "batch size": recipe["batch_size"],
                "learning rate": recipe["lr"], "seed": recipe["seed"]}
    metrics = {"items (glimpse-shapes test split, seed 0)": test["n"],
               "exact match, unpruned": test["em_unpruned"],
               "exact match, GlimpsePrune": test["em_pruned"],
               "exact match, random tokens at the same layer and per-sample counts": test["em_random"],
               "GlimpsePrune - random (exact paired test p)": f"{100 * test['margin_over_random']:+.1f} points "
                                                              f"(p = {test['paired_vs_random']['p_value']:.0e})",
               "visual tokens kept after layer K (mean share)": test["kept_ratio_mean"],
               "kept tokens per image (median, min-max)": f"{test['kept_tokens_median']:g} of "
                                                          f"{test['visual_tokens_per_image']} "
                                                          f"({test['kept_tokens_min']}-{test['kept_tokens_max']})",
               "kept-mask IoU with the referenced boxes": test["mask_iou_mean"]}
    return model_card(model.config, model.glimpse, model.vip, base_model="glimpseprune/assets/mini/base",
                      training=training, metrics=metrics)


def write_mini_modules_card() -> Path:
    from .hub import CARD_NAME

    model, _ = default_model()
    path = MINI_DIR / "glimpse" / CARD_NAME
    path.write_text(mini_modules_card(model), encoding="utf-8")
    return path


# The CLI's example (no --image): this glimpse-shapes *test* item (seed 0), whose question is "What colour is the
# triangle?" (the CLI's default question) and whose answer is purple. tests/test_mini.py checks that the shipped
# mini model answers it, pruned and unpruned. Not a hand-picked success: the item predates the current model, and
# that model (with its K = 4 modules) answered all 30 test items with this question among the first 600 right, in
# both ways and with the lower-case question too (its accuracy over all question types: assets/mini/results.json). The K = 3 modules shipped for issue #14 answer this item right too (tested).
EXAMPLE_ITEM = 202
EXAMPLE_QUESTION = "What colour is the triangle?"
EXAMPLE_ANSWER = "purple"


def example_image(size: int = 448) -> Image.Image:
    """A glimpse-shapes test scene (deterministic): the benchmark's test item :data:`EXAMPLE_ITEM`.

    ``size`` other than 448 rescales that scene (the benchmark itself needs >= 448 px).
    """
    from .data.scenes import generate_items, render_scene

    scene, _ = generate_items(EXAMPLE_ITEM + 1, seed=0, size=448, split="test")[EXAMPLE_ITEM]
    image = render_scene(scene)
    return image if size == 448 else image.resize((size, size), Image.NEAREST)
