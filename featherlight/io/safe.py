"""``torch.load`` that never runs code from the file, with clear errors for damaged or unsafe files.

``load_file`` is ``torch.load(weights_only=True)`` with an allow-list of the few non-tensor types
featherlight's own (and common user) checkpoints hold; anything that needs arbitrary unpickling is refused with
a :class:`~featherlight.utilities.exceptions.CheckpointError` naming ``weights_only=False`` as the explicit
opt-in. Damaged files get the same error naming the file, never a raw unpickling traceback.
"""
from __future__ import annotations

import os
import pickle
import warnings
from typing import IO, Any, Union

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


def load_file(path: Union[str, os.PathLike, IO[bytes]], map_location: Any = None,
              weights_only: bool = True, require_dict: bool = True) -> Any:
    """Read one checkpoint file (or an open binary stream) with ``torch.load``; see the module docstring.

    ``require_dict=False`` accepts any saved object (a tensor, a list...), not only a checkpoint's dict."""
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "<stream>")
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
