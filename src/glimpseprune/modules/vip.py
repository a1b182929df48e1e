"""VIP, the Visual-token Importance Predictor (the reference's ``AttnFuserV1``, docs/method.md §6).

Input: the glimpse's attention row over the image tokens ([N, S·H]) and, per VIP layer, one ViT feature per visual
token. Each layer is a pre-norm block: conditional self-attention (the condition enters Q and K only, with 2-D RoPE
over the image's merged grid) then a gated-SiLU MLP. A linear head after the last block gives one keep logit per
token. Attention never crosses images. Images of equal token count are batched into one SDPA call with no mask,
so no N×N mask is ever built and the fused attention kernels stay usable.

A video is one block too, attended as a whole: frame f's token at (row r, col c) of an h × w frame takes the 2-D
position (f·h + r, c), i.e. the frames stacked top to bottom in time order into one (t·h) × w grid
(docs/method.md §10). A one-frame video is exactly an image; within a frame the geometry is the image's; no two
tokens of a video share a position; the same cell in consecutive frames is h rows apart.

The Q/K head width ((F+C)/H, 192 at the published size) is larger than the V head width (F/H, 64). SDPA's fused
kernels (flash on CPU and CUDA, memory-efficient on CUDA) need equal widths; with unequal ones SDPA falls back to its
math path, which materialises the H·N×N score and probability maps (gigabytes at the released 16,384-token limit).
:func:`attention_padded_value` zero-pads V to the Q/K width and drops the padded output columns: the attention
weights and the kept columns are mathematically unchanged, memory stays linear in N, and the weighted sum costs
(F+C)/F times its unpadded FLOPs (counted so in ``flops.py``).
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from .norm import RMSNorm


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class GridRoPE2D(nn.Module):
    """2-D rotary embedding: dimension pairs (j, j + d/2) rotate by the row angle for j < d/4, by the column angle
    for d/4 <= j < d/2 (docs/method.md §6.3)."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        half = head_dim // 2
        inv_freq = theta ** (-torch.arange(0, half, 2, dtype=torch.float32) / half)  # head_dim/4 frequencies
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, grid_h: int, grid_w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(grid_h, device=device, dtype=torch.float32).repeat_interleave(grid_w)
        cols = torch.arange(grid_w, device=device, dtype=torch.float32).repeat(grid_h)
        inv = self.inv_freq.to(device)
        angles = torch.cat([rows[:, None] * inv, cols[:, None] * inv], dim=-1)
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()


