"""Stage-1 trainer on ``accelerate`` (docs/method.md §11): only the glimpse token and the VIP train.

- Works single-process and under ``accelerate launch`` (DDP over gloo on CPU, NCCL on GPU; DeepSpeed / FSDP
  configs are shipped in ``configs/accelerate/``). The trainable modules are wrapped in one ``nn.Module`` whose
  ``forward`` runs the whole training forward, so DDP sees every use of the trainable parameters; the frozen base
  model is held outside it and never wrapped.
- Data order is ours: a seeded permutation per epoch, sharded by rank (remainder dropped so ranks stay in step).
  That makes resume exact: a checkpoint at optimiser step s skips s·grad_accum micro-batches of the epoch.
- Checkpoints: ``<output_dir>/checkpoint-<step>/`` = ``glimpse_config.json`` + ``glimpse.safetensors`` (the
  inference format, via ``save_modules``) + ``trainer_state.{json,safetensors}`` (optimiser, scheduler, step) and
  ``rng_state_<rank>.{json,safetensors}`` (per-rank RNG), written by ``state_io`` without pickle: a checkpoint
  folder from elsewhere cannot run code on resume. Old pickled ``.pt`` states are refused, never unpickled.
  The final modules go to ``<output_dir>/final/``. ``resume="auto"`` picks the newest complete checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from ..adapters.base import condition_request
from ..checkpoint import save_modules
from ..config import GlimpsePruneConfig
from ..policy import KeepPolicy
from ..state_io import checkpoint_step, load_state, prune_checkpoints, refuse_pickle, save_state, state_exists
from .boxfree import BoxFreeConfig, boxfree_losses
from .collate import Collator, model_inputs
from .forward import training_forward
from .losses import loc_loss, mask_stats
from .validate import validate

STATE_NAME = "trainer_state.json"  # + trainer_state.safetensors; the JSON is written last (marks completion)
LEGACY_STATE_NAME = "trainer_state.pt"  # pickled by older versions: refused, never loaded


@dataclass
class TrainConfig:
    model: str = "tiny"  # "tiny" (offline tiny Qwen2.5-VL) or a local folder / hub id
    dtype: str = "bfloat16"  # dtype of the frozen base model
    attn_implementation: str | None = None  # e.g. flash_attention_2 (box mode only: box-free needs a 4-D mask)
    data: str | list[str] = "viscot/gqa_cot_train.jsonl:random:20000"
    data_root: str | None = "viscot"  # images at <data_root>/cot/<dataset>/<image>
    val_data: str | list[str] | None = None
    synthetic: dict | None = None  # {"n_train", "n_val", "seed", "size"}: generate glimpse-shapes into output_dir
    output_dir: str = "runs/stage1"
    mode: str = "box"  # "box" (Dice + BCE on box masks + LM loss) or "boxfree"
    lr: float = 1e-4
    weight_decay: float = 0.0
    scheduler: str = "cosine"  # cosine | linear | constant
    warmup_ratio: float = 0.1
    epochs: int = 1
    max_steps: int | None = None  # optimiser steps; overrides epochs when set
    batch_size: int = 1  # per device
    grad_accum: int = 8
    mixed_precision: str = "bf16"  # no | bf16 | fp16 (autocast for the trainable modules)
    seed: int = 42
    max_grad_norm: float | None = 1.0
    # GlimpsePrune module fields (anything of GlimpsePruneConfig may go in `glimpse`, e.g. prune_layer, vip_size)
    glimpse_dropout: float = 0.1
    glimpse_layers: list[int] | str | None = None  # None: 0..K-1 (ours); "all": every layer (the published recipe)
    glimpse: dict = field(default_factory=dict)
    # losses
    loc_weight: float = 1.0
    lm_weight: float = 1.0
    dice_weight: float = 1.0
    bce_weight: float = 0.1
    isolate_glimpse: bool = False  # docs/method.md §18 row 15 ablation: the answer does not attend to the glimpse
    boxfree: dict = field(default_factory=dict)  # BoxFreeConfig fields, e.g. {"budget": "exact", "target_keep": 0.3}
    # processor
    min_pixels: int | None = None
    max_pixels: int | None = 12845056
    # bookkeeping
    log_every: int = 10
    save_every: int = 500
    val_every: int = 0  # optimiser steps between held-out passes during training (0: off; needs val data)
    val_max_items: int | None = 64  # records per held-out pass during training (the first ones; None: all)
    keep_checkpoints: int | None = 2
    resume: str | None = "auto"  # "auto", a checkpoint folder, or None
    progress: bool = True
    num_workers: int = 0
    # accelerate experiment trackers for the logged metrics, e.g. "tensorboard" (event files under
    # <output_dir>/trackers/) or ["tensorboard", "wandb"]; None: log.jsonl only
    report_to: str | list[str] | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike, overrides: list[str] | None = None) -> "TrainConfig":
        from ..errors import ConfigError, read_json

        if str(path).endswith((".yaml", ".yml")):
            import yaml

            try:
                data = yaml.safe_load(Path(path).read_text())
            except yaml.YAMLError as err:
                raise ConfigError(f"training config is not valid YAML: {err}", path) from None
        else:
            data = read_json(path, "training config")
        if not isinstance(data, dict):
            raise ConfigError(f"training config must be a mapping, got {type(data).__name__}", path)
        return cls(**apply_overrides(data, overrides, {f.name for f in fields(cls)}, "training"))

    def __post_init__(self):
        if self.mode not in ("box", "boxfree"):
            raise ValueError(f"mode must be 'box' or 'boxfree', got {self.mode!r}")
        BoxFreeConfig.from_dict(self.boxfree)  # fail at load time, not at the first box-free step
        if isinstance(self.val_every, bool) or not isinstance(self.val_every, int) or self.val_every < 0:
            raise ValueError(f"val_every must be a non-negative integer (0: off), got {self.val_every!r}")
        if self.val_max_items is not None and (not isinstance(self.val_max_items, int) or self.val_max_items < 1):
            raise ValueError(f"val_max_items must be a positive integer or None, got {self.val_max_items!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def set_dotted(data: dict, key: str, value) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        data = data.setdefault(part, {})
    data[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str] | None, allowed, what: str, hint: str = "") -> dict:
    """A config mapping with its "_comment" keys dropped and ``key=value`` overrides applied (dotted keys, JSON
    values), refused if a top-level key is not in ``allowed`` — the one override syntax of every recipe's config."""
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        set_dotted(data, key.strip(), parse_value(value))
    unknown = set(data) - set(allowed)
    if unknown:
        raise ValueError(f"unknown {what} config keys: {sorted(unknown)}{hint}")
    return data


