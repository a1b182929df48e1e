"""Budgets, the one home: kept-ratio caps, layer-averaged retention, cut schedules and the conversions between
them, token counts and top-k (docs/method.md §15.1). Used by the keep policy (policy.py), the baselines (methods/), the
prune state's retention report (prune_state.py) and the eval/FLOPs reports.

A baseline can be asked for

- a **kept ratio**: the fraction of the original visual tokens present after its LAST cut ("kept after K" for a
  single-stage method; ``max_keep_ratio`` from ``generate`` means the same), or
- a **layer-averaged retention**: the mean over all L decoder layers of the fraction of visual tokens present
  (FastV / PyramidDrop / VScan and the 11.1 / 22.2 / 33.3 % grid).

A cut schedule is a list of ``(layer, fraction)`` pairs, fractions of the ORIGINAL visual tokens, non-increasing:
layers before the first cut hold all of them; a cut at layer 0 prunes before the LLM. The converters here map
between the two axes for one-parameter families of schedules:

- single cut at K:                 retention = (K + (L - K)·r) / L                    -> :func:`kept_ratio_for_retention`
- S cuts, each keeps λ of what is present (PyramidDrop):  fractions λ, λ², …, λ^S    -> :func:`uniform_stage_ratio`
- a first cut r, later cuts with fixed relative ratios (VScan: vision r, then ×ρ)    -> :func:`first_stage_ratio`

Example: FastV at K = 2 on a 28-layer model for 11.1 % layer-averaged keeps (0.111·28 − 2)/26 ≈ 4.3 %.

Token counts: a group of n tokens at fraction f keeps ``floor(f·n)`` tokens (the same rule as GlimpsePrune's
``max_keep_ratio`` cap, so "same count" comparisons agree), raised to ``min_keep`` (default 1) and capped at n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

DEFAULT_RETENTION = 0.111  # the grid's lowest point (docs/method.md §15.1); every baseline's default budget


def given(value) -> bool:
    """``generate`` passes ``max_keep_ratio=...`` (Ellipsis) and ``None`` for 'not given'."""
    return value is not None and value is not Ellipsis


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Budget:
    """A token budget: a kept-ratio cap ``max_keep_ratio`` (the share kept after the last cut) or a layer-averaged
    ``retention``, never both, plus GlimpsePrune's keep-probability ``threshold``. ``None`` means "the default".

    The eval runner's units carry one as given on the command line (none set: the model's config default; a
    retention: baselines take it directly, GlimpsePrune gets the kept cap that reaches it after its layer K,
    :func:`kept_ratio_for_retention`). A baseline's resolved budget (:func:`resolve_common`) has exactly one of
    ``max_keep_ratio`` / ``retention`` set and no threshold. The field names enter the eval runner's run hash
    (``dataclasses.asdict``), so renaming one would orphan every saved evaluation.
    """

    max_keep_ratio: float | None = None
    threshold: float | None = None
    retention: float | None = None

    def __post_init__(self):
        if self.retention is not None and self.max_keep_ratio is not None:
            raise ValueError("a budget is a kept ratio (r=) or a layer-averaged retention (l=), not both")

    @property
    def tag(self) -> str:
        """Short label used in eval file names and tables: ``r0.1``, ``l0.111``, ``t0.3``, ``r0.1_t0.3``, ``default``."""
        parts = []
        if self.max_keep_ratio is not None:
            parts.append(f"r{self.max_keep_ratio:g}")
        if self.retention is not None:
            parts.append(f"l{self.retention:g}")
        if self.threshold is not None:
            parts.append(f"t{self.threshold:g}")
        return "_".join(parts) or "default"

    def kwargs(self) -> dict:
        """The keep-policy keyword overrides (``max_keep_ratio``, ``threshold``) that are set."""
        out = {}
        if self.max_keep_ratio is not None:
            out["max_keep_ratio"] = self.max_keep_ratio
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out


def parse_budget(text: str) -> Budget:
    """``"0.1"`` (a keep-ratio cap), ``"r=0.1"``, ``"t=0.3"``, ``"r=0.1,t=0.3"``, ``"l=0.111"`` (layer-averaged
    retention) or ``"default"``."""
    text = text.strip()
    if text in ("", "default"):
        return Budget()
    ratio = threshold = retention = None
    for part in text.split(","):
        key, _, value = part.partition("=")
        if not value:
            key, value = "r", key
        key = key.strip().lower()
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"bad budget {text!r}: {value!r} is not a number") from None
        if key in ("r", "ratio", "max_keep_ratio"):
            ratio = number
        elif key in ("t", "threshold"):
            threshold = number
        elif key in ("l", "retention"):
            retention = number
        else:
            raise ValueError(f"bad budget {text!r}: unknown key {key!r} (use r=<max keep ratio>, t=<threshold>, "
                             f"l=<layer-averaged retention>)")
    try:
        return Budget(ratio, threshold, retention)
    except ValueError as err:
        raise ValueError(f"bad budget {text!r}: {err}") from None


@dataclass(frozen=True)
class Common:
    """The options every baseline factory accepts besides its own knobs."""

    budget: Budget
    min_keep: int = 1
    per_image: bool = False


def resolve_common(
    method: str,
    ratio=None,
    retention=None,
    threshold=None,
    max_keep_ratio=...,
    min_keep=None,
    per_image=None,
) -> Common:
    """Validate the budget options of a baseline; reject what has no meaning for a fixed-budget method.

    ``ratio`` and ``max_keep_ratio`` are the same thing (``generate`` passes the latter); giving both with different
    values, or a ratio together with ``retention``, is an error. Nothing given -> layer-averaged ``DEFAULT_RETENTION``.
    """
    if given(threshold):
        raise ValueError(
            f"{method}: 'threshold' is GlimpsePrune's keep-probability cut and means nothing for a fixed-budget "
            "baseline; give ratio= / max_keep_ratio= (kept after the last cut) or retention= (layer-averaged)"
        )
    if given(ratio) and given(max_keep_ratio) and float(ratio) != float(max_keep_ratio):
        raise ValueError(f"{method}: ratio={ratio} and max_keep_ratio={max_keep_ratio} disagree; give one")
    if not given(ratio):
        ratio = max_keep_ratio if given(max_keep_ratio) else None
    if given(ratio) and given(retention):
        raise ValueError(f"{method}: give either a kept ratio or a layer-averaged retention, not both")
    if given(ratio):
        budget = Budget(max_keep_ratio=_check_fraction("ratio / max_keep_ratio", ratio))
    else:
        budget = Budget(retention=_check_fraction("retention", retention if given(retention) else DEFAULT_RETENTION))
    m = 1 if min_keep is None else min_keep
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
        raise ValueError(f"{method}: min_keep must be a non-negative integer, got {m!r}")
    return Common(budget, m, bool(per_image) if per_image is not None else False)


# ---- retention of schedules ------------------------------------------------------------------------------------


def layer_averaged_retention_schedule(stages: Sequence[tuple[int, float]], num_layers: int) -> float:
    """Mean over all layers of the fraction of the original visual tokens present.

    ``stages`` is a list of (layer, ratio): from 0-based layer ``layer`` on, until the next stage, ``ratio`` of the
    original visual tokens are present. Layers before the first stage hold all of them. A method pruning before the
    LLM is ``[(0, r)]``; GlimpsePrune is ``[(K, kept_ratio)]``; multi-stage methods (PyramidDrop, VScan) list several.
    """
    layers = [layer for layer, _ in stages]
    if any(not 0 <= layer <= num_layers for layer in layers) or any(a >= b for a, b in zip(layers, layers[1:])):
        raise ValueError(f"stage layers must be strictly increasing within [0, {num_layers}], got {list(stages)}")
    previous_layer, previous_ratio, covered = 0, 1.0, 0.0
    for layer, ratio in stages:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"stage ratios must be in [0, 1], got {ratio}")
        covered += (layer - previous_layer) * previous_ratio
        previous_layer, previous_ratio = layer, ratio
    covered += (num_layers - previous_layer) * previous_ratio
    return covered / num_layers


def layer_averaged_retention(kept_ratio: float, K: int, L: int) -> float:
    """GlimpsePrune's layer-averaged retention, (K + (L - K)·kept_ratio) / L: K layers see every visual token."""
    return layer_averaged_retention_schedule([(K, kept_ratio)], L)


