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
MINI_LABEL = "embedded mini model (glimpseprune/assets/mini): a 2 M-parameter Qwen2.5-VL for glimpse-shapes scenes only"
TINY_RANDOM_LABEL = "tiny random Qwen2.5-VL with untrained GlimpsePrune modules (mechanics only: answers are gibberish)"


def default_model(device: str | None = "cpu", glimpse: str | None = None, **placement):
    """``placement``: ``device_map`` / ``max_memory`` / ``offload_folder`` for the shipped mini model."""
    from .model import GlimpsePrune

    if (MINI_DIR / "base" / "config.json").is_file():
        model = GlimpsePrune.from_pretrained(MINI_DIR / "base", glimpse or MINI_DIR / "glimpse", device=device,
                                             **placement)
        # Say what it is every time, with its measured accuracy: a toy model must not pass for a general answerer.
        return model, MINI_LABEL + ", 93.4 % exact match on its test split, see its MODEL_CARD.md"
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


# The CLI's example (no --image): this glimpse-shapes *test* item (seed 0), whose question is "What colour is the
# triangle?" (the CLI's default question) and whose answer is purple. tests/test_mini.py checks that the shipped
# mini model answers it, pruned and unpruned. Not a hand-picked success: the item predates the current model, and
# that model (with its K = 4 modules) answered all 30 test items with this question among the first 600 right, in
# both ways and with the lower-case question too (93.4 % exact match over all question types; see
# assets/mini/MODEL_CARD.md). The K = 3 modules shipped for issue #14 answer this item right too (tested).
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
