"""GlimpsePrune+ Run A: GRPO on pruned rollouts with a PEFT LoRA, on ``accelerate`` (method.md §12.1).

One optimiser step, per process:

    P prompts (a seeded permutation per epoch, sharded by rank) x G completions each
    rollout: our pruned generate, sampling (rl_forward.rollout); kept set = the VIP's selection or the box masks
    rewards (rewards.py) -> group-relative advantages (grpo.py); unscored completions are left out
    ref log-probs: the same pruned scoring forward with the LoRA disabled (PEFT ``disable_adapter()``)
    num_iterations x: log-probs with gradients (rl_forward.completion_logprobs) -> clipped GRPO loss + beta k3 KL

Groups live inside one process, so the group size is independent of the number of processes (the reference needed
group size == GPU count). Gradients are averaged over processes by DDP around ``PolicyScorer``.

Why not TRL's ``GRPOTrainer``: it generates with ``model.generate`` (or vLLM) and rescores with ``model(**inputs)``;
hosting a cut at layer K with a per-rollout kept set means overriding its private generation and log-prob methods,
and its checkpoints go through ``transformers.Trainer`` (pickled optimiser / RNG state). See docs/training.md.

Checkpoints (``<output_dir>/checkpoint-<step>/``), nothing pickled:
``adapter/`` (PEFT adapter-only: adapter_config.json + adapter_model.safetensors) and ``trainer_state.json`` +
``trainer_state.safetensors`` (step, scheduler, optimiser state, config; ``state_io.py``, the stage-1 trainer's
format), the JSON written last: a folder without it is incomplete and ignored. Sampling uses a generator seeded from (seed, step, rank) and the data order
is a function of (seed, epoch), so a resumed run continues bit-identically without any RNG state.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from ..state_io import complete_checkpoints, load_state, prune_checkpoints, save_state, state_exists
from .grpo import group_advantages, grpo_loss
from .rewards import build_reward, score_completions
from .rl_forward import KEEP_SOURCES, Rollout, completion_logprobs, rollout, select_prompts

STATE_NAME = "trainer_state"  # .json (written last: marks the checkpoint complete) + .safetensors (tensors)


@dataclass
class RLConfig:
    model: str = "mini"  # "mini" (the embedded model), "tiny" (offline random), or a folder / hub id
    glimpse: str | None = None  # GlimpsePrune modules (needed for keep_source "vip"); "mini": the shipped ones
    dtype: str = "float32"
    data: str | list[str] | None = None
    data_root: str | None = None
    val_data: str | list[str] | None = None
    synthetic: dict | None = None  # {"n_train", "n_val", "seed", "size"}: glimpse-shapes generated into output_dir
    output_dir: str = "runs/plus"
    # "boxes": ground-truth box masks (the published choice; default until the two are measured against each other,
    # docs/training.md); "vip": the modules' own selection under their keep policy
    keep_source: str = "boxes"
    prune_layer: int | None = None  # default: the modules' K
    policy: dict = field(default_factory=dict)  # VIP keep-policy overrides: threshold, max_keep_ratio, min_keep
    group_size: int = 4  # completions per prompt (published: 4)
    prompts_per_step: int = 8  # per process (published: 8 per step over all devices)
    micro_batch: int = 32  # completions per backward pass (rounded to whole groups)
    max_new_tokens: int = 128
    temperature: float = 1.0
    num_iterations: int = 1  # updates per rollout batch (published: 1)
    clip_eps: float = 0.2
    beta: float = 0.04  # k3 KL weight (published 0.04)
    lr: float = 1e-4
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    epochs: int = 1
    max_steps: int | None = None
    max_grad_norm: float | None = 1.0
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.0  # published 0.05; 0 keeps the loss's log-probs equal to the rollout's (rl_lora.py)
    reward: str = "exact"  # exact | judge | auto | package.module:function (rewards.py)
    reward_judge: dict | None = None  # LLMJudge arguments: base_url, model, api_key_env, ...
    seed: int = 42
    min_pixels: int | None = None
    max_pixels: int | None = None
    log_every: int = 1
    save_every: int = 50
    keep_checkpoints: int | None = 2
    resume: str | None = "auto"
    progress: bool = True

    def __post_init__(self):
        if self.keep_source not in KEEP_SOURCES:
            raise ValueError(f"keep_source must be one of {KEEP_SOURCES}, got {self.keep_source!r}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (group-relative advantages), got {self.group_size}")
        for name in ("prompts_per_step", "micro_batch", "max_new_tokens", "num_iterations", "lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.scheduler not in ("cosine", "linear", "constant"):
            raise ValueError(f"scheduler must be cosine, linear or constant, got {self.scheduler!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "RLConfig":
        data = {k: v for k, v in data.items() if not k.startswith("_")}
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown RL config keys: {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


class PolicyScorer(nn.Module):
    """The LoRA-wrapped model; ``forward`` scores a rollout's completions (so DDP sees every use of the LoRA)."""

    def __init__(self, peft_model, adapter):
        super().__init__()
        self.peft_model = peft_model
        self._adapter = {"adapter": adapter}  # plain holder: the adapter object is not a module

    def forward(self, r: Rollout) -> torch.Tensor:
        return completion_logprobs(self._adapter["adapter"], r)


