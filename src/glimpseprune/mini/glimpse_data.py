"""Stage-1 data for the mini model: glimpse-shapes records whose ``answer`` is the one-word ``short_answer``.

The stage-1 trainer supervises the record's ``answer`` (the LM term of the loss); glimpse-shapes stores the
free-form sentence there, while the mini base model answers in one word. This writes the benchmark splits and a
copy of each JSONL with ``answer := short_answer`` (same images, same boxes).

``python -m glimpseprune.mini.glimpse_data OUT_DIR --train N --val N [--seed S]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def write_short_answer_copy(src: Path, dst: Path) -> int:
    n = 0
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8", newline="\n") as g:
        for line in f:
            if line.strip():
                obj = json.loads(line)
                obj["answer"] = obj["short_answer"]
                g.write(json.dumps(obj) + "\n")
                n += 1
    return n


def make(out_dir, n_train: int, n_val: int, seed: int = 0, size: int = 448) -> dict:
    from ..data.scenes import generate_benchmark

    out = Path(out_dir)
    generate_benchmark(out, n_train, n_val, 0, seed=seed, size=size, overwrite=True)
    return {split: write_short_answer_copy(out / f"{split}.jsonl", out / f"{split}_short.jsonl")
            for split in ("train", "val")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m glimpseprune.mini.glimpse_data", description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=2400)
    p.add_argument("--val", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=448)
    args = p.parse_args(argv)
    counts = make(args.out_dir, args.train, args.val, args.seed, args.size)
    print(f"wrote {args.out_dir}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
