"""What a hook's signature accepts, read once per run (never per call)."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional


def is_param_in_hook_signature(hook_fx: Callable, param: str, explicit: bool = False,
                               min_args: Optional[int] = None) -> bool:
    """Whether ``hook_fx`` takes ``param``: by name, through ``*args`` (unless ``explicit``), or because it has at
    least ``min_args`` positional parameters (``self`` not counted).

    A callable whose signature cannot be read is assumed to take it.
    """
    try:
        parameters = inspect.signature(hook_fx).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if param in (p.name for p in positional):
        return True
    if not explicit and any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return True
    return min_args is not None and len(positional) >= min_args


def drop_batch_idx(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` called as ``(batch, batch_idx, *rest)`` for a ``*_step`` written without ``batch_idx``."""

    def without_batch_idx(batch: Any, batch_idx: int, *rest: Any) -> Any:
        return step(batch, *rest)

    return without_batch_idx