def build_policy_model(cfg: RLConfig, device):
    """(GlimpsePrune wrapper, processor) for the config's base model and modules, base frozen."""
    from ..model import GlimpsePrune

    if cfg.model == "mini":
        from ..assets import MINI_DIR

        glimpse = MINI_DIR / "glimpse" if cfg.glimpse in (None, "mini") else cfg.glimpse
        gp = GlimpsePrune.from_pretrained(MINI_DIR / "base", glimpse, dtype=getattr(torch, cfg.dtype), device=device)
    elif cfg.model == "tiny":
        from ..data.scenes import all_texts
        from ..offline_models import tiny_qwen2_5_vl  # the explicit "tiny" option

        model, processor = tiny_qwen2_5_vl(corpus=all_texts())
        gp = GlimpsePrune(model.to(device), processor)
        if cfg.glimpse is not None:
            from ..checkpoint import load_modules

            config, g, v = load_modules(cfg.glimpse, gp.adapter.default_glimpse_config())
            gp = GlimpsePrune(gp.model, processor, config, g, v)
        else:
            gp = gp.with_new_modules(seed=cfg.seed, prune_layer=cfg.prune_layer or 2)
    else:
        gp = GlimpsePrune.from_pretrained(cfg.model, cfg.glimpse, dtype=getattr(torch, cfg.dtype), device=device)
    gp.model.requires_grad_(False)
    if gp.glimpse is not None:
        gp.glimpse.requires_grad_(False)
        gp.vip.requires_grad_(False)
    return gp


def find_checkpoint(output_dir: Path) -> Path | None:
    done = complete_checkpoints(output_dir, STATE_NAME)
    return done[-1] if done else None


