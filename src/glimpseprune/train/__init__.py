"""Stage-1 training of the glimpse token + VIP with the base VLM frozen (docs/method.md §11).

- ``forward``: the training forward (glimpse before the first answer token, all L layers, VIP at layer K-1).
- ``losses``: Dice + 0.1·BCE on box masks, mask metrics.
- ``boxfree``: box-free soft-keep training (KL to the unpruned model + sparsity).
- ``collate``: records -> processor batch with labels and box masks.
- ``trainer``: the accelerate loop with exact resume; ``validate``: held-out pass through the inference engine.
- ``cli``: ``glimpseprune train --config FILE [key=value ...]``.

Heavy imports stay in the submodules.
"""
