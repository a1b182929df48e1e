"""Fixtures for the stage-1 training tests: tiny offline model, in-memory glimpse-shapes records."""

import os

import pytest
import torch

from glimpseprune.data.scenes import all_texts, generate_items, render_scene
from glimpseprune.testing.tiny import tiny_qwen2_5_vl

SMALL_VIP = {"vip_size": 32, "vip_cond_size": 32, "vip_heads": 2}
MAX_PIXELS = 112 * 112  # 4 x 4 merged tokens per 448 px scene (fast; coarse masks are fine here)


@pytest.fixture(scope="session")
def tiny_train_model():
    model, processor = tiny_qwen2_5_vl(corpus=all_texts())
    model.requires_grad_(False)
    return model, processor


def make_records(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    out = []
    for scene, record in generate_items(n, seed=seed, split=split):
        record = dict(record)
        record["image"] = render_scene(scene)
        out.append(record)
    return out


@pytest.fixture(scope="session")
def shapes_records():
    # boxed records only, so every sample has a mask target
    return [r for r in make_records(12) if r["bboxs"]][:8]


def train_config(tmp_path, **kw):
    from glimpseprune.train.trainer import TrainConfig

    base = dict(
        model="tiny", dtype="float32", output_dir=str(tmp_path), mode="box", lr=1e-3, warmup_ratio=0.0,
        scheduler="constant", batch_size=1, grad_accum=2, mixed_precision="no", seed=42, glimpse_dropout=0.0,
        glimpse=dict(SMALL_VIP), max_pixels=MAX_PIXELS, log_every=1, save_every=1000, progress=False,
        resume=None, max_grad_norm=1.0,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(autouse=True)
def _threads():
    # At most 2 threads, fewer where OMP_NUM_THREADS asks for it: on a shared machine oversubscribed threads
    # make these tests an order of magnitude slower.
    torch.set_num_threads(max(1, min(2, int(os.environ.get("OMP_NUM_THREADS") or 2))))
