"""The embedded default model and example image, used when the CLI is given no ``--model`` / ``--image``.

A trained mini model shipped in ``glimpseprune/assets/mini`` (base + glimpse modules) is used when present. Until it
exists, the default is a tiny *randomly initialised* Qwen2.5-VL with untrained GlimpsePrune modules, built offline
in a second: it exercises every code path (vision tower, glimpse, VIP, pruning, decoding) but its answers are
gibberish and its keep decisions are arbitrary. The CLI says so whenever it uses it.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

MINI_DIR = Path(__file__).parent / "assets" / "mini"
TINY_RANDOM_LABEL = "tiny random Qwen2.5-VL with untrained GlimpsePrune modules (mechanics only: answers are gibberish)"


def default_model(device: str = "cpu", glimpse: str | None = None):
    from .model import GlimpsePrune

    if (MINI_DIR / "base" / "config.json").is_file():
        model = GlimpsePrune.from_pretrained(MINI_DIR / "base", glimpse or MINI_DIR / "glimpse", device=device)
        return model, "embedded mini model (glimpseprune/assets/mini)"
    from .tiny import tiny_qwen2_5_vl

    base, processor = tiny_qwen2_5_vl()
    model = GlimpsePrune(base.to(device), processor)
    if glimpse is not None:
        from .checkpoint import load_modules

        config, g, v = load_modules(glimpse, model.adapter.default_glimpse_config())
        return GlimpsePrune(model.model, processor, config, g, v), "tiny random Qwen2.5-VL + " + str(glimpse)
    return model.with_new_modules(seed=0), TINY_RANDOM_LABEL


def example_image(size: int = 448) -> Image.Image:
    """A small scene of coloured shapes (deterministic)."""
    image = Image.new("RGB", (size, size), (236, 236, 228))
    draw = ImageDraw.Draw(image)
    s = size / 448
    draw.polygon([(80 * s, 320 * s), (140 * s, 320 * s), (110 * s, 265 * s)], fill=(220, 40, 40))
    draw.ellipse([280 * s, 90 * s, 340 * s, 150 * s], fill=(40, 160, 60))
    draw.rectangle([300 * s, 300 * s, 356 * s, 356 * s], fill=(50, 80, 210))
    return image
