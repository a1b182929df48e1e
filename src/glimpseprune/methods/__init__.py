"""Pruning methods. GlimpsePrune and fixed masks live here; each baseline is one more file that registers itself
(its factory and its scoring FLOPs)."""

from ..flops import no_scoring_flops
from .base import PruneMethod, SelectContext, Selection
from .fixed import FixedKeep
from .glimpse import GlimpsePruneMethod

_REGISTRY: dict = {}
# name -> scoring_flops(dims, image_token_counts, text_len, **params). ``none`` and ``glimpse`` are built in
# (GlimpsePrune's glimpse row and VIP are in flops.prefill_flops); ``resize`` is the comparison benchmark's anchor,
# which shrinks the image before the ViT: none of them scores tokens.
_SCORING_FLOPS: dict = {"none": no_scoring_flops, "glimpse": no_scoring_flops, "resize": no_scoring_flops}


def register_method(name: str, *, scoring_flops):
    """Decorator for a factory ``f(model: GlimpsePrune, prune_layer=None, **options) -> PruneMethod``.

    ``scoring_flops(dims, image_token_counts, text_len, **params) -> int`` counts what the method computes to decide
    what to keep, beyond the forward pass (``flops.no_scoring_flops`` when it scores nothing). It is required, so a
    new baseline cannot leave its own cost out of a FLOPs comparison; the method object's ``scoring_params`` gives
    the ``params`` for one sample.
    """
    if not callable(scoring_flops):
        raise TypeError(f"register_method({name!r}): scoring_flops must be a function, got {scoring_flops!r}")

    def wrap(factory):
        _REGISTRY[name] = factory
        _SCORING_FLOPS[name] = scoring_flops
        return factory

    return wrap


def method_scoring_flops(method: str, dims, image_token_counts, text_len: int, **params) -> int:
    """FLOPs one sample spends deciding what to keep, beyond the forward pass (what OUR implementations compute).

    ``dims``: :class:`glimpseprune.flops.ModelDims`; ``image_token_counts``: LLM visual tokens per image before
    pruning (N = their sum); ``text_len``: the sample's non-visual prompt tokens; ``params``: the method's own
    (``PruneMethod.scoring_params``). Same conventions as :mod:`glimpseprune.flops`: 2 FLOPs per multiply-accumulate,
    matrix products only (softmax, normalisation, RoPE, means, top-k / sorts and argmaxes are not counted). The
    formula of each method is in its own file (its ``scoring_flops``). A sample without visual tokens scores nothing.
    """
    counts = [int(c) for c in image_token_counts]
    if any(c < 0 for c in counts) or text_len < 0:
        raise ValueError(f"need non-negative counts and text_len, got {counts}, {text_len}")
    if method not in _SCORING_FLOPS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(sorted(_SCORING_FLOPS))}")
    if sum(counts) == 0:
        return 0
    return _SCORING_FLOPS[method](dims, counts, text_len, **params)


def get_method(name: str, model, **options) -> PruneMethod:
    if name not in _REGISTRY:
        raise ValueError(f"unknown pruning method {name!r}; available: {['glimpse', 'none', *sorted(_REGISTRY)]}")
    return _REGISTRY[name](model, **options)


def method_names() -> list[str]:
    """The registered baselines' names, sorted (``glimpse`` and ``none`` are built in)."""
    return sorted(_REGISTRY)


__all__ = ["PruneMethod", "SelectContext", "Selection", "FixedKeep", "GlimpsePruneMethod", "register_method", "get_method", "method_names",
           "method_scoring_flops"]



def _load_method_modules() -> None:
    """Import every module of this package: each baseline file registers itself, so a new baseline is one file."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_load_method_modules()
