"""Build a callback on the fly from plain functions."""
from __future__ import annotations

from typing import Any, Callable, Optional

from featherlight.callbacks.callback import Callback

_NOT_HOOKS = {"state_key", "state_dict", "load_state_dict", "log", "log_dict"}
_HOOKS = frozenset(
    name for name, value in vars(Callback).items()
    if callable(value) and not name.startswith("_") and name not in _NOT_HOOKS
)


class LambdaCallback(Callback):
    """A callback whose hooks are the functions passed by hook name.

    Each function receives the same arguments as the :class:`~featherlight.callbacks.Callback` hook
    (without ``self``), e.g. ``on_train_epoch_end(trainer, pl_module)``. Hooks left out (or ``None``)
    are not called at all.

    Raises:
        TypeError: for a name that is not a Callback hook, or a value that is not callable.

    Example::

        LambdaCallback(on_train_epoch_end=lambda trainer, pl_module: print(trainer.current_epoch))
    """

    def __init__(self, **hooks: Optional[Callable[..., Any]]) -> None:
        unknown = sorted(set(hooks) - _HOOKS)
        if unknown:
            raise TypeError(
                f"LambdaCallback got unknown hook name(s) {unknown}. Supported hooks: {', '.join(sorted(_HOOKS))}."
            )
        for name, fn in hooks.items():
            if fn is None:
                continue
            if not callable(fn):
                raise TypeError(f"LambdaCallback({name}=...) expects a callable, got {type(fn).__name__}.")
            # an instance attribute: the trainer sees the hook as overridden and calls it with its arguments
            setattr(self, name, fn)
