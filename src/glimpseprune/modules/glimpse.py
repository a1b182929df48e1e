"""The glimpse token: a learned embedding appended after the prompt, re-injected before every listed layer.

u(l) = Dropout(Norm(P · E[i(l)])) is the glimpse's input embedding at layer 0 and an additive deep prompt
(h_l[g] += u(l)) before every other layer l in ``layers`` (docs/method.md §3.2).
"""

from __future__ import annotations

import torch
from torch import nn

from .norm import RMSNorm


class GlimpseToken(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        layers: list[int],
        length: int = 1,
        norm: str = "rmsnorm",
        eps: float = 1e-6,
        dropout: float = 0.0,
    ):
        super().__init__()
        if 0 not in layers:
            raise ValueError("the glimpse layers must include layer 0 (its input embedding)")
        self.layers = list(layers)
        self.length = length
        self.embeddings = nn.Parameter(torch.empty(len(layers), length, hidden_size))
        # One projection shared by all layers: it dominates the parameter count (D x D), as in the reference.
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.norm = RMSNorm(hidden_size, eps) if norm == "rmsnorm" else nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self._slot = {layer: i for i, layer in enumerate(self.layers)}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embeddings, std=0.02)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        nn.init.ones_(self.norm.weight)
        if getattr(self.norm, "bias", None) is not None:
            nn.init.zeros_(self.norm.bias)

    def vectors(self, up_to_layer: int, dtype: torch.dtype) -> dict[int, torch.Tensor]:
        """{layer: [length, D]} for every glimpse layer below ``up_to_layer``, computed in one batched projection."""
        chosen = [layer for layer in self.layers if layer < up_to_layer]
        slots = torch.tensor([self._slot[layer] for layer in chosen], device=self.embeddings.device)
        e = self.embeddings.index_select(0, slots)
        u = self.dropout(self.norm(self.proj(e.to(self.proj.weight.dtype))))
        return {layer: u[i].to(dtype) for i, layer in enumerate(chosen)}