class GRPOTrainer:
    def __init__(self, cfg: RLConfig, accelerator=None, gp=None, records=None, reward_fn=None):
        from accelerate import Accelerator

        from .collate import Collator
        from .rl_lora import add_lora
        from .trainer import load_data, make_scheduler

        self.cfg = cfg
        self.acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        self.output_dir = Path(cfg.output_dir)
        if self.acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.acc.wait_for_everyone()
        self.gp = gp if gp is not None else build_policy_model(cfg, self.acc.device)
        if cfg.keep_source == "vip" and self.gp.glimpse is None:
            raise ValueError("keep_source 'vip' needs GlimpsePrune modules (glimpse=...); or use keep_source 'boxes'")
        self.prune_layer = cfg.prune_layer or (self.gp.config.prune_layer if self.gp.config else None)
        if self.prune_layer is None:
            raise ValueError("no prune_layer: set it in the config (no GlimpsePrune modules to take it from)")
        self.adapter = self.gp.adapter
        self.peft_model = add_lora(self.gp.model, self.adapter, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout,
                                   seed=cfg.seed)
        self.peft_model.eval()  # no dropout anywhere: the loss's log-probs must be the rollout's
        self.scorer = PolicyScorer(self.peft_model, self.adapter)
        if records is None:
            records, _ = load_data(cfg, self.output_dir, self.acc.is_main_process, self.acc.wait_for_everyone)
        self.records = records
        self.collate = Collator(self.gp.processor, self.adapter.family, cfg.min_pixels, cfg.max_pixels,
                                with_answer=False)
        self.reward_fn = reward_fn or build_reward(cfg.reward, cfg.reward_judge, cache_dir=self.output_dir / "judge")
        world = self.acc.num_processes
        self.steps_per_epoch = (len(records) // world) // cfg.prompts_per_step
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(records)} records are too few for {world} processes x {cfg.prompts_per_step} "
                             "prompts per step")
        self.total_steps = cfg.max_steps or self.steps_per_epoch * cfg.epochs
        params = [p for p in self.peft_model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg, self.total_steps)
        self.ddp_scorer, self.optimizer = self.acc.prepare(self.scorer, self.optimizer)
        self.step = 0
        self.history: list[dict] = []

    # ---- pieces of one step -----------------------------------------------------------------------------------
    def method(self, batch: dict):
        from dataclasses import replace

        from ..methods import FixedKeep

        if self.cfg.keep_source == "boxes":
            return FixedKeep(batch["box_masks"], self.prune_layer)
        config = replace(self.gp.config, prune_layer=self.prune_layer)
        from ..methods import GlimpsePruneMethod

        return GlimpsePruneMethod(self.gp.glimpse, self.gp.vip, config, self.gp.policy(**self.cfg.policy))

    def generation_params(self):
        from ..engine import GenerationParams

        # only the end tokens come from the model's generation config: the sampling distribution is ours alone
        eos = GenerationParams.resolve(self.gp.model.generation_config).eos_token_id
        return GenerationParams.resolve(None, do_sample=True, temperature=self.cfg.temperature,
                                        max_new_tokens=self.cfg.max_new_tokens, eos_token_id=eos or None)

    def texts(self, r: Rollout) -> list[str]:
        tok = getattr(self.gp.processor, "tokenizer", self.gp.processor)
        return [tok.decode(row[mask > 0].tolist(), skip_special_tokens=True).strip()
                for row, mask in zip(r.completion.cpu(), r.completion_mask.cpu())]

    def prompts_for_step(self, step: int) -> list:
        from .trainer import epoch_order

        epoch, index = divmod(step, self.steps_per_epoch)
        order = epoch_order(len(self.records), self.cfg.seed, epoch, self.acc.process_index, self.acc.num_processes)
        p = self.cfg.prompts_per_step
        return [self.records[i] for i in order[index * p:(index + 1) * p]]

    def _chunks(self, n_prompts: int) -> list[list[int]]:
        """Prompt indices per backward pass: whole groups, about ``micro_batch`` completions each."""
        m = max(1, self.cfg.micro_batch // self.cfg.group_size)
        return [list(range(i, min(i + m, n_prompts))) for i in range(0, n_prompts, m)]

    def train_step(self) -> dict:
        cfg, acc = self.cfg, self.acc
        from .collate import model_inputs

        t0 = time.time()
        prompts = self.prompts_for_step(self.step)
        group = [rec for rec in prompts for _ in range(cfg.group_size)]
        batch = self.collate(prompts)
        gen = torch.Generator(device=acc.device).manual_seed(
            (cfg.seed * 1_000_003 + self.step * acc.num_processes + acc.process_index) % (2**63))
        r = rollout(self.adapter, model_inputs(batch, acc.device), self.method(batch), self.generation_params(), gen,
                    group_size=cfg.group_size)
        texts = self.texts(r)
        values = score_completions(self.reward_fn, group, texts)
        valid = torch.tensor([v is not None for v in values], device=acc.device)
        rewards = torch.tensor([0.0 if v is None else v for v in values], device=acc.device)
        advantages = group_advantages(rewards, cfg.group_size, valid=valid)
        mask = r.completion_mask * valid[:, None].float()
        n_rows = max(1, int((mask.sum(1) > 0).sum()))
        chunks = self._chunks(len(prompts))

        def rows_of(c):
            return [p * cfg.group_size + g for p in c for g in range(cfg.group_size)]

        with torch.no_grad(), self.peft_model.disable_adapter():
            ref = torch.zeros_like(r.logprobs)
            for c in chunks:
                ref[rows_of(c)] = completion_logprobs(self.adapter, select_prompts(r, c))
        terms_log = []
        for _ in range(cfg.num_iterations):
            for i, c in enumerate(chunks):
                idx = rows_of(c)
                sync = i == len(chunks) - 1
                with acc.no_sync(self.ddp_scorer) if not sync else contextlib.nullcontext():
                    logprobs = self.ddp_scorer(select_prompts(r, c))
                    terms = grpo_loss(logprobs, r.logprobs[idx], ref[idx], advantages[idx], mask[idx],
                                      cfg.clip_eps, cfg.beta)
                    # grpo_loss averages over the chunk's scored rows; weight it to a mean over the step's
                    acc.backward(terms.loss * (int((mask[idx].sum(1) > 0).sum()) / n_rows))
                terms_log.append(terms)
            if cfg.max_grad_norm:
                acc.clip_grad_norm_([p for p in self.peft_model.parameters() if p.requires_grad], cfg.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        lengths = r.completion_mask.sum(1)
        scored = [v for v in values if v is not None]
        n_terms = max(1, len(terms_log))
        return {
            "reward": sum(scored) / len(scored) if scored else float("nan"),
            "reward/failed": len(values) - len(scored),
            "kl": sum(t.kl for t in terms_log) / n_terms,
            "policy": sum(t.policy for t in terms_log) / n_terms,
            "clipped": sum(t.clipped for t in terms_log) / n_terms,
            "kept_ratio": sum(r.kept_ratios) / len(r.kept_ratios),
            "completion_tokens": float(lengths.mean()),
            "seconds": time.time() - t0,
        }

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def save(self, name: str | None = None) -> Path:
        from .rl_lora import save_adapter

        directory = self.output_dir / (name or f"checkpoint-{self.step}")
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            directory.mkdir(parents=True, exist_ok=True)
            save_adapter(self.peft_model, directory / "adapter")
            state = {"step": self.step, "scheduler": self.scheduler.state_dict(),
                     "optimizer": self._raw_optimizer().state_dict(), "world_size": self.acc.num_processes,
                     "config": self.cfg.to_dict()}
            save_state(state, directory / STATE_NAME)  # complete only once its JSON is renamed into place
            prune_checkpoints(self.output_dir, STATE_NAME, self.cfg.keep_checkpoints)
        self.acc.wait_for_everyone()
        return directory

    def load(self, directory: str | Path) -> None:
        from safetensors.torch import load_file

        from .rl_lora import ADAPTER_WEIGHTS, load_lora_state

        directory = Path(directory)
        if not state_exists(directory / STATE_NAME):
            raise FileNotFoundError(2, "no GP+ trainer state (trainer_state.json + .safetensors) in checkpoint",
                                    str(directory))
        state = load_state(directory / STATE_NAME)
        saved = load_file(str(directory / "adapter" / ADAPTER_WEIGHTS))
        # PEFT saves without the adapter name; the live parameters carry ".default"
        live = {n for n, p in self.peft_model.named_parameters() if p.requires_grad}
        mapped = {}
        for key, value in saved.items():
            name = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight",
                                                                                   ".lora_B.default.weight")
            mapped[name] = value
        if set(mapped) != live:
            raise ValueError(f"checkpoint {directory} does not match this model's LoRA (different r or targets?)")
        load_lora_state(self.peft_model, mapped)
        self._raw_optimizer().load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        if state.get("world_size", 1) != self.acc.num_processes and self.acc.is_main_process:
            print(f"[plus] warning: checkpoint written by {state.get('world_size')} processes, resuming on "
                  f"{self.acc.num_processes}: the data order changes", flush=True)

    def _raw_optimizer(self):
        return getattr(self.optimizer, "optimizer", self.optimizer)

    # ---- the loop ---------------------------------------------------------------------------------------------
    def train(self, stop_at: int | None = None) -> list[dict]:
        """Run to ``total_steps`` (or stop without a final save at step ``stop_at``: a simulated kill)."""
        cfg, acc = self.cfg, self.acc
        if cfg.resume:
            ckpt = find_checkpoint(self.output_dir) if cfg.resume == "auto" else Path(cfg.resume)
            if ckpt is not None:
                self.load(ckpt)
                if acc.is_main_process:
                    print(f"[plus] resumed from {ckpt} at step {self.step}", flush=True)
        bar = None
        if cfg.progress and acc.is_local_main_process:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc="GP+ run A (GRPO)", dynamic_ncols=True)
        window: list[dict] = []
        while self.step < self.total_steps:
            window.append(self.train_step())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{window[-1]['reward']:.3f}", kl=f"{window[-1]['kl']:.4f}")
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                self._log(window)
                window = []
            if self.step % cfg.save_every == 0 and self.step < self.total_steps:
                self.save()
            if stop_at is not None and self.step >= stop_at:
                if bar is not None:
                    bar.close()
                return self.history
        if bar is not None:
            bar.close()
        self.save()
        from .rl_lora import save_adapter

        if acc.is_main_process:
            save_adapter(self.peft_model, self.output_dir / "final" / "adapter")
        acc.wait_for_everyone()
        return self.history

    def _log(self, window: list[dict]) -> None:
        keys = sorted({k for w in window for k in w})

        def mean(k):
            xs = [w[k] for w in window if k in w and not math.isnan(w[k])]
            return sum(xs) / len(xs) if xs else float("nan")

        local = torch.tensor([mean(k) for k in keys], dtype=torch.float64, device=self.acc.device)
        values = self.acc.reduce(local, reduction="mean") if self.acc.num_processes > 1 else local
        record = {"step": self.step, "lr": self.scheduler.get_last_lr()[0]}
        record.update({k: round(float(v), 6) for k, v in zip(keys, values.tolist())})
        self.history.append(record)
        if self.acc.is_main_process:
            with open(self.output_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if not self.cfg.progress:
                print(f"[plus] {json.dumps(record)}", flush=True)
