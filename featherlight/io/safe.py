"""``torch.load`` that never runs code from the file, with clear errors for damaged or unsafe files.

``load_file`` is ``torch.load(weights_only=True)`` with an allow-list of the few non-tensor types
featherlight's own (and common user) checkpoints hold; anything that needs arbitrary unpickling is refused with
a :class:`~featherlight.utilities.exceptions.CheckpointError` naming ``weights_only=False`` as the explicit
opt-in. Damaged files get the same error naming the file, never a raw unpickling traceback.

Only the parts of a checkpoint named in ``tolerate`` (the saved hyperparameters) may hold objects the allow-list
does not cover (a hydra ``functools.partial``, a custom config class): such a file is read again with each of
those objects replaced by an inert :class:`UnloadedObject` that records what it stood for. Nothing from the file
is imported or run; the weights and training state load, and rebuilding a module from such hyperparameters asks
for the explicit opt-in (or the argument) by name.
"""
from __future__ import annotations

import os
import pickle
import warnings
from typing import IO, Any, Optional, Union

import torch

from featherlight.utilities.exceptions import CheckpointError


def safe_globals() -> list:
    """Types our own and common user checkpoints hold beyond tensors: NumPy arrays (RNG states)."""
    out: list = []
    try:
        import numpy as np

        out += [np.ndarray, np.dtype, type(np.dtype("uint32")), type(np.dtype("float64")),
                type(np.dtype("int64")), type(np.dtype("float32"))]
        try:
            from numpy._core import multiarray  # numpy >= 2
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core import multiarray  # type: ignore[no-redef]
        out += [multiarray._reconstruct, multiarray.scalar]
    except ImportError:
        pass
    from argparse import Namespace

    from featherlight.utilities.parsing import AttributeDict

    out += [AttributeDict, Namespace]
    return out


def _tell(stream: Any) -> Optional[int]:
    try:
        return stream.tell() if stream.seekable() else None
    except Exception:  # a stream without tell/seekable cannot be read twice
        return None


# What torch's weights-only unpickler says when a file wants to run code (import a global, call a function,
# build a class), as opposed to a damaged file (which it reports as e.g. "Unsupported operand").
_NEEDS_CODE = ("GLOBAL", "global", "reduce", "instantiate", "Can only", "allowlist", "persistent_load")


def _weights_only_detail(message: str) -> str:
    """The informative line of torch's long weights-only error (what it refused, in its own words)."""
    lines = [line.strip() for line in message.split("WeightsUnpickler error:")[-1].splitlines() if line.strip()]
    for line in lines:
        if any(marker in line for marker in _NEEDS_CODE) and "torch.load" not in line:
            return line[:300]
    informative = [line for line in lines if "torch.load" not in line and "weights_only" not in line]
    return (informative or lines or [message])[0][:300]


# The saved hyperparameters (current and legacy keys): objects in them that only code could rebuild are read as
# inert stand-ins instead of refusing the whole file
HPARAM_KEYS = ("hyper_parameters", "datamodule_hyper_parameters", "hparams", "module_arguments")


class UnloadedObject:
    """Stands in for a Python object in a checkpoint that only executing code from the file could rebuild.

    Subclasses are made per name (:func:`_unloaded_type`); ``path`` is the importable name the file refers to
    (e.g. ``"functools.partial"``). An instance records the arguments and state the file holds for it, without
    interpreting them. The class itself stands in for a referenced function or class.
    """

    path = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "UnloadedObject":
        instance = object.__new__(cls)
        instance.args, instance.state = args, None
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # the arguments are recorded by __new__, nothing is interpreted

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<unloaded {self.path}>"


def _unloaded_type(path: str) -> type:
    return type(f"Unloaded[{path}]", (UnloadedObject,), {"path": path, "__module__": __name__})


def unloaded_objects(value: Any, depth: int = 0) -> list[str]:
    """The names of the :class:`UnloadedObject` stand-ins inside ``value`` (containers searched)."""
    if isinstance(value, UnloadedObject):
        return [value.path]
    if isinstance(value, type) and issubclass(value, UnloadedObject):
        return [value.path]
    if depth > 20:
        return []
    if isinstance(value, dict):
        items: Any = list(value.keys()) + list(value.values())
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = value
    else:
        return []
    return [name for item in items for name in unloaded_objects(item, depth + 1)]


