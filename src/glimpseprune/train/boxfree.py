"""Box-free stage-1 training: no box supervision, the VIP learns what the answer needs.

A differentiable soft keep replaces the hard cut: with p = sigmoid(VIP logits), every layer >= K adds log p to
the attention logits of each visual key (an explicit 4-D float mask; p = 1 is "kept", p -> 0 "dropped"). The
loss is

    L = kl_weight · KL(unpruned || soft-pruned) over the answer tokens
      + sparsity_weight · mean over samples of (mean p - target_keep)²

The teacher is the frozen base model on the same prompt + answer with no glimpse and no pruning (no gradient).
The student isolates the glimpse (only the glimpse attends to itself) and keeps the answer's own positions, so
with p ≡ 1 it computes exactly the teacher's logits — what inference does once the glimpse is removed at K.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .forward import TrainForward, reference_answer_logits, training_forward


@dataclass
class BoxFreeConfig:
    target_keep: float = 0.3
    sparsity_weight: float = 1.0
    kl_weight: float = 1.0
    min_log_keep: float = -30.0  # floor of log p, keeps the bias finite in bf16


def keep_bias(min_log_keep: float):
    def fn(vip_logits: torch.Tensor, tokens: list[int], layout) -> torch.Tensor:
        bias = torch.zeros(layout.visual_mask.shape, dtype=torch.float32, device=layout.visual_mask.device)
        if vip_logits is None or vip_logits.numel() == 0:
            return bias
        logp = F.logsigmoid(vip_logits.float()).clamp(min=min_log_keep)
        return bias.masked_scatter(layout.visual_mask, logp)

    return fn


def boxfree_losses(
    adapter, batch, labels, glimpse, vip, prune_layer: int, attention_logits: bool, cfg: BoxFreeConfig
) -> tuple[dict[str, torch.Tensor], TrainForward]:
    teacher = reference_answer_logits(adapter, batch, labels)
    out = training_forward(
        adapter,
        batch,
        labels,
        glimpse,
        vip,
        prune_layer,
        attention_logits=attention_logits,
        compute_lm=False,
        return_answer_logits=True,
        isolate_glimpse=True,
        shift_answer=False,
        keep_bias_fn=keep_bias(cfg.min_log_keep),
    )
    student = out.answer_logits
    if student.shape != teacher.shape:
        raise RuntimeError(f"student answer logits {tuple(student.shape)} != teacher {tuple(teacher.shape)}")
    if student.shape[0]:
        kl = F.kl_div(
            F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True, reduction="sum"
        ) / student.shape[0]
    else:
        kl = student.sum() * 0.0
    means = [torch.sigmoid(z.float()).mean() for z in out.per_sample() if z.numel()]
    sparsity = torch.stack([(m - cfg.target_keep) ** 2 for m in means]).mean() if means else kl * 0.0
    total = cfg.kl_weight * kl + cfg.sparsity_weight * sparsity
    return {"loss": total, "kl": kl.detach(), "sparsity": sparsity.detach(),
            "mean_p": torch.stack(means).mean().detach() if means else kl.detach() * 0}, out
