"""Reading checkpoints without executing code from them.

``load_checkpoint`` reads a checkpoint wherever it is: a local file or an open stream (through
:func:`featherlight.io.safe.load_file`: no code from the file runs unless ``weights_only=False``), FSDP's sharded
directories (:mod:`featherlight.io.dcp`), ``http(s)://`` URLs or any fsspec URL (``s3://``, ``gs://``,
``memory://``...): remote files are read into memory first and go through the same allow-list.
"""
from __future__ import annotations

import io
import os
from typing import IO, Any, Union

import torch

from featherlight.io.dcp import META_NAME, is_sharded_checkpoint, read_sharded_checkpoint
from featherlight.io.paths import is_remote, read_bytes
from featherlight.io.safe import HPARAM_KEYS, load_file
from featherlight.utilities.exceptions import CheckpointError



def load_checkpoint(path: Union[str, os.PathLike, IO[bytes]], map_location: Any = None,
                    weights_only: bool = True, tolerate: tuple[str, ...] = HPARAM_KEYS,
                    require_dict: bool = True) -> Any:
    """Read a checkpoint. With ``weights_only=True`` (default) no code from the file can run.

    Python objects the allow-list does not cover are refused, except under the top-level keys ``tolerate`` (the
    hyperparameters), where they are read as :class:`~featherlight.io.safe.UnloadedObject` stand-ins: the weights
    and training state still load.

    ``path`` is a local file, a sharded checkpoint directory, an open binary stream, or a URL (``http(s)://``
    or any fsspec protocol; read into memory, then loaded the same way). ``require_dict=False`` returns whatever
    object the file holds (``torch.save`` of a tensor, a list...); by default anything but a dict is refused.

    Raises ``FileNotFoundError`` for a missing path and :class:`CheckpointError` (naming the file) for a
    truncated or corrupt file, one that is not a checkpoint, or one that needs arbitrary unpickling (naming
    ``weights_only=False`` as the explicit opt-in).
    """
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "<stream>")
    if isinstance(path, (str, os.PathLike)) and is_remote(name):
        stream = io.BytesIO(read_bytes(name))
        stream.name = name  # type: ignore[attr-defined]  # error messages name the URL
        path = stream
    elif isinstance(path, (str, os.PathLike)):
        if not os.path.exists(path):
            raise FileNotFoundError(f"Checkpoint file not found: {name!r}. Check the path (or use ckpt_path='last').")
        if os.path.isdir(path):
            if is_sharded_checkpoint(path):
                # FSDP's sharded directory, read whole in this process (any world size can have written it)
                return map_tensors(read_sharded_checkpoint(path, weights_only=weights_only), map_location)
            raise CheckpointError(
                f"Checkpoint path {name!r} is a directory, not a checkpoint file (nor a sharded checkpoint "
                "directory written by `FSDPStrategy`, which holds a meta.pt).", reason="corrupt")
    return load_file(path, map_location, weights_only, tolerate, require_dict=require_dict)


def map_tensors(checkpoint: dict[str, Any], map_location: Any) -> dict[str, Any]:
    """``map_location`` (a device or its name) applied to a checkpoint read as CPU tensors."""
    if map_location is None or callable(map_location) or isinstance(map_location, dict):
        return checkpoint  # a function or a remapping of saved locations: the tensors stay where they were read
    from featherlight.utilities.apply_func import apply_to_collection

    device = torch.device(map_location)
    if device.type == "cpu":
        return checkpoint
    return apply_to_collection(checkpoint, torch.Tensor, lambda t: t.to(device))


def is_checkpoint_path(path: str) -> bool:
    """A checkpoint file, or a sharded checkpoint directory."""
    if os.path.isfile(path):
        return True
    return is_sharded_checkpoint(path)


def checkpoint_mtime(path: str) -> int:
    """When a checkpoint was written: a sharded directory's ``meta.pt`` is written last."""
    if os.path.isdir(path):
        path = os.path.join(path, META_NAME)
    return os.stat(path).st_mtime_ns
