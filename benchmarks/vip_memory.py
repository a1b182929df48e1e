"""VIP peak memory and time against the number of visual tokens (issue 17 §2): is the growth linear?

Every token count runs in its own subprocess (a fresh allocator, so no earlier configuration's pages are reused).
The child builds the published-size VIP (Qwen2.5-VL-7B: F=256, C=512, 4 heads, 4 layers, 28 glimpse-row columns,
1280-wide ViT conditions), creates its inputs for one square image of N tokens, then resets the kernel's peak-RSS
mark (``/proc/self/clear_refs`` 5, Linux) and reads ``VmRSS`` as the baseline; the figure is ``VmHWM`` after one
forward minus that baseline: the memory the VIP itself needs on top of its weights and inputs. On CUDA the allocator's
own peak is used (``torch.cuda.reset_peak_memory_stats``) the same way.

``--math`` forces SDPA's unfused math path (what the VIP did before V was padded: it builds the H·N×N map), for the
comparison.

    python benchmarks/vip_memory.py [--tokens 1024,4096,16384] [--device cpu] [--math] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(tokens: int, device: str, dtype: str, math_path: bool) -> dict:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from glimpseprune.modules import VIP

    side = math.isqrt(tokens)
    if side * side != tokens:
        raise SystemExit(f"--tokens wants square counts (one square image), got {tokens}")
    dt = getattr(torch, dtype)
    torch.manual_seed(0)
    vip = VIP(row_width=28, vision_size=1280).to(device=device, dtype=dt).eval()
    rows = torch.randn(tokens, 28, device=device, dtype=dt)
    conds = [torch.randn(tokens, 1280, device=device, dtype=dt) for _ in range(4)]
    with torch.inference_mode():
        vip(rows[:16], [c[:16] for c in conds], [(4, 4)])  # first-call allocations (thread pools, kernels) excluded
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        base = _status_kib("VmRSS") * 1024
    backend = [SDPBackend.MATH] if math_path else list(SDPBackend.__members__.values())
    with torch.inference_mode(), sdpa_kernel(backend):
        t0 = time.perf_counter()
        vip(rows, conds, [(side, side)])
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else _status_kib("VmHWM") * 1024
    return {"tokens": tokens, "peak_bytes": peak - base, "seconds": seconds, "device": device, "dtype": dtype,
            "attention": "math (unfused)" if math_path else "sdpa default (fused when possible)",
            "threads": torch.get_num_threads(), "loadavg": open("/proc/loadavg").read().split()[:3]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="1024,4096,16384")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--math", action="store_true", help="force SDPA's unfused math path (the old VIP's memory)")
    p.add_argument("--out", default=None, help="JSON output path")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.device, args.dtype, args.math)))
        return 0
    rows = []
    for n in [int(t) for t in args.tokens.split(",")]:
        cmd = [sys.executable, __file__, "--child", str(n), "--device", args.device, "--dtype", args.dtype]
        cmd += ["--math"] if args.math else []
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{n} tokens: child failed\n{done.stderr.strip()[-2000:]}", file=sys.stderr)
            return 1
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{n:>6} tokens: VIP peak memory {row['peak_bytes'] / 2**20:8.1f} MiB, forward {row['seconds']:.2f} s "
              f"({row['attention']}, {row['device']} {row['dtype']}, {row['threads']} threads, load {' '.join(row['loadavg'])})",
              flush=True)
    by_n = {r["tokens"]: r["peak_bytes"] for r in rows}
    if 4096 in by_n and 16384 in by_n:
        ratio = by_n[16384] / (4 * by_n[4096])
        print(f"peak(16384) / (4 x peak(4096)) = {ratio:.2f} (linear growth: about 1; target <= 2)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"benchmark": "vip_memory", "rows": rows}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
