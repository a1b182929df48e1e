"""``glimpseprune train --config FILE [key=value ...]`` and ``python -m glimpseprune.train.cli`` (the form to
use under ``accelerate launch``).

Overrides are JSON values where they parse (``lr=2e-4``, ``max_steps=50``, ``glimpse.prune_layer=2``,
``resume=null``), plain strings otherwise (``mode=boxfree``, ``output_dir=runs/x``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="training config (JSON or YAML): a file, or a shipped name such as "
                             "train/tiny_offline.json (list them: glimpseprune configs)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--no-validate", action="store_true", help="skip the held-out pass after training")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .trainer import Stage1Trainer, TrainConfig
    from .validate import validate

    from ..shipped_configs import resolve

    cfg = TrainConfig.from_file(resolve(args.config), args.overrides)
    trainer = Stage1Trainer(cfg)
    acc = trainer.acc
    print(f"[train] process {acc.process_index}/{acc.num_processes} on {acc.device}: "
          f"{len(trainer.records)} records, {trainer.micro_per_epoch} micro-batches/epoch, "
          f"{trainer.total_steps} optimiser steps", flush=True)
    trainer.train()
    if acc.is_main_process and not args.no_validate and trainer.val_records:
        report = validate(trainer.adapter, trainer.processor, trainer.gp_config, trainer.module.glimpse,
                          trainer.module.vip, trainer.val_records, min_pixels=cfg.min_pixels,
                          max_pixels=cfg.max_pixels)
        (trainer.output_dir / "validation.json").write_text(json.dumps(report, indent=1) + "\n")
        print(f"[train] validation: {json.dumps(report)}", flush=True)
    acc.wait_for_everyone()
    acc.end_training()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glimpseprune train", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
