"""``save_hyperparameters()``, ``hparams`` and ``hparams_initial`` for modules and datamodules."""
from __future__ import annotations

import copy
import dataclasses
import inspect
import types
from argparse import Namespace
from collections.abc import Mapping, MutableMapping, Sequence
from contextvars import ContextVar
from typing import Any, Optional

from torch import nn

from featherlight.utilities.parsing import AttributeDict, collect_init_args, is_picklable
from featherlight.utilities.rank_zero import rank_zero_warn

_PRIMITIVE_TYPES = (bool, int, float, str)
_PLAIN_CONTAINERS = (list, tuple, dict, set, frozenset)
# Values that pickle trivially; skipping the pickle probe for them keeps save_hyperparameters() cheap.
_TRIVIALLY_PICKLABLE = (type(None), bool, int, float, complex, str, bytes)

# Set by LightningCLI (featherlight.cli) while it builds a module: (the class being built, its parsed config).
# save_hyperparameters() in that class's __init__ then records the config (class paths, not the built
# objects), so load_from_checkpoint can rebuild dependency-injected arguments. Only the exact class named
# here uses it, so a module built inside that __init__ records its own arguments.
_given_hparams: ContextVar[tuple[type, dict[str, Any]] | None] = ContextVar("_given_hparams", default=None)


def _copy_value(value: Any) -> Any:
    """Deep-copy plain containers (so later in-place edits of a saved list/dict do not leak into the initial
    snapshot); share every other object (models, datasets, tensors ... may be large or not copyable)."""
    if isinstance(value, _PLAIN_CONTAINERS):
        try:
            return copy.deepcopy(value)
        except Exception:
            return value
    return value


def _snapshot(hparams: Any) -> Any:
    if isinstance(hparams, dict):
        return AttributeDict({k: _copy_value(v) for k, v in hparams.items()})
    try:  # a non-dict mapping such as an OmegaConf DictConfig: copy it as a whole
        return copy.deepcopy(hparams)
    except Exception:
        return AttributeDict({k: _copy_value(v) for k, v in hparams.items()})


def _contains_module(value: Any, depth: int = 0) -> bool:
    if isinstance(value, nn.Module):
        return True
    if depth < 4:  # configs nest shallowly; the bound protects against self-referential containers
        if isinstance(value, (list, tuple, set, frozenset)):
            return any(_contains_module(v, depth + 1) for v in value)
        if isinstance(value, Mapping):
            return any(_contains_module(v, depth + 1) for v in value.values())
    return False


