"""Box-free stage-1 training: no box supervision, the VIP learns what the answer needs.

A differentiable soft keep replaces the hard cut: with p = sigmoid(keep logits), every layer >= K adds log p to
the attention logits of each visual key (an explicit 4-D float mask; p = 1 is "kept", p -> 0 "dropped").

How the keep budget is enforced (``BoxFreeConfig.budget``):

- ``"penalty"`` (default): keep logits = VIP logits, and

      L = kl_weight · KL(unpruned || soft-pruned) over the answer tokens
        + sparsity_weight · mean over samples of (mean p - target_keep)²

  The optimiser may trade sparsity for KL, so the mean keep wanders around ``target_keep``.
- ``"exact"``: per sample, keep logits = VIP logits + b, with the scalar b solved (bisection, no gradient) so that
  the sample's mean p equals ``target_keep``. The budget then holds by construction and L = kl_weight · KL: all the
  VIP can still change is *which* tokens carry the budget. The shift's dependence on the logits is put back into
  the gradient (implicit function theorem), so a uniform rise of all logits — which the shift cancels — gets no
  gradient.

The teacher is the frozen base model on the same prompt + answer with no glimpse and no pruning (no gradient).
The student isolates the glimpse (only the glimpse attends to itself) and keeps the answer's own positions, so
with p ≡ 1 it computes exactly the teacher's logits — what inference does once the glimpse is removed at K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .forward import TrainForward, reference_answer_logits, training_forward

BUDGETS = ("penalty", "exact")
# Bisection halvings for the budget shift. The bracket starts at the sample's logit range w and d(mean p)/db <= 1/4,
# so the mean is off by at most w/4 · 2^-50 (float64), far below what a float32 sigmoid resolves.
SHIFT_HALVINGS = 50


@dataclass
class BoxFreeConfig:
    target_keep: float = 0.3
    sparsity_weight: float = 1.0  # penalty budget only
    kl_weight: float = 1.0
    min_log_keep: float = -30.0  # floor of log p, keeps the bias finite in bf16
    budget: str = "penalty"  # "penalty": (mean p - target_keep)² in the loss; "exact": mean p pinned per sample

    def __post_init__(self):
        if self.budget not in BUDGETS:
            raise ValueError(f"boxfree.budget must be one of {BUDGETS}, got {self.budget!r}")
        t = self.target_keep
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0.0 <= t <= 1.0:
            raise ValueError(f"boxfree.target_keep must be a keep fraction in [0, 1], got {t!r}")
        if self.budget == "exact" and not 0.0 < t < 1.0:
            # 0 and 1 have no finite shift: every logit would have to go to -inf / +inf.
            raise ValueError(f"boxfree.target_keep must be in (0, 1) with budget 'exact', got {t!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "BoxFreeConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown boxfree config keys: {sorted(unknown)} (known: {sorted(names)})")
        return cls(**data)


@torch.no_grad()
def budget_shift(logits: torch.Tensor, target_keep: float) -> torch.Tensor:
    """The scalar b (float64, 0-d) with mean(sigmoid(logits + b)) == target_keep, found by bisection.

    mean sigmoid(z + b) is strictly increasing in b, and b lies in [logit(t) - max z, logit(t) - min z]: at the low
    end every token has p <= t, at the high end p >= t. A fixed number of halvings (no data-dependent stop) keeps
    the loop free of device syncs.
    """
    if not 0.0 < target_keep < 1.0:
        raise ValueError(f"target_keep must be in (0, 1), got {target_keep!r}")
    if logits.numel() == 0:
        raise ValueError("budget_shift needs at least one logit")
    z = logits.detach().double().flatten()
    target_logit = math.log(target_keep) - math.log1p(-target_keep)
    low, high = target_logit - z.max(), target_logit - z.min()
    for _ in range(SHIFT_HALVINGS):
        mid = (low + high) / 2
        below = torch.sigmoid(z + mid).mean() < target_keep
        low, high = torch.where(below, mid, low), torch.where(below, high, mid)
    return (low + high) / 2


def exact_budget_logits(logits: torch.Tensor, target_keep: float) -> torch.Tensor:
    """float32 ``logits + b`` with b = ``budget_shift``: mean sigmoid == target_keep, differentiable in the logits.

    b is solved without autograd, but it is a function of the logits: db/dz_i = -σ'_i / Σ_j σ'_j (implicit function
    theorem on mean σ(z + b) = t). Adding a zero-valued term with that gradient keeps the gradient on the budget
    surface; without it the KL would keep pushing every logit up (more keep always helps) and the shift would keep
    cancelling it, letting the raw logits drift without bound.
    """
    z = logits.float()
    shifted = z + budget_shift(z, target_keep).float()
    p = torch.sigmoid(shifted.detach())
    slope = p * (1 - p)
    shift_grad = -(slope * (z - z.detach())).sum() / slope.sum().clamp_min(1e-12)  # value 0, gradient db/dz
    return shifted + shift_grad


class SoftKeep:
    """``keep_bias_fn`` for ``training_forward``: log p on every visual key, p = sigmoid(keep logits).

    Remembers the per-sample keep logits it used (``keep_logits``) so the loss and the logs see the same p.
    """

    def __init__(self, cfg: BoxFreeConfig):
        self.cfg = cfg
        self.keep_logits: list[torch.Tensor] = []

    def __call__(self, vip_logits: torch.Tensor, tokens: list[int], layout) -> torch.Tensor:
        bias = torch.zeros(layout.visual_mask.shape, dtype=torch.float32, device=layout.visual_mask.device)
        if vip_logits is None or vip_logits.numel() == 0:
            self.keep_logits = []
            return bias
        per_sample = list(vip_logits.float().split(tokens))
        if self.cfg.budget == "exact":
            per_sample = [exact_budget_logits(z, self.cfg.target_keep) if z.numel() else z for z in per_sample]
        self.keep_logits = per_sample
        logp = F.logsigmoid(torch.cat(per_sample)).clamp(min=self.cfg.min_log_keep)
        return bias.masked_scatter(layout.visual_mask, logp)


def boxfree_losses(
    adapter, batch, labels, glimpse, vip, prune_layer: int, attention_logits: bool, cfg: BoxFreeConfig
) -> tuple[dict[str, torch.Tensor], TrainForward]:
    teacher = reference_answer_logits(adapter, batch, labels)
    soft_keep = SoftKeep(cfg)
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
        keep_bias_fn=soft_keep,
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
    keep_logits = soft_keep.keep_logits or out.per_sample()  # the VIP found no visual token: empty per sample
    means = [torch.sigmoid(z).mean() for z in keep_logits if z.numel()]
    sparsity = torch.stack([(m - cfg.target_keep) ** 2 for m in means]).mean() if means else kl * 0.0
    total = cfg.kl_weight * kl
    if cfg.budget == "penalty":  # "exact": the budget already holds, sparsity is ~0 and only logged
        total = total + cfg.sparsity_weight * sparsity
    # "logits" (for the logged keep ratio) are the keep logits the soft mask used: with the exact budget the raw VIP
    # logits carry an arbitrary offset, so thresholding them would say nothing.
    return {"loss": total, "kl": kl.detach(), "sparsity": sparsity.detach(),
            "mean_p": torch.stack(means).mean().detach() if means else kl.detach() * 0,
            "logits": [z.detach() for z in keep_logits]}, out