def attention_padded_value(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ/√d_qk)·v for [B, H, n, d_qk] q/k and [B, H, n, d_v] v with d_v <= d_qk, through a fused kernel.

    Zero columns in V only add zero columns to the output, and the scale stays 1/√d_qk (SDPA reads it from q), so
    slicing them off returns exactly the unpadded attention, without the N×N map the math fallback would build.
    """
    pad = q.shape[-1] - v.shape[-1]
    if pad < 0:
        raise ValueError(f"V head width {v.shape[-1]} exceeds the Q/K head width {q.shape[-1]}")
    if pad == 0:
        return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, F.pad(v, (0, pad)))[..., : v.shape[-1]]


class ConditionalAttention(nn.Module):
    def __init__(self, size: int, cond_size: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(size + cond_size, size + cond_size, bias=False)
        self.k_proj = nn.Linear(size + cond_size, size + cond_size, bias=False)
        self.v_proj = nn.Linear(size, size, bias=False)
        self.o_proj = nn.Linear(size, size, bias=False)

    def forward(self, x, cond, cos, sin):
        """x [B, n, F], cond [B, n, C]: B images of n tokens each, attended independently."""
        b, n, _ = x.shape
        xc = torch.cat([x, cond], dim=-1)
        q = self.q_proj(xc).view(b, n, self.heads, -1).transpose(1, 2)
        k = self.k_proj(xc).view(b, n, self.heads, -1).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.heads, -1).transpose(1, 2)
        q = (q.float() * cos + rotate_half(q.float()) * sin).to(v.dtype)
        k = (k.float() * cos + rotate_half(k.float()) * sin).to(v.dtype)
        out = attention_padded_value(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class GatedMLP(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.gate_proj = nn.Linear(size, 2 * size)
        self.up_proj = nn.Linear(size, 2 * size)
        self.down_proj = nn.Linear(2 * size, size)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# Block variants: the released Qwen / LLaVA modules; the authors' InternVL2.5 code (docs/method.md §17.5).
VIP_BLOCKS = ("rmsnorm_gated", "layernorm_plain")


class VIPBlock(nn.Module):
    def __init__(self, size: int, cond_size: int, heads: int, eps: float = 1e-6, variant: str = "rmsnorm_gated"):
        super().__init__()
        if variant not in VIP_BLOCKS:
            raise ValueError(f"unknown VIP block {variant!r}; expected one of {VIP_BLOCKS}")
        plain = variant == "layernorm_plain"
        # layernorm_plain: LayerNorm with bias (torch's default eps) and a two-matrix SiLU MLP of width 2F.
        self.norm1 = nn.LayerNorm(size) if plain else RMSNorm(size, eps)
        self.attn = ConditionalAttention(size, cond_size, heads)
        self.norm2 = nn.LayerNorm(size) if plain else RMSNorm(size, eps)
        self.mlp = nn.Sequential(nn.Linear(size, 2 * size), nn.SiLU(), nn.Linear(2 * size, size)) if plain \
            else GatedMLP(size)

    def forward(self, x, cond, cos, sin):
        x = x + self.attn(self.norm1(x), cond, cos, sin)
        return x + self.mlp(self.norm2(x))


class VIP(nn.Module):
    def __init__(
        self,
        row_width: int,
        vision_size: int,
        num_layers: int = 4,
        size: int = 256,
        cond_size: int = 512,
        heads: int = 4,
        rope_theta: float = 10000.0,
        block: str = "rmsnorm_gated",
    ):
        super().__init__()
        self.in_proj = nn.Linear(row_width, size)
        self.cond_projs = nn.ModuleList([nn.Linear(vision_size, cond_size) for _ in range(num_layers)])
        self.blocks = nn.ModuleList([VIPBlock(size, cond_size, heads, variant=block) for _ in range(num_layers)])
        self.out_proj = nn.Linear(size, 1)
        self.rope = GridRoPE2D((size + cond_size) // heads, rope_theta)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Stage-1 initialisation (docs/method.md §6.5): Xavier-uniform projections, zero biases, unit norm gains.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (RMSNorm, nn.LayerNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, rows: torch.Tensor, conds: list[torch.Tensor], grids: list[tuple[int, ...]]) -> torch.Tensor:
        """Keep logits [T] for T visual tokens of several images (and videos) laid end to end.

        rows: [T, S·H] glimpse attention rows; conds: one [T, D_v] tensor per VIP layer (deepest ViT block first);
        grids: the merged-token grid of every image, (h, w), or video, (t, h, w) with frames in raster order one
        after the other, in order, with sum(t·h·w) == T.
        """
        if len(conds) != len(self.blocks):
            raise ValueError(f"VIP has {len(self.blocks)} layers but got {len(conds)} condition tensors")
        # A video of t frames is positioned as the (t·h) × w grid of its frames stacked in time order.
        grids = [(g[0] * g[1], g[2]) if len(g) == 3 else tuple(g) for g in grids]
        sizes = [h * w for h, w in grids]
        if sum(sizes) != rows.shape[0]:
            raise ValueError(f"image grids {grids} cover {sum(sizes)} tokens, rows have {rows.shape[0]}")
        dtype = self.in_proj.weight.dtype
        x = self.in_proj(rows.to(dtype))
        cond_feats = [proj(c.to(dtype)) for proj, c in zip(self.cond_projs, conds)]

        # Group images by grid so each group is one dense [B, n, ·] attention call without a mask.
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, grid in enumerate(grids):
            groups[grid].append(i)
        starts = [0]
        for s in sizes:
            starts.append(starts[-1] + s)
        logits = rows.new_empty(rows.shape[0], dtype=torch.float32)
        for (h, w), members in groups.items():
            idx = torch.cat([torch.arange(starts[i], starts[i + 1], device=rows.device) for i in members])
            n = h * w
            xg = x[idx].view(len(members), n, -1)
            cos, sin = self.rope(h, w, rows.device)
            for block, cf in zip(self.blocks, cond_feats):
                xg = block(xg, cf[idx].view(len(members), n, -1), cos, sin)
            logits[idx] = self.out_proj(xg).reshape(-1).float()
        return logits
