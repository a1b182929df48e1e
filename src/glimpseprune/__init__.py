"""GlimpsePrune: dynamic, question-aware visual-token pruning for vision-language models."""

from .config import GlimpsePruneConfig
from .model import GenerateOutput, GlimpsePrune
from .policy import KeepPolicy
from .prune_state import PruneState

__all__ = ["GlimpsePrune", "GlimpsePruneConfig", "GenerateOutput", "KeepPolicy", "PruneState"]
__version__ = "0.1.0"