class HyperparametersMixin:
    """Gives a class ``save_hyperparameters()`` and the ``hparams`` / ``hparams_initial`` properties.

    Differences from Lightning, on purpose:

    * a hyperparameter that is (or contains) an ``nn.Module`` is warned about as in Lightning and kept in
      ``hparams``, but left out of the checkpoint's saved hyperparameters (its weights are in the ``state_dict``);
      ``load_from_checkpoint`` asks for it by name when ``__init__`` needs it;
    * ``hparams_initial`` deep-copies only plain containers (list/tuple/dict/set); other values are shared
      with ``hparams`` instead of being deep-copied;
    * mixing argument names and a config object in one call, or naming an argument ``__init__`` does not
      have, raises a ``ValueError`` that says so.
    """

    __jit_unused_properties__: list[str] = ["hparams", "hparams_initial"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._log_hyperparams = False

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: Sequence[str] | str | None = None,
        frame: types.FrameType | None = None,
        logger: bool = True,
    ) -> None:
        """Store constructor arguments (or a config object) in :attr:`hparams`; checkpoints and loggers use them.

        Call it from ``__init__``:

        * ``self.save_hyperparameters()``: every named argument of ``__init__`` (``**kwargs`` entries included,
          ``*args`` excluded) of this class *and* of the ``__init__`` calls up the ``super().__init__()`` chain
          of the same object, the most-derived class winning on name clashes;
        * ``self.save_hyperparameters("lr", "hidden")``: only these ``__init__`` arguments;
        * ``self.save_hyperparameters(config)`` with one ``dict`` / ``argparse.Namespace`` / mapping: its
          contents (a dict or Namespace is copied into an :class:`AttributeDict`; another mapping is kept as is).

        Repeated calls merge into the existing ``hparams``.

        Args:
            *args: argument names, or a single config object. A single empty/``None`` config is a no-op.
            ignore: name(s) to leave out; also removed from hparams saved by earlier calls (e.g. a parent class).
            frame: the ``__init__`` frame to read arguments from (default: the caller's frame).
            logger: whether the trainer should send these hyperparameters to its loggers.

        A value that is (or contains) an ``nn.Module`` is warned about (as in Lightning) and left out of
        checkpoints; a value that cannot be pickled is removed, with a warning, when a run starts.

        Raises:
            ValueError: if a named argument does not exist, or if the arguments are neither names nor a single
                supported config object.
        """
        self._log_hyperparams = logger
        if len(args) == 1 and (args[0] is None or (isinstance(args[0], Mapping) and not args[0])):
            return

        if frame is None:
            current = inspect.currentframe()
            frame = current.f_back if current is not None else None
        try:
            init_args = self._collect_init_args(frame)
        finally:
            del frame  # frames reference their locals; do not keep the whole call stack alive

        if ignore is None:
            ignored: list[str] = []
        elif isinstance(ignore, str):
            ignored = [ignore]
        else:
            ignored = [name for name in ignore if isinstance(name, str)]
        kept_args = {k: v for k, v in init_args.items() if k not in ignored}

        from_container = False
        if not args:
            hp: Any = kept_args
            hparams_name: str | None = "kwargs" if hp else None
        else:
            names = [a for a in args if isinstance(a, str)]
            objects = [a for a in args if not isinstance(a, str)]
            for obj in objects:
                if isinstance(obj, _PRIMITIVE_TYPES):
                    raise ValueError(
                        f"Primitives {_PRIMITIVE_TYPES} are not allowed. save_hyperparameters() got the value {obj!r}: "
                        "pass argument names as strings or one config object (dict, argparse.Namespace or another "
                        "mapping)."
                    )
            if (names and objects) or len(objects) > 1:
                raise ValueError(
                    "save_hyperparameters() takes either names of __init__ arguments or a single config object"
                    " (dict, argparse.Namespace or another mapping), not both and not several objects."
                )
            if objects:
                hp = self._to_hparams_dict(objects[0])
                hparams_name = next((k for k, v in kept_args.items() if v is objects[0]), None)
                from_container = True
            else:
                unknown = [n for n in names if n not in init_args]
                if unknown:
                    raise ValueError(
                        f"save_hyperparameters(): {unknown} not among the __init__ arguments"
                        f" {sorted(init_args)} of {type(self).__name__}."
                    )
                hp = {n: kept_args[n] for n in names if n in kept_args}
                hparams_name = "kwargs"

        if not from_container:
            hp = self._to_hparams_dict(hp)
        for name in ignored:
            if name in hp:
                del hp[name]
        self._warn_modules(hp, from_container)

        self._hparams_name = hparams_name
        if isinstance(hp, dict) and isinstance(self.hparams, dict):
            self.hparams.update(hp)
        else:
            self._hparams = hp
        # which saved names are `__init__` arguments (not keys of a config object, nor values set by hand later):
        # `load_from_checkpoint` warns when `__init__` no longer takes one of them (a renamed argument)
        names_from_init = set() if from_container else set(hp)
        self._hparams_init_names = (getattr(self, "_hparams_init_names", set()) | names_from_init) - set(ignored)
        self.remove_ignored_hparams(ignored)
        self._hparams_initial = _snapshot(self._hparams)

    def _collect_init_args(self, frame: types.FrameType | None) -> dict[str, Any]:
        given = _given_hparams.get()
        if given is not None and type(self) is given[0]:
            return dict(given[1])
        if dataclasses.is_dataclass(self):
            # A dataclass calls save_hyperparameters() from __post_init__: its fields are the init args.
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        if frame is None:
            return {}
        init_args: dict[str, Any] = {}
        for local_args in collect_init_args(frame, [], classes=(HyperparametersMixin,), obj=self):
            init_args.update(local_args)
        return init_args

    @staticmethod
    def _warn_modules(hp: Mapping, from_container: bool) -> None:
        """Lightning's warning for an ``nn.Module`` hyperparameter, and what featherlight does with it."""
        for key, value in hp.items():
            if isinstance(value, nn.Module) or _contains_module(value):
                fix = ("remove it from the object passed to save_hyperparameters()" if from_container
                       else f"ignore it with `self.save_hyperparameters(ignore=[{key!r}])`")
                rank_zero_warn(
                    f"Attribute {key!r} is an instance of `nn.Module` and is already saved during checkpointing. It is "
                    f"recommended to ignore them using `self.save_hyperparameters(ignore=[{key!r}])`. featherlight "
                    f"keeps it out of the checkpoint's hyperparameters (its weights are in the state dict), so "
                    f"`load_from_checkpoint` needs it passed by name; {fix} to silence this warning."
                )

    @staticmethod
    def _to_hparams_dict(hp: Any) -> MutableMapping:
        if isinstance(hp, Namespace):
            hp = vars(hp)
        if isinstance(hp, dict):
            return AttributeDict(hp)
        if isinstance(hp, _PRIMITIVE_TYPES):
            raise ValueError(
                f"Primitives {_PRIMITIVE_TYPES} are not allowed. save_hyperparameters() got the value {hp!r}: pass "
                "argument names as strings or one config object (dict, argparse.Namespace or another mapping)."
            )
        if not isinstance(hp, MutableMapping):
            raise ValueError(
                f"save_hyperparameters() cannot store a {type(hp).__name__}; pass a dict, an argparse.Namespace"
                " or another mutable mapping."
            )
        return hp

    def remove_ignored_hparams(self, ignore_list: Sequence[str]) -> None:
        """Drop these names from the saved hyperparameters (e.g. ones a parent class saved)."""
        hparams = self.hparams
        for key in ignore_list:
            if key in hparams:
                del hparams[key]

    @property
    def hparams(self) -> AttributeDict | MutableMapping:
        """The saved hyperparameters; mutable. Empty :class:`AttributeDict` before ``save_hyperparameters()``."""
        hparams = getattr(self, "_hparams", None)
        if hparams is None:
            hparams = AttributeDict()
            self._hparams = hparams
        return hparams

    @property
    def hparams_initial(self) -> AttributeDict | MutableMapping:
        """A fresh copy of the hyperparameters as they were right after the last ``save_hyperparameters()``
        (edits of :attr:`hparams`, or of the returned copy, do not show here)."""
        initial = getattr(self, "_hparams_initial", None)
        if initial is None:
            return AttributeDict()
        return _snapshot(initial)


