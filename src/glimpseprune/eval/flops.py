"""The FLOPs model's former address, kept so existing ``glimpseprune.eval.flops`` imports keep working.

The model is a library component and lives in :mod:`glimpseprune.flops`; each baseline's scoring FLOPs live in its
own file in ``methods/`` and are looked up by :func:`glimpseprune.methods.method_scoring_flops`; the retention
helpers the FLOPs reports print beside them live in :mod:`glimpseprune.budget`. This module only re-exports them.
"""

from ..budget import kept_ratio_for_layer_averaged, layer_averaged_retention, layer_averaged_retention_schedule
from ..flops import (
    LMDims,
    ModelDims,
    VIPDims,
    VisionDims,
    baseline_prefill_flops,
    decode_flops,
    decoder_layer_flops,
    dims_from_hf_config,
    lm_head_flops,
    lm_linear_flops_per_token,
    prefill_flops,
    vip_flops,
    vision_flops,
)
from ..methods import method_scoring_flops
from ..methods.cdpruner import dpp_greedy_flops
from ..methods.divprune import maxmin_greedy_flops

__all__ = [
    "LMDims",
    "ModelDims",
    "VIPDims",
    "VisionDims",
    "baseline_prefill_flops",
    "decode_flops",
    "decoder_layer_flops",
    "dims_from_hf_config",
    "dpp_greedy_flops",
    "kept_ratio_for_layer_averaged",
    "layer_averaged_retention",
    "layer_averaged_retention_schedule",
    "lm_head_flops",
    "lm_linear_flops_per_token",
    "maxmin_greedy_flops",
    "method_scoring_flops",
    "prefill_flops",
    "vip_flops",
    "vision_flops",
]
