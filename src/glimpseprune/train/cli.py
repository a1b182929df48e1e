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
    report = None
    if acc.is_main_process and not args.no_validate and trainer.val_records:
        report = validate(trainer.adapter, trainer.processor, trainer.gp_config, trainer.module.glimpse,
                          trainer.module.vip, trainer.val_records, min_pixels=cfg.min_pixels,
                          max_pixels=cfg.max_pixels)
        (trainer.output_dir / "validation.json").write_text(json.dumps(report, indent=1) + "\n")
        print(f"[train] validation: {json.dumps(report)}", flush=True)
    final = trainer.output_dir / "final"
    if acc.is_main_process and (final / "glimpse_config.json").is_file():
        from ..hub import write_model_card

        card = write_model_card(final, trainer.gp_config, trainer.module.glimpse, trainer.module.vip,
                                base_model=cfg.model, training=training_facts(cfg, trainer, args.config),
                                metrics=_validation_metrics(report, len(trainer.val_records)))
        print(f"[train] model card: {card}", flush=True)
    acc.wait_for_everyone()
    acc.end_training()
    return 0


def training_facts(cfg, trainer, config_name) -> dict:
    """What the model card records about the run: data, objective, schedule."""
    data = (f"glimpse-shapes synthetic ({json.dumps(cfg.synthetic, sort_keys=True)})" if cfg.synthetic
            else cfg.data)
    return {"config": str(config_name), "data": data, "train records": len(trainer.records), "mode": cfg.mode,
            "optimiser steps": trainer.total_steps,
            "batch": f"{cfg.batch_size} per device x {cfg.grad_accum} accumulation x "
                     f"{trainer.acc.num_processes} process(es)",
            "lr": cfg.lr, "seed": cfg.seed}


def _validation_metrics(report: dict | None, n: int) -> dict | None:
    """The held-out pass's numbers (validation.json) for the card, named with the item count."""
    if not report:
        return None
    return {f"held-out {key} (n = {n})": value for key, value in report.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def main(argv: list[str] | None = None) -> int:
    from ..errors import debug_requested, run_guarded

    debug, argv = debug_requested(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(prog="glimpseprune train", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_guarded(lambda: run(args), debug, prog="glimpseprune train")


if __name__ == "__main__":
    sys.exit(main())
