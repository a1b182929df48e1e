"""Session-wide fixtures: tiny offline models are built once; nothing touches the network."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from glimpseprune import GlimpsePrune
from glimpseprune.testing.tiny import tiny_qwen2_5_vl

torch.set_num_threads(min(2, torch.get_num_threads()))


def scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """A noisy image with a few coloured shapes (deterministic)."""
    rng = np.random.RandomState(seed)
    arr = (rng.rand(height, width, 3) * 80 + 150).astype("uint8")
    image = Image.fromarray(arr)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.randint(0, max(1, width - 40)), rng.randint(0, max(1, height - 40))
        color = tuple(int(c) for c in rng.randint(0, 255, 3))
        draw.ellipse([x, y, x + 36, y + 36], fill=color)
    return image


@pytest.fixture(scope="session")
def qwen():
    model, processor = tiny_qwen2_5_vl()
    return model, processor


@pytest.fixture(scope="session")
def gp(qwen):
    model, processor = qwen
    return GlimpsePrune(model, processor).with_new_modules(seed=0)


@pytest.fixture(scope="session")
def images():
    return {"square": scene(224, 224, 0), "tall": scene(168, 280, 1), "wide": scene(308, 196, 2)}