def _load_tolerating(path: Union[str, os.PathLike, IO[bytes]], map_location: Any, tolerate: tuple[str, ...],
                     start: Optional[int]) -> Optional[dict[str, Any]]:
    """Read the file again with every global the allow-list refuses replaced by an :class:`UnloadedObject`; the
    result if such objects occur only under the top-level keys ``tolerate``, else None (the caller refuses it)."""
    def rewind() -> None:
        if start is not None:
            path.seek(start)  # type: ignore[union-attr]

    try:
        rewind()
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        rewind()
        stand_ins = [(_unloaded_type(name), name) for name in unsafe]
        with torch.serialization.safe_globals(safe_globals() + stand_ins):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # still refused (e.g. a blocked module) or unreadable: the first error stands
        return None
    if not isinstance(checkpoint, dict):
        return None
    if any(unloaded_objects(v) for k, v in checkpoint.items() if k not in tolerate) or unloaded_objects(list(checkpoint)):
        return None
    return checkpoint


def load_file(path: Union[str, os.PathLike, IO[bytes]], map_location: Any = None,
              weights_only: bool = True, tolerate: tuple[str, ...] = (), require_dict: bool = True) -> Any:
    """Read one checkpoint file (or an open binary stream) with ``torch.load``; see the module docstring.

    ``require_dict=False`` accepts any saved object (a tensor, a list...), not only a checkpoint's dict;
    ``tolerate`` names top-level keys whose non-plain objects are read as inert stand-ins (hyperparameters)."""
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "<stream>")
    start = None if isinstance(path, (str, os.PathLike)) else _tell(path)
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files it did not write itself (damaged or foreign files)
            warnings.filterwarnings("ignore", message=".*Detected pickle protocol.*")
            if weights_only:
                with torch.serialization.safe_globals(safe_globals()):
                    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
            else:
                checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as err:
        message = str(err)
        if weights_only and any(marker in _weights_only_detail(message) for marker in _NEEDS_CODE):
            tolerated = _load_tolerating(path, map_location, tolerate, start) if tolerate else None
            if tolerated is not None:
                return tolerated
            raise CheckpointError(
                f"Refusing to load {name!r}: it holds Python objects that can only be restored by executing code "
                f"from the file ({_weights_only_detail(message)}). If you trust where it came from, opt in "
                "explicitly with `weights_only=False` (e.g. `Model.load_from_checkpoint(path, weights_only=False)` "
                "or `trainer.fit(..., ckpt_path=path, weights_only=False)`).", reason="unsafe",
            ) from None
        raise CheckpointError(
            f"Checkpoint {name!r} is corrupt or truncated and cannot be read (unpickling failed: "
            f"{_weights_only_detail(message)}). Use an earlier checkpoint.", reason="corrupt",
        ) from None
    except (ImportError, AttributeError) as err:  # weights_only=False: the class it names is gone
        raise CheckpointError(
            f"Checkpoint {name!r} refers to Python code that cannot be found ({type(err).__name__}: {err}). "
            "Make the module that defined it importable again."
        ) from None
    except Exception as err:  # RuntimeError (zip), EOFError, OSError, KeyError from a damaged pickle memo, ...
        if isinstance(err, RuntimeError) and "deserialize object on" in str(err):
            # saved on an accelerator this machine lacks: not damage, the caller needs a map_location
            raise CheckpointError(f"Cannot load {name!r} here: {str(err)[:300]}") from None
        detail = str(err)[:200] or "the file ends too early"
        raise CheckpointError(
            f"Checkpoint {name!r} is corrupt or truncated and cannot be read ({type(err).__name__}: {detail}). "
            "Use an earlier checkpoint.", reason="corrupt",
        ) from None
    if require_dict and not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{name!r} is not a checkpoint: it holds a {type(checkpoint).__name__}, not the dict "
            "`Trainer.save_checkpoint` writes.", reason="corrupt",
        )
    return checkpoint
