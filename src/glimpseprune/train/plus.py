"""GlimpsePrune+ training (stage 2): Run A (GRPO LoRA on pruned rollouts), merge, Run B (stage 1 on the merged model).

``glimpseprune train-plus --config configs/plus/mini.json [key=value ...]`` or ``python -m glimpseprune.train.plus``
(the form for ``accelerate launch``). Config: ``{"output_dir", "base", "run_a": {RLConfig fields},
"run_b": {stage-1 TrainConfig fields}}``; overrides use the stage-1 syntax with dotted keys
(``run_a.max_steps=20``, ``run_b.lr=1e-3``, ``output_dir=runs/x``).

Layout of ``output_dir``:

    run_a/            Run A checkpoints, log.jsonl, final/adapter (PEFT adapter-only)
    run_b/            Run B (the stage-1 trainer's own checkpoints, log.jsonl, final/)
    final/            ours: adapter/ (PEFT) + glimpse/ (glimpse_config.json + glimpse.safetensors)
    final_reference/  the reference's layout: config.json + new_modules_gp.pt + adapter_config.json +
                      adapter_model.safetensors (transformers-4.51 key prefix)

Both load with ``GlimpsePrune.from_pretrained(base, glimpse=DIR, adapter=DIR)``. Each run resumes by itself
(``resume: "auto"``); a finished Run A is not repeated (its adapter is merged from disk with ``lora.py``, the same
code path inference uses).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch


def load_config(path, overrides: list[str] | None = None) -> dict:
    from .trainer import apply_overrides

    return apply_overrides(json.loads(Path(path).read_text()), overrides, {"output_dir", "run_a", "run_b"}, "GP+",
                           hint=" (expected output_dir, run_a, run_b)")


def run_a(rl_cfg, accelerator=None, gp=None, records=None, reward_fn=None):
    """Run A; returns the GlimpsePrune wrapper whose model has the LoRA merged in (PEFT wrapper removed)."""
    from .rl_trainer import GRPOTrainer, build_policy_model

    final = Path(rl_cfg.output_dir) / "final" / "adapter"
    if (final / "adapter_model.safetensors").is_file():
        from ..lora import merge_reference_lora

        gp = gp if gp is not None else build_policy_model(rl_cfg, accelerator.device if accelerator else "cpu")
        merge_reference_lora(gp.model, final)
        print(f"[plus] run A already finished: merged {final}", flush=True)
        return gp
    trainer = GRPOTrainer(rl_cfg, accelerator=accelerator, gp=gp, records=records, reward_fn=reward_fn)
    trainer.train()
    merged = trainer.peft_model.merge_and_unload()
    from ..model import GlimpsePrune

    return GlimpsePrune(merged, trainer.gp.processor, trainer.gp.config, trainer.gp.glimpse, trainer.gp.vip)


def run_b(train_cfg, merged, accelerator=None, records=None, val_records=None):
    """Run B: the stage-1 trainer on the merged model; returns the trainer (its modules are the GP+ modules)."""
    from .trainer import Stage1Trainer

    merged.model.requires_grad_(False)
    trainer = Stage1Trainer(train_cfg, accelerator=accelerator, model=merged.model, processor=merged.processor,
                            records=records, val_records=val_records)
    trainer.train()
    return trainer


def save_artefacts(output_dir, adapter_dir, gp_config, glimpse, vip) -> tuple[Path, Path]:
    """GP+ artefacts in our format (final/) and in the reference's layout (final_reference/)."""
    from ..checkpoint import export_reference, save_modules
    from .rl_lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_reference_adapter

    output_dir = Path(output_dir)
    ours, ref = output_dir / "final", output_dir / "final_reference"
    (ours / "adapter").mkdir(parents=True, exist_ok=True)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        shutil.copyfile(Path(adapter_dir) / name, ours / "adapter" / name)
    save_modules(ours / "glimpse", gp_config, glimpse, vip)
    export_reference(ref, gp_config, glimpse, vip)
    export_reference_adapter(ours / "adapter", ref)
    return ours, ref


def train_plus(config: dict, accelerator=None, gp=None, records=None, val_records=None, reward_fn=None) -> dict:
    """Both runs and the artefacts. ``gp``/``records``/``reward_fn``: in-memory inputs (tests, notebooks)."""
    from .rl_trainer import RLConfig
    from .trainer import TrainConfig

    out = Path(config["output_dir"])
    rl_cfg = RLConfig.from_dict({**config.get("run_a", {}), "output_dir": str(out / "run_a")})
    b = dict(config.get("run_b", {}))
    if accelerator is None:  # one Accelerator for both runs (its process state is global)
        from accelerate import Accelerator

        accelerator = Accelerator(mixed_precision=b.get("mixed_precision", "no"), cpu=not torch.cuda.is_available())
    merged = run_a(rl_cfg, accelerator, gp, records, reward_fn)
    b.setdefault("glimpse", {})
    k = rl_cfg.prune_layer or (merged.config.prune_layer if merged.config else None)
    if k is not None:  # the GP+ modules cut where Run A's rollouts cut
        b["glimpse"] = {**b["glimpse"], "prune_layer": b["glimpse"].get("prune_layer", k)}
    b["output_dir"] = str(out / "run_b")
    b.setdefault("model", rl_cfg.model)  # only recorded: the merged model is passed in
    train_cfg = TrainConfig(**{kk: v for kk, v in b.items() if not kk.startswith("_")})
    trainer = run_b(train_cfg, merged, accelerator, records, val_records)
    is_main = trainer.acc.is_main_process
    paths = {}
    if is_main:
        ours, ref = save_artefacts(out, out / "run_a" / "final" / "adapter", trainer.gp_config,
                                   trainer.module.glimpse, trainer.module.vip)
        paths = {"final": str(ours), "final_reference": str(ref)}
        print(f"[plus] GP+ artefacts: {ours} (ours), {ref} (reference layout)", flush=True)
    trainer.acc.wait_for_everyone()
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="GP+ config (JSON), see configs/plus/")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted keys)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config = load_config(args.config, args.overrides)
    if "output_dir" not in config:
        raise ValueError("the GP+ config needs an output_dir")
    train_plus(config)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glimpseprune train-plus", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
