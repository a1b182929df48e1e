"""Issue-2 benchmark: the tiny offline model, one 896x896 image, baseline vs GlimpsePrune at a fixed keep ratio.

Prints prefill time, decode ms/token, KV length/bytes and peak memory for both, and their ratios, all measured in
the same run on this machine; writes everything as JSON (default benchmarks/results/bench_prune.json).

The tiny model is random and 4 layers deep: its ratios show the mechanics (the cache really is shorter, the cut
runs), not the speed-ups of a 7B model. For real figures run ``glimpseprune bench --config-only qwen2.5-vl-7b`` or
``--model ... --glimpse ...`` on a GPU.

    python benchmarks/bench_prune.py [--keep-ratio 0.1] [--repeats 5] [--new-tokens 32] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from glimpseprune.eval.bench import BenchConfig, build_tiny, run_benchmark  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep-ratio", type=float, default=0.1)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=896)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="benchmarks/results/bench_prune.json")
    args = parser.parse_args(argv)

    gp = build_tiny(args.device)
    config = BenchConfig(batch_sizes=[1], keep_ratio=args.keep_ratio, threshold=0.0, new_tokens=args.new_tokens,
                         warmup=args.warmup, repeats=args.repeats, image_size=(args.image_size, args.image_size))
    result = run_benchmark(gp, config, source={"kind": "tiny", "device": args.device, "seed": 0})
    base, pruned = result.rows
    ratio = result.comparisons[0]["ratio"]
    env = result.environment

    def mib(v):
        return "n/a" if v is None else f"{v / 2**20:.3f} MiB"

    print(f"tiny Qwen2.5-VL ({gp.config.num_layers} layers, K={gp.config.prune_layer}), one "
          f"{args.image_size}x{args.image_size} image, {env['device_name']} {env['dtype']} attn={env['attn_implementation']}, "
          f"{env['threads']} threads; medians of {args.repeats} interleaved repeats after {args.warmup} warm-up")
    print(f"visual tokens {base['n_visual']} -> kept {pruned['n_kept']} ({pruned['kept_ratio']:.1%} after K; "
          f"layer-averaged retention {pruned['layer_averaged_retention']:.1%})")
    header = f"{'':28}{'baseline':>14}{'glimpse':>14}{'ratio':>9}"
    print(header)
    lines = [
        ("LLM prefill ms (ViT excl.)", "prefill_ms", "{:.2f}"),
        ("TTFT ms (ViT incl.)", "ttft_ms", "{:.2f}"),
        ("decode ms/token", "decode_ms_per_step", "{:.3f}"),
        ("KV length (tokens)", "kv_length", "{:.0f}"),
        ("KV bytes", "kv_bytes", "{:.0f}"),
        ("peak memory (LLM part)", "peak_memory_bytes", "mib"),
        ("peak memory (with ViT)", "peak_memory_with_vit_bytes", "mib"),
        ("prefill GFLOPs", "prefill_flops", "gf"),
        ("prefill GFLOPs w/o ViT", "prefill_flops_without_vit", "gf"),
        ("decode GFLOPs", "decode_flops", "gf"),
    ]
    for label, key, fmt in lines:
        def cell(v):
            if v is None:
                return "n/a"
            return mib(v) if fmt == "mib" else (f"{v / 1e9:.4f}" if fmt == "gf" else fmt.format(v))
        r = ratio.get(key)
        print(f"{label:28}{cell(base[key]):>14}{cell(pruned[key]):>14}{('n/a' if r is None else f'{r:.3f}'):>9}")
    print(f"peak memory: {base['memory_kind']}; load average {env['loadavg']}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "bench_prune", "model": "tiny-qwen2.5-vl (random, offline)", **result.to_dict()}
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
