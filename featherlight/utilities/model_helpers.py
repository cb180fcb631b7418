"""Helpers about models that Lightning's example programs import (``is_overridden``, ``get_torchvision_model``)."""
import functools
from typing import Any, Optional

from torch import nn


def is_overridden(method_name: str, instance: Optional[object] = None, parent: Optional[type] = None) -> bool:
    """Whether ``instance`` (its class, or a function set on the instance) replaces ``parent``'s ``method_name``.

    Args:
        method_name: the method's name, e.g. ``"training_step"``.
        instance: the object; ``None`` gives ``False``.
        parent: the base class; default LightningModule or LightningDataModule, by the instance's type.

    Raises:
        ValueError: without ``parent`` for an object of another type, or if ``parent`` has no such method.
    """
    if instance is None:
        return False
    if parent is None:
        from featherlight.core.datamodule import LightningDataModule
        from featherlight.core.module import LightningModule

        parent = next((base for base in (LightningModule, LightningDataModule) if isinstance(instance, base)), None)
        if parent is None:
            raise ValueError(f"is_overridden({method_name!r}): pass `parent=` for a {type(instance).__name__}.")
    theirs = getattr(parent, method_name, None)
    if theirs is None:
        raise ValueError(f"{parent.__qualname__} has no method {method_name!r} to be overridden.")
    ours = getattr(instance, method_name, None)
    if ours is None:
        return False
    ours = getattr(ours, "__wrapped__", ours)  # functools.wraps / update_wrapper
    if isinstance(ours, functools.partial):
        ours = ours.func
    code = getattr(getattr(ours, "__func__", ours), "__code__", None)
    return code is None or code is not getattr(getattr(theirs, "__func__", theirs), "__code__", None)


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