class Trainable(nn.Module):
    """The glimpse token + VIP; ``forward`` runs the training forward and returns the loss parts."""

    def __init__(self, glimpse, vip, adapter, gp_config: GlimpsePruneConfig, cfg: TrainConfig):
        super().__init__()
        self.glimpse, self.vip = glimpse, vip
        self._frozen = {"adapter": adapter}  # not a submodule: DDP must not wrap (or sync) the base model
        self.gp_config = gp_config
        self.cfg = cfg
        self.boxfree_cfg = BoxFreeConfig.from_dict(cfg.boxfree)

    @property
    def adapter(self):
        return self._frozen["adapter"]

    def forward(self, batch: dict) -> dict:
        adapter, c = self.adapter, self.gp_config
        device = next(self.parameters()).device
        with torch.no_grad():  # embeddings and ViT features: nothing upstream trains
            prepared = adapter.prepare(model_inputs(batch, device), condition_request(c))
        labels = batch["labels"].to(device)
        if self.cfg.mode == "boxfree":
            parts, _ = boxfree_losses(
                adapter, prepared, labels, self.glimpse, self.vip, c.prune_layer, c.attention_logits, self.boxfree_cfg
            )
            return parts
        out = training_forward(
            adapter, prepared, labels, self.glimpse, self.vip, c.prune_layer,
            attention_logits=c.attention_logits, compute_lm=self.cfg.lm_weight > 0,
            isolate_glimpse=self.cfg.isolate_glimpse,
        )
        logits = out.per_sample()
        targets = batch["box_masks"]  # per sample; prepare() may move columns inside a row, never samples
        loc = loc_loss(logits, targets, self.cfg.dice_weight, self.cfg.bce_weight)
        lm = out.lm_loss if out.lm_loss is not None else loc["loc"] * 0.0
        loss = self.cfg.loc_weight * loc["loc"] + self.cfg.lm_weight * lm
        return {"loss": loss, "loc": loc["loc"].detach(), "dice": loc["dice"], "bce": loc["bce"],
                "lm": lm.detach(), "logits": [z.detach() for z in logits]}


