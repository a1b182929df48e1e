"""Decode-step overhead on the shipped mini model (issue 17 §3): the engine's decode loop, which builds the rotary
tables and the attention mask once per call, against the previous loop, which rebuilt both at every step (kept
below as ``decode_rebuilding_per_step``, the same loop otherwise). Both run in this process on the same prefilled
cache copies, interleaved (old, new, new, old, ...), greedy with EOS suppressed so both decode the same number of
steps; their tokens must be identical. Prints ms/step medians with min-max, the new/old ratio, and the load.

    python benchmarks/decode_overhead.py [--steps 64] [--repeats 7] [--batch-sizes 1,4] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from glimpseprune.engine import Decoded, GenerationParams, Prefill, decode, prefill  # noqa: E402


def full_mask(adapter, h, am, cache, pos):
    """The full-attention layers' mask for one decode step, as the engine builds it (layer_loop.build_masks)."""
    from glimpseprune.layer_loop import DecoderSequence, build_masks

    return build_masks(adapter, DecoderSequence(h, pos, am, None, None, cache))["full_attention"]


def decode_rebuilding_per_step(adapter, pre: Prefill, input_ids, params: GenerationParams) -> Decoded:
    """The decode loop as it was before issue 17 (greedy only): rope and mask rebuilt at every step."""
    start = time.perf_counter()
    procs = params.processors(input_ids.shape[1])
    history, bs = input_ids, input_ids.shape[0]
    logits, am, cache = pre.logits, pre.attention_mask, pre.cache
    out = []
    for step in range(params.max_new_tokens):
        token = procs(history, logits).argmax(-1)
        out.append(token)
        history = torch.cat([history, token[:, None]], dim=1)
        if step == params.max_new_tokens - 1:
            break
        pos = pre.last_positions + step + 1
        am = torch.cat([am, am.new_ones(bs, 1)], dim=1)
        h = adapter.embed_tokens(token[:, None])
        cos_sin = adapter.rope(h, pos)
        mask = full_mask(adapter, h, am, cache, pos)
        for i in range(adapter.num_layers):
            h = adapter.run_layer(i, h, mask, cos_sin, pos, cache)
        logits = adapter.lm_head(adapter.text_model.norm(h))[:, -1].float()
    return Decoded(tokens=torch.stack(out, dim=1), seconds=time.perf_counter() - start, steps=len(out))


def _copy(pre: Prefill) -> Prefill:
    return Prefill(logits=pre.logits, cache=copy.deepcopy(pre.cache), attention_mask=pre.attention_mask,
                   last_positions=pre.last_positions, pruning=pre.pruning)


def setup_cost(adapter, pre: Prefill, steps: int) -> dict:
    """What one decode step spends before its layers run, isolated: the old rope + mask rebuild vs the new slices."""
    bs = pre.logits.shape[0]
    am = torch.cat([pre.attention_mask, pre.attention_mask.new_ones(bs, 1)], dim=1)
    h = adapter.embed_tokens(torch.zeros(bs, 1, dtype=torch.long))
    pos = pre.last_positions + 1
    tables = adapter.rope(h.expand(-1, steps - 1, -1), adapter.next_positions(pre.last_positions, steps - 1))
    mask = full_mask(adapter, h, am, pre.cache, pos)
    grown = None if mask is None else torch.cat([mask, mask[..., -1:].expand(*mask.shape[:-1], steps - 2)], -1)

    def old():
        adapter.rope(h, pos)
        full_mask(adapter, h, am, pre.cache, pos)

    def new():
        tuple(t[:, 3:4] for t in tables)
        if grown is not None:
            grown[..., : am.shape[1]]

    out = {}
    for name, fn in (("old_ms", old), ("new_ms", new)):
        rounds = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(300):
                fn()
            rounds.append(1000 * (time.perf_counter() - t0) / 300)
        out[name] = min(rounds)
    out["mask_is_none"] = mask is None
    return out


@torch.inference_mode()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batch-sizes", default="1,4")
    p.add_argument("--method", default="glimpse")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from glimpseprune.assets import MINI_DIR
    from glimpseprune.eval.bench import bench_image, load_average
    from glimpseprune.model import GlimpsePrune
    from glimpseprune.processing import build_inputs

    gp = GlimpsePrune.from_pretrained(MINI_DIR / "base", MINI_DIR / "glimpse", device="cpu")
    params = GenerationParams.resolve(gp.model.generation_config, max_new_tokens=args.steps,
                                      min_new_tokens=args.steps)
    method = gp.method(args.method)
    results = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        # Questions of different lengths: a batch > 1 is left-padded, so its mask is a real tensor, not None.
        images = [[bench_image(112, 112, seed=i)] for i in range(bs)]
        questions = ["what colour is the circle?" + " please answer briefly" * (i % 3) for i in range(bs)]
        inputs = build_inputs(gp.processor, questions, images)
        batch = gp.adapter.prepare(inputs, method.vit_layers if method is not None else None)
        pre = prefill(gp.adapter, batch, method)
        times = {"old": [], "new": []}
        load_before = load_average()
        tokens = {}
        for r in range(args.repeats + 1):  # the first round is a warm-up
            for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
                fn = decode_rebuilding_per_step if name == "old" else decode
                dec = fn(gp.adapter, _copy(pre), batch.input_ids, params)
                tokens[name] = dec.tokens
                if r:
                    times[name].append(1000 * dec.seconds / (dec.steps - 1))
        if not torch.equal(tokens["old"], tokens["new"]):
            raise SystemExit(f"batch {bs}: the two loops decoded different tokens")
        ratios = [n / o for n, o in zip(times["new"], times["old"])]
        setup = setup_cost(gp.adapter, pre, args.steps)
        row = {"batch_size": bs, "kv_length": int(pre.attention_mask.shape[1]), "steps": args.steps,
               "old_ms_per_step": {"median": statistics.median(times["old"]), "min": min(times["old"]),
                                   "max": max(times["old"])},
               "new_ms_per_step": {"median": statistics.median(times["new"]), "min": min(times["new"]),
                                   "max": max(times["new"])},
               "new_over_old": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
               "per_step_setup_ms": setup, "mask_is_none": setup["mask_is_none"],
               "loadavg": [load_before, load_average()], "threads": torch.get_num_threads()}
        results.append(row)
        print(f"batch {bs} (KV {row['kv_length']}): old {row['old_ms_per_step']['median']:.2f} ms/step "
              f"[{row['old_ms_per_step']['min']:.2f}-{row['old_ms_per_step']['max']:.2f}], new "
              f"{row['new_ms_per_step']['median']:.2f} [{row['new_ms_per_step']['min']:.2f}-"
              f"{row['new_ms_per_step']['max']:.2f}]; new/old {row['new_over_old']['median']:.3f} "
              f"[{row['new_over_old']['min']:.3f}-{row['new_over_old']['max']:.3f}] over {args.repeats} interleaved "
              f"pairs; tokens identical; {row['threads']} threads, load {load_before} -> {row['loadavg'][1]}",
              flush=True)
        print(f"  per-step setup alone (min over 5 x 300 calls): rope + mask rebuilt {setup['old_ms']:.3f} ms, "
              f"slices of the per-call tables {setup['new_ms']:.4f} ms (mask {'None' if setup['mask_is_none'] else 'a tensor'})",
              flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"benchmark": "decode_overhead", "model": "embedded mini",
                                              "method": args.method, "rows": results}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
