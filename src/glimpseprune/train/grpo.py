"""The GRPO objective (method.md §12.1): group-relative advantages, a clipped ratio, a k3 KL to the frozen base.

For one prompt, G sampled completions with rewards R_1..R_G get

    A_i = (R_i - mean(R)) / (std(R) + eps)           std: the unbiased sample std of the group (torch's default)

and every completion token t contributes

    ratio = exp(log pi(t) - log pi_old(t))           pi_old: the policy that sampled the rollout
    policy = -min(ratio * A, clip(ratio, 1 - e, 1 + e) * A)
    kl     = exp(ref - log pi) - (ref - log pi) - 1   k3 estimator of KL(pi || ref), >= 0
    loss_t = policy + beta * kl

averaged over the tokens of each completion, then over completions (the published reduction). With one update per
rollout batch, ratio == 1 at the update and this is the published single-iteration objective
(-exp(log pi - sg(log pi)) * A); with several updates per batch the clip bounds the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """[N] rewards laid out group after group (G consecutive rows per prompt) -> [N] advantages.

    ``valid`` (bool [N]): completions that could be scored. Mean and std use only those; the others, and every row
    of a group with fewer than two scored completions, get advantage 0.
    """
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if group_size < 2:
        raise ValueError("group-relative advantages need at least 2 completions per prompt")
    r = rewards.float().view(-1, group_size)
    if valid is None:
        return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)).view(-1)
    v = valid.view(-1, group_size).float()
    n = v.sum(1, keepdim=True)
    r = torch.where(v > 0, r, torch.zeros_like(r))
    mean = r.sum(1, keepdim=True) / n.clamp(min=1)
    var = (((r - mean) ** 2) * v).sum(1, keepdim=True) / (n - 1).clamp(min=1)
    adv = (r - mean) / (var.sqrt() + eps) * v
    return torch.where(n >= 2, adv, torch.zeros_like(adv)).view(-1)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || ref) from samples of pi: exp(d) - d - 1 with d = ref - log pi."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


@dataclass
class GRPOTerms:
    loss: torch.Tensor  # scalar
    policy: float
    kl: float  # mean per-token k3 KL (sequence mean, then batch mean)
    clipped: float  # share of completion tokens whose ratio was clipped
    ratio_mean: float


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.04,
) -> GRPOTerms:
    """All tensors [N, T] except ``advantages`` [N]; ``mask`` 1 on completion tokens. Rows with an all-zero mask
    (e.g. a reward that failed and was excluded) contribute nothing."""
    mask = mask.float()
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None].to(logprobs.dtype)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
    per_token = -torch.minimum(unclipped, clipped)
    kl = k3_kl(logprobs, ref_logprobs) if ref_logprobs is not None else torch.zeros_like(logprobs)
    if beta:
        per_token = per_token + beta * kl
    lengths = mask.sum(1)
    rows = lengths > 0
    n_rows = max(int(rows.sum()), 1)

    def seq_mean(x):
        return ((x * mask).sum(1) / lengths.clamp(min=1))[rows].sum() / n_rows

    loss = seq_mean(per_token)
    with torch.no_grad():
        was_clipped = ((unclipped - clipped).abs() > 0).float()
        n_tok = mask.sum().clamp(min=1)
        return GRPOTerms(
            loss=loss,
            policy=float(seq_mean(-torch.minimum(unclipped, clipped))),
            kl=float(seq_mean(kl)),
            clipped=float((was_clipped * mask).sum() / n_tok),
            ratio_mean=float((ratio * mask).sum() / n_tok),
        )
