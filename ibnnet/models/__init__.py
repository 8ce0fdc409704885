"""Models: one configurable ResNet family and the official DenseNet-IBN, registered in timm on import."""
from .densenet import DenseNetIBN
from .resnet import IBN_VARIANTS, ResNet, canonical_ibn
from .weights import (
    WeightsError,
    checkpoint_filter_fn,
    load_weights,
    read_checkpoint,
    verify_hash,
)
from .zoo import (
    ARCHS,
    MODELS,
    NOT_REGISTERED,
    RELEASES,
    TIMM_WEIGHTS,
    VARIANTS,
    Release,
    list_models,
    releases_for,
)

__all__ = [
    "ResNet", "DenseNetIBN", "IBN_VARIANTS", "canonical_ibn", "ARCHS", "VARIANTS", "MODELS", "RELEASES", "Release",
    "TIMM_WEIGHTS",
    "NOT_REGISTERED", "list_models", "releases_for", "create_model", "load_weights", "checkpoint_filter_fn", "read_checkpoint",
    "verify_hash", "WeightsError",
]


def create_model(name: str, pretrained: bool = False, **kwargs):
    """``timm.create_model`` restricted to this package's names, with a helpful error for typos."""
    import difflib

    import timm
    if name not in MODELS:
        close = difflib.get_close_matches(name, list(MODELS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `ibnnet weights list`"
        raise ValueError(f"unknown model {name!r}{hint}")
    if name in NOT_REGISTERED:
        raise RuntimeError(f"{name}: this timm ({timm.__version__}) has a model of that name, so ibnnet's is not "
                           f"registered; use the timm version in ibnnet's lock file")
    return timm.create_model(name, pretrained=pretrained, **kwargs)