def saved_hparams(obj: Any) -> Optional[tuple[Optional[str], Any]]:
    """What a checkpoint stores of ``obj``'s hyperparameters: ``(name of the config argument or None, hparams)``,
    or None when ``obj`` saved none."""
    name = getattr(obj, "_hparams_name", None)
    if name is None and not getattr(obj, "_hparams", None):
        return None
    return name, obj.hparams


def init_hparam_names(obj: Any) -> list[str]:
    """The names among ``obj``'s saved hyperparameters that ``save_hyperparameters()`` took from ``__init__``
    arguments (sorted); a checkpoint records them so ``load_from_checkpoint`` can tell a renamed argument from a
    value added to ``hparams`` by hand."""
    hparams = getattr(obj, "_hparams", None)
    if not isinstance(hparams, Mapping):
        return []
    return sorted(k for k in getattr(obj, "_hparams_init_names", ()) if k in hparams and isinstance(k, str))


def drop_unpicklable_hparams(obj: Any) -> None:
    """Remove the saved hyperparameters that cannot be pickled (so cannot go into a checkpoint), with Lightning's
    warning; called when a run starts. Modules are not probed (they never go into a checkpoint's hparams)."""
    hparams = getattr(obj, "_hparams", None)
    if not hparams or not isinstance(hparams, MutableMapping):
        return
    drop = [k for k, v in hparams.items()
            if not isinstance(v, _TRIVIALLY_PICKLABLE) and not isinstance(v, nn.Module) and not is_picklable(v)]
    for key in drop:
        rank_zero_warn(
            f"Attribute '{key}' removed from hparams because it cannot be pickled. You can suppress this warning by"
            f" setting `self.save_hyperparameters(ignore=['{key}'])`."
        )
        del hparams[key]


def checkpoint_hparams(hparams: Any) -> tuple[Any, dict[str, str]]:
    """What a checkpoint stores of ``hparams``: the values without the ``nn.Module``s (their weights are in the
    state dict; pickling them would store a second copy and need code to load), and the names left out with their
    class (``{"encoder": "my_pkg.Encoder"}``) so ``load_from_checkpoint`` can ask for them."""
    if not isinstance(hparams, Mapping):
        return hparams, {}
    left_out = {k: f"{type(v).__module__}.{type(v).__qualname__}" for k, v in hparams.items()
                if isinstance(v, nn.Module) or _contains_module(v)}
    if not left_out:
        return hparams, {}
    return {k: v for k, v in hparams.items() if k not in left_out}, left_out


def hparams_to_log(obj: Any) -> Optional[Any]:
    """The hyperparameters the loggers get from ``obj`` (``save_hyperparameters(logger=True)``), or None."""
    if obj is None or not getattr(obj, "_log_hyperparams", False):
        return None
    return obj.hparams_initial
