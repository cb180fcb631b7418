"""Helpers about models: whether an object overrides a method of its base class (the one answer every part of
featherlight uses), and ``get_torchvision_model`` (which Lightning's example programs import).

``is_overridden(name, obj, parent)`` is Lightning's rule: the method ``obj`` has under ``name`` is not
``parent``'s own, looking through ``functools.wraps`` wrappers and ``functools.partial`` (so a decorator that
wraps the base method is not an override) and counting functions set on the instance.

Two questions are asked with it, and they differ only for wrappers of the base method set on an instance
(a recorder, a mock): "did the user change the behaviour?" (``is_overridden``: decides e.g. which dataloader
hook to use, or whether validation runs) and "can calling it do anything?" (``has_effect``: the hook
dispatcher skips a hook only when nobody could observe the call, so anything set on the instance is called).
"""
from __future__ import annotations

import functools
from typing import Any, Optional

from torch import nn


def _code(fn: Any) -> Any:
    fn = getattr(fn, "__wrapped__", fn)
    if isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(getattr(fn, "__func__", fn), "__code__", None)


def is_overridden(method_name: str, instance: Optional[object] = None, parent: Optional[type] = None) -> bool:
    """Whether ``instance.method_name`` is something other than ``parent``'s implementation.

    ``parent`` defaults to the featherlight base class ``instance`` derives from (LightningModule,
    LightningDataModule or Callback). Returns False for a missing instance or method.

    Raises:
        ValueError: without ``parent`` for an object of another type, or if ``parent`` has no such method.
    """
    if instance is None:
        return False
    if parent is None:
        parent = _default_parent(instance)
        if parent is None:
            raise ValueError(f"is_overridden({method_name!r}): pass `parent=` for a {type(instance).__name__}.")
    base = getattr(parent, method_name, None)
    if base is None:
        raise ValueError(f"{parent.__qualname__} has no method {method_name!r} to be overridden.")
    attr = getattr(instance, method_name, None)
    if attr is None:
        return False
    code = _code(attr)
    return code is None or code is not getattr(base, "__code__", _code(base))


def has_effect(method_name: str, instance: object, parent: type) -> bool:
    """Whether calling ``instance.method_name`` can do anything beyond ``parent``'s (no-op) implementation:
    :func:`is_overridden`, or anything set on the instance itself (wrappers and recorders are always called)."""
    if method_name in getattr(instance, "__dict__", {}):
        return True
    return getattr(type(instance), method_name, None) is not getattr(parent, method_name, None)


# the base classes a default ``parent`` is looked for among, by the module that defines them (no import needed)
_BASES = {("featherlight.core.module", "LightningModule"), ("featherlight.core.datamodule", "LightningDataModule"),
          ("featherlight.callbacks.callback", "Callback")}


def _default_parent(instance: object) -> Optional[type]:
    for cls in type(instance).__mro__:
        if (cls.__module__, cls.__qualname__) in _BASES:
            return cls
    return None


def get_torchvision_model(model_name: str, **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(model_name, **kwargs)`` (e.g. ``get_torchvision_model("resnet18",
    weights="DEFAULT")``).

    Raises:
        ModuleNotFoundError: naming the install command when torchvision is missing.
    """
    try:
        from torchvision import models
    except ImportError as err:
        raise ModuleNotFoundError(
            f"get_torchvision_model({model_name!r}) needs torchvision: pip install torchvision"
        ) from err
    return models.get_model(model_name, **kwargs)
