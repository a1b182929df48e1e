"""Pruning methods. GlimpsePrune and fixed masks live here; each baseline is one more file that registers itself."""

from .base import PruneMethod, SelectContext, Selection
from .fixed import FixedKeep
from .glimpse import GlimpsePruneMethod

_REGISTRY: dict = {}


def register_method(name: str):
    """Decorator for a factory ``f(model: GlimpsePrune, prune_layer=None, **options) -> PruneMethod``."""

    def wrap(factory):
        _REGISTRY[name] = factory
        return factory

    return wrap


def get_method(name: str, model, **options) -> PruneMethod:
    if name not in _REGISTRY:
        raise ValueError(f"unknown pruning method {name!r}; available: {['glimpse', 'none', *sorted(_REGISTRY)]}")
    return _REGISTRY[name](model, **options)


def method_names() -> list[str]:
    """The registered baselines' names, sorted (``glimpse`` and ``none`` are built in)."""
    return sorted(_REGISTRY)


__all__ = ["PruneMethod", "SelectContext", "Selection", "FixedKeep", "GlimpsePruneMethod", "register_method", "get_method", "method_names"]



def _load_method_modules() -> None:
    """Import every module of this package: each baseline file registers itself, so a new baseline is one file."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_load_method_modules()