def kept_ratio_for_layer_averaged(target: float, K: int, L: int) -> float:
    """The kept ratio after layer K that gives a layer-averaged retention of ``target`` (inverse of the above).

    Targets below K/L are unreachable: layers 0..K-1 always hold every visual token.
    """
    if not 0 < K < L:
        raise ValueError(f"need 0 < K < L to prune anything, got K={K}, L={L}")
    if target > 1.0:
        raise ValueError(f"a retention above 1 is impossible, got {target}")
    floor = K / L
    if target < floor:
        raise ValueError(
            f"layer-averaged retention {target:.4f} is unreachable with K={K} of L={L} full layers: "
            f"the first K layers keep every visual token, so the retention is at least K/L = {floor:.4f}"
        )
    return max(0.0, (target * L - K) / (L - K))


def schedule_retention(stages: Sequence[tuple[int, float]], num_layers: int) -> float:
    """Layer-averaged retention of a cut schedule [(layer, fraction of the original tokens present from then on)]."""
    return layer_averaged_retention_schedule(list(stages), num_layers)


def retention_for_kept_ratio(kept_ratio: float, cut_layer: int, num_layers: int) -> float:
    return schedule_retention([(cut_layer, kept_ratio)], num_layers)


def kept_ratio_for_retention(target: float, cut_layer: int, num_layers: int) -> float:
    """Single cut at ``cut_layer``: the kept ratio that gives layer-averaged ``target`` (0 -> target itself)."""
    _check_fraction("retention", target)
    K, L = cut_layer, num_layers
    if not 0 <= K < L:
        raise ValueError(f"cut layer {K} out of range for a {L}-layer model")
    if target * L < K - 1e-9:
        raise ValueError(
            f"layer-averaged retention {target:.4f} is unreachable with a cut at layer {K} of {L}: the first {K} "
            f"layers hold every visual token, so the retention is at least {K}/{L} = {K / L:.4f}; cut earlier or "
            "give a kept ratio instead"
        )
    return min(1.0, max(0.0, (target * L - K) / (L - K)))


