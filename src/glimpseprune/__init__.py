"""GlimpsePrune: dynamic, question-aware visual-token pruning for vision-language models.

The top-level names load lazily, so light sub-packages (``glimpseprune.data``, ``glimpseprune.eval.scorers``) do not
pay for importing torch and transformers.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "GlimpsePrune": "model",
    "GenerateOutput": "model",
    "GlimpsePruneConfig": "config",
    "KeepPolicy": "policy",
    "PruneState": "prune_state",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'glimpseprune' has no attribute {name!r}")
