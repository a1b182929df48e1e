"""Engine overhead guard: prefill and decode time of the embedded mini model through the engine of whatever
``glimpseprune`` is importable, so two checkouts can be compared on the same machine in one run.

    python benchmarks/bench_layer_loop.py --out after.json
    PYTHONPATH=/path/to/other/checkout/src python benchmarks/bench_layer_loop.py --out before.json
    python benchmarks/bench_layer_loop.py --ratio before.json after.json      # after / before, medians

Times (CPU, medians over --repeats after --warmup): GlimpsePrune prefill (the cut at K), unpruned prefill, and
decode ms/token on the pruned cache. The model, prompt and image are fixed; only the engine code differs.
Absolute times mean nothing off a GPU; run before/after alternately and read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402


def measure(repeats: int, warmup: int, new_tokens: int) -> dict:
    import glimpseprune
    from glimpseprune.assets import EXAMPLE_QUESTION, default_model, example_image
    from glimpseprune.engine import GenerationParams, decode, prefill
    from glimpseprune.processing import build_inputs

    gp, _ = default_model()
    inputs = build_inputs(gp.processor, [EXAMPLE_QUESTION], [[example_image()]])
    with torch.no_grad():
        batch = gp.adapter.prepare(dict(inputs), gp.config.vip_visual_layers)
        params = GenerationParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        times = {"prefill_glimpse_ms": [], "prefill_none_ms": [], "decode_ms_per_token": []}
        for r in range(warmup + repeats):
            t = time.perf_counter()
            pre = prefill(gp.adapter, batch, gp.method("glimpse"))
            t_glimpse = time.perf_counter() - t
            t = time.perf_counter()
            prefill(gp.adapter, batch, None)
            t_none = time.perf_counter() - t
            out = decode(gp.adapter, pre, batch.input_ids, params)
            if r >= warmup:
                times["prefill_glimpse_ms"].append(1e3 * t_glimpse)
                times["prefill_none_ms"].append(1e3 * t_none)
                times["decode_ms_per_token"].append(1e3 * out.seconds / out.steps)
    return {
        "source": os.path.dirname(glimpseprune.__file__),
        "threads": torch.get_num_threads(),
        "load": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None,
        "median": {k: statistics.median(v) for k, v in times.items()},
        "min": {k: min(v) for k, v in times.items()},
        "max": {k: max(v) for k, v in times.items()},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--out")
    parser.add_argument("--ratio", nargs="+", metavar="JSON", help="BEFORE... AFTER...: print after/before medians")
    args = parser.parse_args(argv)
    if args.ratio:
        runs = [json.load(open(p)) for p in args.ratio]
        half = len(runs) // 2
        before, after = runs[:half], runs[half:]
        for key in before[0]["median"]:
            b = statistics.median(r["median"][key] for r in before)
            a = statistics.median(r["median"][key] for r in after)
            spread_b = [round(r["median"][key], 3) for r in before]
            spread_a = [round(r["median"][key], 3) for r in after]
            print(f"{key:22} before {b:9.3f} {spread_b}  after {a:9.3f} {spread_a}  ratio {a / b:.3f}")
        return 0
    result = measure(args.repeats, args.warmup, args.new_tokens)
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
