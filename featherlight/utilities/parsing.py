"""Attribute-style dicts and the frame inspection behind ``save_hyperparameters()``."""
from __future__ import annotations

import inspect
import pickle
import types
from typing import Any

_CO_VARARGS = inspect.CO_VARARGS
_CO_VARKEYWORDS = inspect.CO_VARKEYWORDS


class AttributeDict(dict):
    """A ``dict`` whose keys can also be read, set and deleted as attributes.

    >>> d = AttributeDict(lr=0.1)
    >>> d.batch_size = 32
    >>> d.lr, d["batch_size"]
    (0.1, 32)

    A missing key read as an attribute raises :class:`AttributeError` (not ``KeyError``), so ``hasattr``
    and ``getattr(d, key, default)`` work as usual. ``repr`` prints one aligned ``"key": value`` line per
    key, sorted by key.
    """

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(self._missing_message(key)) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        try:
            del self[key]
        except KeyError:
            raise AttributeError(self._missing_message(key)) from None

    def _missing_message(self, key: str) -> str:
        if key.startswith("__") and key.endswith("__"):
            # Probes by copy/pickle/inspect for optional protocol methods: keep these cheap and quiet.
            return f"'{type(self).__name__}' object has no attribute '{key}'"
        return (
            f"'{type(self).__name__}' object has no attribute or key '{key}'."
            f" Available keys: {sorted(map(str, self))}"
        )

    def __repr__(self) -> str:
        if not self:
            return ""
        keys = sorted(self, key=str)
        width = max(len(str(k)) for k in keys) + 3  # two quotes and the colon
        return "\n".join(f'{(chr(34) + str(k) + chr(34) + ":").ljust(width)} {self[k]}' for k in keys)

    def copy(self) -> AttributeDict:
        """A shallow copy that is still an :class:`AttributeDict`."""
        return type(self)(self)

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *(k for k in self if isinstance(k, str))]


class _NullWriter:
    """A file-like sink that discards bytes, so pickling for a check does not hold the pickle in memory."""

    def write(self, data: bytes) -> int:
        return len(data)


def is_picklable(obj: object) -> bool:
    """Whether ``pickle`` can serialise ``obj`` (the bytes are discarded as they are produced)."""
    try:
        pickle.Pickler(_NullWriter(), protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    except Exception:
        # Pickling failures surface as PicklingError, TypeError, AttributeError or whatever a
        # user's __reduce__ raises; any of them means "cannot be checkpointed".
        return False
    return True


def _init_owner(frame: types.FrameType) -> tuple[Any, type | None]:
    """If ``frame`` runs some class's ``__init__`` on an object, return ``(object, that class)``."""
    code = frame.f_code
    if code.co_name != "__init__" or code.co_argcount < 1:
        return None, None
    local_vars = frame.f_locals
    self_name = code.co_varnames[0]
    if self_name not in local_vars:
        return None, None
    obj = local_vars[self_name]
    cls = local_vars.get("__class__")
    if isinstance(cls, type) and isinstance(obj, cls):
        return obj, cls
    # No ``__class__`` cell (the __init__ does not use super()): find the class whose __init__ this is.
    for klass in type(obj).__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            init = inspect.unwrap(init)
        except ValueError:
            continue
        if getattr(init, "__code__", None) is code:
            return obj, klass
    return None, None


def _frame_argument_names(code: types.CodeType) -> tuple[list[str], str | None, str | None]:
    """``(named arguments without self, *args name, **kwargs name)`` of the function run by ``code``."""
    n_named = code.co_argcount + code.co_kwonlyargcount
    names = list(code.co_varnames[:n_named])
    idx = n_named
    varargs = varkw = None
    if code.co_flags & _CO_VARARGS:
        varargs = code.co_varnames[idx]
        idx += 1
    if code.co_flags & _CO_VARKEYWORDS:
        varkw = code.co_varnames[idx]
    return names[1:], varargs, varkw


def get_init_args(frame: types.FrameType) -> dict[str, Any]:
    """The arguments of the ``__init__`` call that ``frame`` executes, as Lightning returns them:
    ``{name: value}`` (see :func:`init_args_of` for the details; ``{}`` outside an ``__init__``)."""
    return init_args_of(frame)[1]


def init_args_of(frame: types.FrameType) -> tuple[Any | None, dict[str, Any]]:
    """The object and the arguments of the ``__init__`` call that ``frame`` executes.

    Returns ``(self, {name: value})`` where the dict holds every named argument (positional or keyword-only,
    excluding ``self``) with its *current* value in the frame, and the entries of ``**kwargs`` expanded in
    place of the ``kwargs`` name. ``*args`` values are dropped (they have no names). ``__class__``,
    ``frame`` and ``frame_args`` are never reported. If ``frame`` is not an ``__init__`` of an object,
    returns ``(None, {})``.
    """
    obj, _ = _init_owner(frame)
    if obj is None:
        return None, {}
    names, _varargs, varkw = _frame_argument_names(frame.f_code)
    local_vars = frame.f_locals
    init_args: dict[str, Any] = {name: local_vars[name] for name in names if name in local_vars}
    if varkw is not None:
        extra = local_vars.get(varkw)
        if isinstance(extra, dict):
            init_args.update(extra)
    for excluded in ("__class__", "frame", "frame_args"):
        init_args.pop(excluded, None)
    return obj, init_args


def collect_init_args(
    frame: types.FrameType,
    path_args: list[dict[str, Any]],
    inside: bool = False,
    classes: tuple[type, ...] = (),
    obj: Any = None,
) -> list[dict[str, Any]]:
    """Collect the ``__init__`` arguments along a ``super().__init__()`` chain, innermost first.

    Starting at ``frame`` and walking outwards (``f_back``), each consecutive ``__init__`` frame of the same
    object appends its :func:`get_init_args` dict to ``path_args``; the walk stops at the first frame after
    the chain. Until the first ``__init__`` frame is found (``inside=False``) intermediate frames are skipped.
    The last entry therefore belongs to the most-derived class, so ``dict.update`` over the list in order lets
    a subclass's values win over its parents'.

    Args:
        frame: where to start, usually the frame that called ``save_hyperparameters``.
        path_args: list to append to (returned).
        inside: whether the walk is already inside the chain.
        classes: if given, only ``__init__`` frames of instances of these classes count.
        obj: if given, only ``__init__`` frames of this very object count; set once the chain is entered.
    """
    current: types.FrameType | None = frame
    while current is not None:
        local_self, local_args = init_args_of(current)
        matches = local_self is not None and (not classes or isinstance(local_self, classes))
        if matches and obj is not None:
            matches = local_self is obj
        if matches:
            path_args.append(local_args)
            inside = True
            obj = local_self
        elif inside:
            break
        current = current.f_back
    return path_args
