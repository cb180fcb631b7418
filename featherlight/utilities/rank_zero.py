"""Run code, log and warn only on the global-rank-0 process.

``rank_zero_only.rank`` is read once from the launcher's environment (``RANK``, ``LOCAL_RANK``,
``SLURM_PROCID``, ``JSM_NAMESPACE_RANK``, first one set wins; default 0). Strategies that learn the
real global rank later call :func:`set_global_rank`; every helper here reads the attribute at call time,
so that assignment takes effect everywhere.

Libraries written for Lightning call ``lightning_utilities``' own ``rank_zero_only``, which refuses to run
until someone sets its ``rank`` (Lightning does, on import). featherlight never imports
``lightning_utilities``, but when it is already imported, featherlight gives it the same rank: on import
(if it has none yet), at the start of every run, and whenever the rank is set.

``stacklevel`` arguments follow :func:`warnings.warn` / :mod:`logging` semantics *as seen from the
caller of the helper*: the default ``2`` attributes the message to the line that called the helper,
``3`` to that line's caller, and so on.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from typing import Any, Callable, TypeVar

_T = TypeVar("_T")

log = logging.getLogger(__name__)

_RANK_ENV_VARS = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
_PACKAGE_LOGGER = "featherlight"


class FeatherlightDeprecationWarning(DeprecationWarning):
    """Category of the deprecation warnings emitted by :func:`rank_zero_deprecation`."""


LightningDeprecationWarning = FeatherlightDeprecationWarning  # Lightning's name for the same category


class PossibleUserWarning(UserWarning):
    """A warning that may be a false positive: ``warnings.filterwarnings("ignore", category=PossibleUserWarning)``
    (or :func:`disable_possible_user_warnings`) silences all of them."""


def disable_possible_user_warnings(module: str = "") -> None:
    """Ignore :class:`PossibleUserWarning` (from ``module`` only, a regular expression, when given)."""
    warnings.filterwarnings("ignore", module=module, category=PossibleUserWarning)


def _get_rank() -> int | None:
    """The global rank announced by the launcher's environment, or ``None`` when none is set."""
    for key in _RANK_ENV_VARS:
        value = os.environ.get(key)
        if value is None:
            continue
        try:
            return int(value)
        except ValueError:
            continue
    return None


def rank_zero_only(fn: Callable[..., _T], default: _T | None = None) -> Callable[..., _T | None]:
    """Decorate ``fn`` so that it runs only when ``rank_zero_only.rank == 0``.

    On any other rank the call is skipped and ``default`` (``None`` unless given) is returned. The rank is
    looked up on every call, so changing ``rank_zero_only.rank`` later affects already-decorated functions.
    """

    @functools.wraps(fn)
    def wrapped_fn(*args: Any, **kwargs: Any) -> _T | None:
        if rank_zero_only.rank == 0:
            return fn(*args, **kwargs)
        return default

    return wrapped_fn


rank_zero_only.rank = _get_rank() or 0  # type: ignore[attr-defined]

_LIGHTNING_UTILITIES_RANK_ZERO = "lightning_utilities.core.rank_zero"


def share_rank_with_lightning_utilities(overwrite: bool = True) -> None:
    """Give ``lightning_utilities``' ``rank_zero_only`` the rank featherlight's has, if that package is already
    imported (it is never imported here). ``overwrite=False`` only fills in a rank that is not set yet."""
    module = sys.modules.get(_LIGHTNING_UTILITIES_RANK_ZERO)
    theirs = getattr(module, "rank_zero_only", None)
    if theirs is None:
        return
    if overwrite or getattr(theirs, "rank", None) is None:
        theirs.rank = rank_zero_only.rank  # type: ignore[attr-defined]


def set_global_rank(rank: int) -> None:
    """Set the global rank that the rank-zero helpers read (``rank_zero_only.rank``), here and in an already
    imported ``lightning_utilities``."""
    rank_zero_only.rank = rank  # type: ignore[attr-defined]
    share_rank_with_lightning_utilities()


class _ShareRankWhenImported:
    """A ``sys.meta_path`` entry that waits for ``lightning_utilities.core.rank_zero`` to be imported (by the user's
    code, after featherlight) and gives its ``rank_zero_only`` the rank as soon as the module has run, as importing
    Lightning does. It imports nothing itself, answers None for every other module, and leaves after its one use."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != _LIGHTNING_UTILITIES_RANK_ZERO:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        from importlib.util import find_spec

        spec = find_spec(name)  # the finders after this one find the real module
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RankSharingLoader(spec.loader)
        return spec


class _RankSharingLoader:
    """The module's own loader, then the rank (every other attribute is the original loader's)."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        share_rank_with_lightning_utilities(overwrite=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