def build_model(cfg: TrainConfig, device):
    """(base model, processor) frozen, in eval mode."""
    if cfg.model == "tiny":
        from ..data.scenes import all_texts
        from ..offline_models import tiny_qwen2_5_vl  # the explicit "tiny" option

        model, processor = tiny_qwen2_5_vl(corpus=all_texts())
    else:
        from transformers import AutoConfig, AutoModelForImageTextToText

        from ..checkpoint import resolve_directory
        from ..processing import load_processor

        path = resolve_directory(cfg.model)
        kwargs = {"dtype": getattr(torch, cfg.dtype) if cfg.dtype != "auto" else "auto"}
        if cfg.attn_implementation and cfg.mode == "box" and not cfg.isolate_glimpse:
            kwargs["attn_implementation"] = cfg.attn_implementation
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        processor = load_processor(path, AutoConfig.from_pretrained(path).model_type)
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model, processor


def glimpse_config(adapter, cfg: TrainConfig) -> GlimpsePruneConfig:
    overrides = dict(cfg.glimpse)
    overrides.setdefault("glimpse_dropout", cfg.glimpse_dropout)
    if cfg.mode == "boxfree":
        boxfree = BoxFreeConfig.from_dict(cfg.boxfree)
        if boxfree.budget == "exact" and "threshold" not in overrides and "max_keep_ratio" not in overrides:
            # An exact-budget VIP learns a ranking: the training shift cancels any common offset of its logits, so
            # a probability threshold on them means nothing. Ship the trained budget as a top-k policy instead.
            overrides.update(threshold=0.0, max_keep_ratio=boxfree.target_keep)
    gp = adapter.default_glimpse_config(**{k: v for k, v in overrides.items() if k != "glimpse_layers"})
    layers = overrides.get("glimpse_layers", cfg.glimpse_layers)
    if layers == "all":
        layers = list(range(gp.num_layers))
    if layers is not None:
        from dataclasses import replace

        gp = replace(gp, glimpse_layers=[int(x) for x in layers])
    return gp


def load_data(cfg: TrainConfig, output_dir: Path, is_main: bool, wait) -> tuple[list, list]:
    from ..data.records import load_records

    data, val, root = cfg.data, cfg.val_data, cfg.data_root
    if cfg.synthetic:
        from ..data.scenes import generate_benchmark

        s = dict(cfg.synthetic)
        out = output_dir / "synthetic"
        if is_main and not (out / "info.json").is_file():
            generate_benchmark(out, s.get("n_train", 32), s.get("n_val", 8), s.get("n_test", 0),
                               seed=s.get("seed", 0), size=s.get("size", 448), overwrite=True)
        wait()
        data, val, root = str(out / "train.jsonl"), str(out / "val.jsonl"), str(out)
    records, report = load_records(data, root=root, seed=cfg.seed)
    if is_main:
        print(f"[train] data: {report.summary()}", flush=True)
    val_records = []
    if val:
        val_records, _ = load_records(val, root=root, seed=cfg.seed)
    return records, val_records


