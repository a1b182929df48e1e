"""Check a model split over several accelerators against the undivided model (needs >= 2 CUDA devices).

    .venv/bin/python scripts/check_split_devices.py

For every family's tiny offline model: decoder layers alternate between cuda:0 and cuda:1 (vision tower and
embeddings on cuda:0, norm and lm_head on cuda:1), then GlimpsePrune and every baseline must give the same tokens,
keep masks, keep indices and KV lengths as the model on cuda:0 alone. This is the multi-accelerator half of what
tests/adapters/test_split.py checks on CPU + disk offload (docs/scaling.md); the CPU-only CI cannot run it.
Prints one line per (family, method) and exits 1 on any difference or error.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch


def main() -> int:
    if torch.cuda.device_count() < 2:
        print(f"needs >= 2 CUDA devices, found {torch.cuda.device_count()}", file=sys.stderr)
        return 2
    from PIL import Image

    from glimpseprune import GlimpsePrune
    from glimpseprune.methods import get_method
    from glimpseprune.processing import build_inputs
    from glimpseprune.testing.tiny import tiny_llava, tiny_qwen2_5_vl, tiny_qwen2_vl

    images = [Image.new("RGB", (308, 196), (200, 40, 40)), Image.new("RGB", (168, 280), (40, 40, 200))]
    questions = ["is there a red circle?", "what colour is the shape in the image?"]
    failures = 0
    for family, build in (("qwen2_5_vl", tiny_qwen2_5_vl), ("qwen2_vl", tiny_qwen2_vl), ("llava", tiny_llava)):
        model, processor = build()
        whole = GlimpsePrune(model.to("cuda:0"), processor).with_new_modules(seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            model.save_pretrained(folder / "base")
            processor.save_pretrained(folder / "base")
            whole.save_pretrained(folder / "glimpse")
            device_map = {}
            for name, _ in model.named_children():
                if name != "model":
                    device_map[name] = 1  # lm_head
            adapter = whole.adapter
            names = {id(m): n for n, m in model.named_modules()}
            text, layers = names[id(adapter.text_model)], names[id(adapter.layers)]
            for name, _ in model.model.named_children():
                if f"model.{name}" != text:
                    device_map[f"model.{name}"] = 0
            for name, _ in adapter.text_model.named_children():
                if f"{text}.{name}" != layers:
                    device_map[f"{text}.{name}"] = 0 if name in ("embed_tokens", "rotary_emb") else 1
            for i in range(adapter.num_layers):
                device_map[f"{layers}.{i}"] = i % 2
            split = GlimpsePrune.from_pretrained(folder / "base", folder / "glimpse", dtype=torch.float32,
                                                 device_map=device_map)
            inputs = build_inputs(processor, questions, [[images[0]], [images[1]]])
            for name in ["glimpse", "random", "fastv", "pyramiddrop", "divprune", "cdpruner", "downsample",
                         "visionzip", "vscan"]:
                options = dict(layers=[1, 2, 3], ratio=0.25) if name == "pyramiddrop" else dict(ratio=0.25)
                try:
                    if name == "glimpse":
                        a = whole.generate(**inputs, max_keep_ratio=0.3, max_new_tokens=6, min_new_tokens=6)
                        b = split.generate(**inputs, max_keep_ratio=0.3, max_new_tokens=6, min_new_tokens=6)
                    else:
                        a = whole.generate(**inputs, method=get_method(name, whole, **options), max_new_tokens=6,
                                           min_new_tokens=6)
                        b = split.generate(**inputs, method=get_method(name, split, **options), max_new_tokens=6,
                                           min_new_tokens=6)
                    same = (torch.equal(a.sequences.cpu(), b.sequences.cpu())
                            and a.pruning.kv_lengths == b.pruning.kv_lengths
                            and all(torch.equal(x.keep, y.keep) and torch.equal(x.keep_indices, y.keep_indices)
                                    for x, y in zip(a.pruning.samples, b.pruning.samples)))
                    verdict = "same" if same else "DIFFERENT"
                except Exception as err:  # report and go on: one line per failure is the point of this script
                    same, verdict = False, f"ERROR {type(err).__name__}: {err}"
                failures += not same
                print(f"{family:11s} {name:12s} {verdict}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