def cumulative(relative: Sequence[float]) -> list[float]:
    """Relative per-stage ratios (each of what is present) -> fractions of the original tokens."""
    out, f = [], 1.0
    for r in relative:
        f *= r
        out.append(f)
    return out


def uniform_stage_ratio(target: float, layers: Sequence[int], num_layers: int) -> float:
    """λ such that cutting to λ of the present tokens at every layer in ``layers`` gives retention ``target``."""
    _check_fraction("retention", target)
    layers = list(layers)

    def ret(lam: float) -> float:
        return schedule_retention(list(zip(layers, cumulative([lam] * len(layers)))), num_layers)

    if ret(0.0) > target + 1e-9:
        raise ValueError(
            f"layer-averaged retention {target:.4f} is unreachable with stages at layers {layers} of {num_layers}: "
            f"even dropping everything at the first stage leaves {ret(0.0):.4f}; use an earlier first stage"
        )
    lo, hi = 0.0, 1.0
    for _ in range(100):  # ret is continuous and increasing in λ
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ret(mid) < target else (lo, mid)
    return (lo + hi) / 2


def first_stage_ratio(target: float, layers: Sequence[int], later: Sequence[float], num_layers: int) -> float:
    """r such that fractions r, r·later[0], r·later[0]·later[1], … at ``layers`` give retention ``target``.

    The retention is ``(layers[0] + r·A) / L`` with A independent of r, so this is closed form.
    """
    _check_fraction("retention", target)
    layers = list(layers)
    if len(later) != len(layers) - 1:
        raise ValueError(f"{len(layers)} stage layers need {len(layers) - 1} later ratios, got {list(later)}")
    unit = schedule_retention(list(zip(layers, cumulative([1.0, *later]))), num_layers) * num_layers - layers[0]
    r = (target * num_layers - layers[0]) / unit
    if r < -1e-9:
        raise ValueError(
            f"layer-averaged retention {target:.4f} is unreachable with a first cut at layer {layers[0]} of "
            f"{num_layers}: at least {layers[0] / num_layers:.4f}"
        )
    if r > 1 + 1e-9:
        raise ValueError(f"layer-averaged retention {target:.4f} needs a first-stage ratio {r:.3f} > 1 with later "
                         f"ratios {list(later)}; raise the later ratios")
    return min(1.0, max(0.0, r))


def single_cut_fraction(budget: Budget, cut_layer: int, num_layers: int) -> float:
    """The fraction of visual tokens a single-cut method keeps at ``cut_layer`` for ``budget``."""
    if budget.max_keep_ratio is not None:
        return budget.max_keep_ratio
    return kept_ratio_for_retention(budget.retention, cut_layer, num_layers)


# ---- counts and top-k --------------------------------------------------------------------------------------------


def keep_count(n: int, fraction: float, min_keep: int = 1) -> int:
    return min(n, max(min(min_keep, n), math.floor(fraction * n)))


def group_sizes(images, per_image: bool) -> list[int]:
    """Token counts of the groups one sample's budget applies to: the whole sample, or every image."""
    sizes = [im.num_tokens for im in images]
    return sizes if per_image else [sum(sizes)]


def select_groups(sizes: list[int], pick, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a subset selector on every budget group of one sample, laid end to end.

    ``pick(start, end) -> (indices, scores)`` chooses within tokens ``start:end``; the result is one keep mask and
    one score vector over the whole sample.
    """
    masks, scores, start = [], [], 0
    for size in sizes:
        idx, s = pick(start, start + size)
        mask = torch.zeros(size, dtype=torch.bool, device=device)
        mask[idx] = True
        masks.append(mask)
        scores.append(s)
        start += size
    if not masks:
        return torch.zeros(0, dtype=torch.bool, device=device), torch.zeros(0, device=device)
    return torch.cat(masks), torch.cat(scores)


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k highest scores; ties go to the lowest index (stable), so batch and single runs agree."""
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k > 0:
        mask[torch.sort(scores, descending=True, stable=True).indices[:k]] = True
    return mask


def top_fraction(scores: torch.Tensor, sizes: list[int], fraction: float, min_keep: int,
                 present: torch.Tensor | None = None) -> torch.Tensor:
    """Keep ``keep_count(n_group, fraction)`` top-scoring tokens in every group (counts are of the ORIGINAL n).

    ``present``: tokens still in the sequence; absent ones are never chosen (their scores are ignored), and the
    count never exceeds what is present (a later stage can only drop).
    """
    out = []
    for s, p in zip(scores.split(sizes), (present.split(sizes) if present is not None else [None] * len(sizes))):
        k = keep_count(s.numel(), fraction, min_keep)
        s = s.float()
        if p is not None:
            k = min(k, int(p.sum()))
            s = s.masked_fill(~p, float("-inf"))
        out.append(top_k_mask(s, k))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=scores.device)
