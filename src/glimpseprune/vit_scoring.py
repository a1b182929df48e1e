"""ViT attention scores for baselines that rank visual tokens by the vision tower's attention (VisionZip, VScan).

A family adapter DECLARES this capability by returning a ``VitScoring`` from ``vit_scoring()`` (None: the family's
ViT cannot be scored, and those baselines refuse it with a clear error). The declaration says which blocks exist,
which one is scored by default, which blocks use window attention, whether the score is a CLS query's attention
(CLIP) or the mean attention each patch receives (ViTs without CLS), and gives the function that computes the
scores from the block input captured during the normal ViT pass (``adapters.base.VitRequest``). The ViT is never
re-run and no attention map is materialised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class VitScoring:
    depth: int  # number of ViT blocks
    default_block: int  # the block scored by default (CLIP: the one LLaVA feeds its projector; else a late full block)
    windowed_blocks: tuple[int, ...]  # blocks with window attention (VScan's local scan); () when none
    cls_query: bool  # True: the score is a CLS token's attention (CLIP); False: mean attention received
    # (batch, block, max_elems) -> (score [T], key [T, D], window id [T] or None) per LLM visual token, raster order
    token_scores: Callable


def received_attention(q: torch.Tensor, k: torch.Tensor, cu_seqlens: torch.Tensor, scale: float,
                       max_elems: int = 2**22) -> torch.Tensor:
    """Mean attention each token receives, [n]: q, k [n, H, d] (post-RoPE); attention within cu_seqlens segments.

    Queries are processed in chunks so that at most ``max_elems`` logits (H × rows × segment length) exist at once.
    """
    n, heads, _ = q.shape
    out = torch.zeros(n, dtype=torch.float32, device=q.device)
    bounds = cu_seqlens.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        m = e - s
        if m == 0:
            continue
        keys = k[s:e].transpose(0, 1).float()  # [H, m, d]
        rows = max(1, max_elems // (heads * m))
        for r in range(s, e, rows):
            logits = torch.matmul(q[r:min(e, r + rows)].transpose(0, 1).float(), keys.transpose(1, 2)) * scale
            out[s:e] += torch.softmax(logits, dim=-1).sum((0, 1))
            del logits
        out[s:e] /= heads * m
    return out


def packed_block_scores(block, hidden: torch.Tensor, kwargs: dict, rotary: Callable, pool: Callable,
                        max_elems: int):
    """Scores of one packed-patch ViT block (fused ``attn.qkv``, ``norm1``, rotary ``position_embeddings``,
    attention within ``cu_seqlens`` segments) from its captured input: per LLM visual token (``pool`` maps patch
    rows to tokens), (received attention, pre-RoPE key, segment id)."""
    attn = block.attn
    n = hidden.shape[0]
    q, k, _ = attn.qkv(block.norm1(hidden)).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = kwargs["position_embeddings"]
    q_rot, k_rot = rotary(q, k, cos, sin)
    cu = kwargs["cu_seqlens"]
    patch = received_attention(q_rot, k_rot, cu, attn.scaling, max_elems)
    lengths = (cu[1:] - cu[:-1]).long()
    segment = torch.repeat_interleave(torch.arange(lengths.numel(), device=hidden.device), lengths).float()
    return pool(patch[:, None])[:, 0], pool(k.reshape(n, -1).float()), pool(segment[:, None])[:, 0].round().long()
