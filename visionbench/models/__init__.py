"""Model registry: ``get_model(name, **kw)`` with explicit keyword arguments."""
from __future__ import annotations

from typing import Callable, Dict, List

from ..cli import UsageError

_REGISTRY: Dict[str, Callable] = {}


def register(name: str):
    def wrap(factory: Callable) -> Callable:
        _REGISTRY[name] = factory
        return factory
    return wrap


def model_names() -> List[str]:
    _load()
    return sorted(_REGISTRY)


def get_model(name: str, **kwargs):
    """Build a registered model: ``classes``, ``layout`` ('NCHW'/'NHWC'),
    ``init_bn0`` and (ResNets) nothing else; unknown names are errors."""
    _load()
    if name not in _REGISTRY:
        raise UsageError(f"unknown model {name!r} (choose from {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name](**kwargs)


def _load() -> None:
    from ..engines.mxnet import resnet, resnet9  # noqa: F401 - registers the Gluon models
