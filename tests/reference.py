"""The Qwen2.5-VL tests' entry to the one slow reference (tests/adapters/reference.py): the pruning candidates are
the image placeholder tokens."""

from .adapters.reference import reference_generate as _family_reference


def reference_generate(model, inputs: dict, keep_visual, prune_layer: int, max_new_tokens: int, replace=None,
                       replace_stage: int = -1):
    """Greedy tokens and first-step logits for ONE sample (batch 1, no padding); see the family reference.

    Multi-stage: pass ``keep_visual`` as a list of (layer, keep mask) with nested keep sets; ``prune_layer`` is then
    ignored. ``replace``: hidden states [kept, D] that the kept visual tokens take on entering the cut layer of stage
    ``replace_stage`` (default the last).
    """
    prunable = inputs["input_ids"][0] == model.config.image_token_id
    return _family_reference(model, inputs, prunable, keep_visual, prune_layer, max_new_tokens, replace,
                             replace_stage)