def make_scheduler(optimizer, cfg: TrainConfig, total: int):
    warm = int(math.ceil(cfg.warmup_ratio * total))

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.scheduler == "constant":
            return 1.0
        progress = (step - warm) / max(1, total - warm)
        if cfg.scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    per_rank = n // world
    return perm[rank * per_rank:(rank + 1) * per_rank]


def _tracker_config(cfg: TrainConfig) -> dict:
    """The run's config as trackers accept it (TensorBoard hparams: numbers, strings and booleans only)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in asdict(cfg).items()}


def find_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint; an old pickled one newer than it is refused rather than skipped (skipping it
    would silently restart the run)."""
    candidates = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) >= 0]
    done = [p for p in candidates if state_exists(p / STATE_NAME)]
    legacy = [p for p in candidates if (p / LEGACY_STATE_NAME).is_file() and p not in done]
    newest = max(done, key=checkpoint_step) if done else None
    if legacy:
        old = max(legacy, key=checkpoint_step)
        if newest is None or checkpoint_step(old) > checkpoint_step(newest):
            raise refuse_pickle(old / LEGACY_STATE_NAME, "trainer state")
    return newest


class Stage1Trainer:
    def __init__(self, cfg: TrainConfig, accelerator=None, model=None, processor=None, records=None, val_records=None):
        from accelerate import Accelerator

        self.cfg = cfg
        # Accumulation is done by hand (no_sync + loss / grad_accum), so the optimiser state at a step boundary
        # does not depend on accelerate's internal micro-step counter (which restarts at 0 after a resume).
        # cpu=True without CUDA: under `accelerate launch --multi_gpu` (torchrun) the processes then join a gloo
        # group (accelerate's own --cpu launcher starts a single process unless mpirun is used).
        self.acc = accelerator or Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available(),
                                              log_with=cfg.report_to or None,
                                              project_dir=str(Path(cfg.output_dir) / "trackers"))
        self.output_dir = Path(cfg.output_dir)
        if self.acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.acc.wait_for_everyone()
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        if model is None:
            model, processor = build_model(cfg, self.acc.device)
        self.model, self.processor = model, processor
        from ..adapters import adapter_for
        from ..checkpoint import build_modules

        self.adapter = adapter_for(model)
        self.gp_config = glimpse_config(self.adapter, cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            glimpse, vip = build_modules(self.gp_config)
        self.module = Trainable(glimpse, vip, self.adapter, self.gp_config, cfg).to(self.acc.device)
        if records is None:
            records, val_records = load_data(cfg, self.output_dir, self.acc.is_main_process, self.acc.wait_for_everyone)
        self.records, self.val_records = records, val_records or []
        self.collate = Collator(processor, self.adapter.family, cfg.min_pixels, cfg.max_pixels)
        world = self.acc.num_processes
        self.micro_per_epoch = (len(self.records) // world) // cfg.batch_size
        if self.micro_per_epoch == 0:
            raise ValueError(f"{len(self.records)} records are too few for {world} processes x batch {cfg.batch_size}")
        self.steps_per_epoch = max(1, self.micro_per_epoch // cfg.grad_accum)
        self.total_steps = cfg.max_steps or self.steps_per_epoch * cfg.epochs
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg, self.total_steps)
        self.ddp_module, self.optimizer = self.acc.prepare(self.module, self.optimizer)
        self.step = 0
        self.history: list[dict] = []

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def save(self, name: str | None = None) -> Path:
        directory = self.output_dir / (name or f"checkpoint-{self.step}")
        self.acc.wait_for_everyone()
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        if self.acc.is_main_process:
            directory.mkdir(parents=True, exist_ok=True)
            save_modules(directory, self.gp_config, self.module.glimpse, self.module.vip)
        self.acc.wait_for_everyone()
        save_state(rng, directory / f"rng_state_{self.acc.process_index}")
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            state = {
                "step": self.step,
                "optimizer": self._raw_optimizer().state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "config": self.cfg.to_dict(),
                "world_size": self.acc.num_processes,
            }
            save_state(state, directory / STATE_NAME)  # complete only once its JSON is renamed into place
            prune_checkpoints(self.output_dir, STATE_NAME, self.cfg.keep_checkpoints)
        self.acc.wait_for_everyone()
        return directory

    def load(self, directory: str | Path) -> None:
        from ..checkpoint import WEIGHTS_NAME, load_weights
        from ..checkpoint import load_state as load_modules_state

        directory = Path(directory)
        if not state_exists(directory / STATE_NAME):
            if (directory / LEGACY_STATE_NAME).is_file():
                raise refuse_pickle(directory / LEGACY_STATE_NAME, "trainer state")
            raise FileNotFoundError(2, "no trainer state (trainer_state.json + .safetensors) in checkpoint",
                                    str(directory))
        load_modules_state(self.module.glimpse, self.module.vip, load_weights(directory / WEIGHTS_NAME))
        state = load_state(directory / STATE_NAME)
        if state.get("world_size", 1) != self.acc.num_processes:
            print(f"[train] warning: checkpoint written by {state.get('world_size')} processes, resuming on "
                  f"{self.acc.num_processes}: the data order changes", flush=True)
        self._raw_optimizer().load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        rng_file = directory / f"rng_state_{self.acc.process_index}"
        if (directory / f"rng_state_{self.acc.process_index}.pt").is_file() and not state_exists(rng_file):
            raise refuse_pickle(directory / f"rng_state_{self.acc.process_index}.pt", "RNG state")
        if state_exists(rng_file):
            rng = load_state(rng_file)
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def _drop_logged_after(self, step: int) -> None:
        """Keep ``log.jsonl`` one record per step: the steps after the checkpoint are redone, so their records (and
        a line torn by the kill) go; the file is replaced atomically."""
        path = self.output_dir / "log.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)

    def _raw_optimizer(self):
        return getattr(self.optimizer, "optimizer", self.optimizer)

    # ---- the loop ---------------------------------------------------------------------------------------------
    def train(self, stop_at: int | None = None) -> list[dict]:
        """Run to ``total_steps`` (or stop, without a final save, at optimiser step ``stop_at``: a simulated kill)."""
        cfg, acc = self.cfg, self.acc
        if cfg.resume:
            ckpt = find_checkpoint(self.output_dir) if cfg.resume == "auto" else Path(cfg.resume)
            if ckpt is not None:
                self.load(ckpt)
                if acc.is_main_process:
                    self._drop_logged_after(self.step)
                    print(f"[train] resumed from {ckpt} at step {self.step}", flush=True)
        self.module.train()
        if cfg.report_to:
            acc.init_trackers("stage1", config=_tracker_config(cfg))
        if cfg.val_every and not self.val_records and acc.is_main_process:
            print("[train] warning: val_every is set but there are no validation records: no held-out passes",
                  flush=True)
        bar = None
        if cfg.progress and acc.is_local_main_process:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc="stage-1", dynamic_ncols=True)
        window: list[dict] = []
        start_time = time.time()
        while self.step < self.total_steps:
            epoch, done_in_epoch = divmod(self.step, self.steps_per_epoch)
            order = epoch_order(len(self.records), cfg.seed, epoch, acc.process_index, acc.num_processes)
            first = done_in_epoch * cfg.grad_accum
            for m in range(first, self.steps_per_epoch * cfg.grad_accum):
                chunk = order[m * cfg.batch_size:(m + 1) * cfg.batch_size]
                batch = self.collate([self.records[i] for i in chunk])
                sync = (m + 1) % cfg.grad_accum == 0
                with contextlib.nullcontext() if sync else acc.no_sync(self.ddp_module):
                    with acc.autocast():
                        parts = self.ddp_module(batch)
                    acc.backward(parts["loss"] / cfg.grad_accum)
                window.append(self._scalars(parts, batch))
                if not sync:
                    continue
                if cfg.max_grad_norm:
                    acc.clip_grad_norm_(self.module.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.scheduler.step()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{window[-1]['loss']:.3f}")
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    self._log(window, time.time() - start_time)
                    window = []
                # The final step is left to the caller's full held-out pass (cli.py writes validation.json).
                if cfg.val_every and self.step % cfg.val_every == 0 and self.step < self.total_steps:
                    self.validate_now()
                if self.step % cfg.save_every == 0 and self.step < self.total_steps:
                    self.save()
                if stop_at is not None and self.step >= stop_at:
                    if bar is not None:
                        bar.close()
                    return self.history
                if self.step >= self.total_steps:
                    break
        if bar is not None:
            bar.close()
        self.save()
        final = self.output_dir / "final"
        if acc.is_main_process:
            save_modules(final, self.gp_config, self.module.glimpse, self.module.vip)
            print(f"[train] saved {final}", flush=True)
        acc.wait_for_everyone()
        return self.history

    def validate_now(self) -> dict | None:
        """Held-out pass (``validate``) on the main process over the first ``val_max_items`` validation records,
        logged as a ``{"step", "val/..."}`` record in ``history`` and ``log.jsonl``; returns that record there.

        Training continues exactly as without it: the glimpse and VIP go back to their modes (``validate`` restores
        them), and the torch / CUDA / Python RNG states are restored, so dropout masks and a later resume do not
        depend on whether or how often validation ran. The other processes wait at a barrier meanwhile.
        """
        record = None
        if self.acc.is_main_process and self.val_records:
            records = self.val_records[:self.cfg.val_max_items]
            start = time.time()
            cuda_devices = [self.acc.device] if self.acc.device.type == "cuda" else []
            python_rng = random.getstate()
            with torch.random.fork_rng(devices=cuda_devices):
                report = validate(self.adapter, self.processor, self.gp_config, self.module.glimpse,
                                  self.module.vip, records, min_pixels=self.cfg.min_pixels,
                                  max_pixels=self.cfg.max_pixels)
            random.setstate(python_rng)
            record = {"step": self.step, "val/seconds": round(time.time() - start, 2)}
            record.update({f"val/{k}": round(v, 6) if isinstance(v, float) else v for k, v in report.items()})
            self.history.append(record)
            with open(self.output_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if not self.cfg.progress:
                print(f"[train] {json.dumps(record)}", flush=True)
            self._track(record)
        self.acc.wait_for_everyone()
        return record

    def _track(self, record: dict) -> None:
        """The numbers of a log.jsonl record to the accelerate trackers (``report_to``), at its optimiser step."""
        if self.cfg.report_to:
            self.acc.log({k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))
                          and not isinstance(v, bool)}, step=record["step"])

    def _scalars(self, parts: dict, batch: dict) -> dict:
        out = {k: float(v.detach()) for k, v in parts.items() if torch.is_tensor(v) and v.dim() == 0}
        targets = batch["box_masks"] if self.cfg.mode == "box" else None
        # Judge the masks the saved modules would produce: the config's own keep policy, per sample.
        c = self.gp_config
        policy = KeepPolicy(c.threshold, c.max_keep_ratio, c.min_keep)
        out.update(mask_stats(parts["logits"], targets, policy=policy))
        return out

    def _log(self, window: list[dict], seconds: float) -> None:
        keys = sorted({k for w in window for k in w})
        local = torch.tensor([sum(w.get(k, 0.0) for w in window) / max(1, len(window)) for k in keys],
                             device=self.acc.device, dtype=torch.float64)
        mean = self.acc.reduce(local, reduction="mean") if self.acc.num_processes > 1 else local
        record = {"step": self.step, "lr": self.scheduler.get_last_lr()[0], "seconds": round(seconds, 2)}
        record.update({k: round(float(v), 6) for k, v in zip(keys, mean.tolist())})
        self.history.append(record)
        if self.acc.is_main_process:
            with open(self.output_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if not self.cfg.progress:
                print(f"[train] {json.dumps(record)}", flush=True)
            self._track(record)