if _LIGHTNING_UTILITIES_RANK_ZERO in sys.modules:
    share_rank_with_lightning_utilities(overwrite=False)
else:
    sys.meta_path.insert(0, _ShareRankWhenImported())


def _is_rank_zero() -> bool:
    return rank_zero_only.rank == 0  # type: ignore[attr-defined]


def rank_zero_debug(*args: Any, stacklevel: int = 2, **kwargs: Any) -> None:
    """Log at DEBUG level on rank 0 only (arguments as for :meth:`logging.Logger.debug`)."""
    if _is_rank_zero():
        log.debug(*args, stacklevel=stacklevel, **kwargs)


def rank_zero_info(*args: Any, stacklevel: int = 2, **kwargs: Any) -> None:
    """Log at INFO level on rank 0 only (arguments as for :meth:`logging.Logger.info`)."""
    if _is_rank_zero():
        log.info(*args, stacklevel=stacklevel, **kwargs)


def rank_zero_warn(
    message: str | Warning, category: type[Warning] = UserWarning, stacklevel: int = 2, **kwargs: Any
) -> None:
    """Issue ``warnings.warn(message, category)`` on rank 0 only.

    ``stacklevel=2`` (the default) points the warning at the line that called ``rank_zero_warn``.
    """
    if _is_rank_zero():
        warnings.warn(message, category, stacklevel=stacklevel, **kwargs)


def rank_zero_deprecation(
    message: str | Warning,
    category: type[Warning] = FeatherlightDeprecationWarning,
    stacklevel: int = 2,
    **kwargs: Any,
) -> None:
    """Issue a deprecation warning on rank 0 only (category :class:`FeatherlightDeprecationWarning`)."""
    if _is_rank_zero():
        warnings.warn(message, category, stacklevel=stacklevel, **kwargs)


def rank_zero_print(*args: Any, **kwargs: Any) -> None:
    """``print(*args, **kwargs)`` on rank 0 only."""
    if _is_rank_zero():
        print(*args, **kwargs)


def rank_prefixed_message(message: str, rank: int | None) -> str:
    """Prefix ``message`` with ``[rank: N] `` when ``rank`` is known."""
    return message if rank is None else f"[rank: {rank}] {message}"


class WarningCache(set):
    """Remembers the messages it has emitted so that each distinct message fires only once.

    The framework keeps one cache per concern (e.g. per loop) so that a warning raised every step is
    shown a single time. ``clean()`` forgets everything seen so far.
    """

    def warn(
        self, message: str, category: type[Warning] = UserWarning, stacklevel: int = 2, **kwargs: Any
    ) -> None:
        """:func:`rank_zero_warn` the message unless this cache has already emitted it."""
        if message not in self:
            self.add(message)
            rank_zero_warn(message, category, stacklevel=stacklevel + 1, **kwargs)

    def deprecation(self, message: str, stacklevel: int = 2, **kwargs: Any) -> None:
        """:func:`rank_zero_deprecation` the message unless this cache has already emitted it."""
        if message not in self:
            self.add(message)
            rank_zero_deprecation(message, stacklevel=stacklevel + 1, **kwargs)

    def info(self, message: str, stacklevel: int = 2, **kwargs: Any) -> None:
        """:func:`rank_zero_info` the message unless this cache has already emitted it."""
        if message not in self:
            self.add(message)
            rank_zero_info(message, stacklevel=stacklevel + 1, **kwargs)

    def clean(self) -> None:
        """Forget every message seen so far."""
        self.clear()


_LOGGING_INITIALIZED = False


def _init_package_logging() -> None:
    """Make featherlight's INFO messages visible by default, the way Lightning does.

    The ``featherlight`` logger gets level INFO (unless the user already chose a level). If the root logger
    has no handler configured, a stderr ``StreamHandler`` is attached to the package logger and propagation
    is turned off so a later ``logging.basicConfig`` cannot print every message twice. If the root logger is
    configured, messages propagate to it and the user's setup decides. Calling this again is a no-op.
    """
    global _LOGGING_INITIALIZED
    if _LOGGING_INITIALIZED:
        return
    _LOGGING_INITIALIZED = True
    logger = logging.getLogger(_PACKAGE_LOGGER)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logging.getLogger().hasHandlers() and not logger.handlers:
        logger.addHandler(logging.StreamHandler())
        logger.propagate = False
