"""One file per model family; each registers itself with ``register_adapter``."""

from .base import (FamilyAdapter, ImageInfo, PreparedBatch, adapter_class, adapter_for, register_adapter,
                   supported_model_types)

__all__ = ["FamilyAdapter", "ImageInfo", "PreparedBatch", "adapter_class", "adapter_for", "register_adapter",
           "supported_model_types"]
