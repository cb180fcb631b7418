"""``lightning.fabric.utilities.cloud_io``: file systems, loading and atomic saving, on featherlight's
:mod:`featherlight.io` (atomic writes, loading that runs no code from the file unless ``weights_only=False``)."""
from __future__ import annotations

import os
from typing import IO, Any, Optional, Union

from featherlight.io.atomic import atomic_torch_save
from featherlight.io.load import load_checkpoint
from featherlight.io.paths import get_filesystem, protocol
from featherlight.utilities.types import _MAP_LOCATION_TYPE, _PATH

__all__ = ["get_filesystem", "_atomic_save", "_is_dir", "_is_local_file_protocol", "_is_object_storage", "_load"]

_OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl")


def _load(path_or_url: Union[IO[bytes], _PATH], map_location: _MAP_LOCATION_TYPE = None,
          weights_only: Optional[bool] = None) -> Any:
    """Load what ``torch.save`` wrote to a local path, an ``http(s)://`` or fsspec URL, or an open binary stream.

    ``weights_only=None`` means ``True``: only tensors and plain Python types are read, so no code from the file
    runs (for every source: Lightning reads ``http(s)`` URLs with ``weights_only=False`` by default). Pass
    ``weights_only=False`` for a trusted file holding arbitrary objects.
    """
    return load_checkpoint(path_or_url, map_location=map_location, weights_only=weights_only is not False,
                           require_dict=False)


def _atomic_save(checkpoint: Any, filepath: _PATH) -> None:
    """``torch.save(checkpoint)`` to ``filepath`` (local or fsspec URL) so that a reader never sees a partial file;
    parent directories are created."""
    atomic_torch_save(checkpoint, filepath)


def _is_object_storage(fs: Any) -> bool:
    """Whether ``fs`` is an object store (S3, Google Cloud Storage, Azure), where directories are only prefixes."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in _OBJECT_STORES for p in protocols)


def _is_dir(fs: Any, path: Union[str, os.PathLike], strict: bool = False) -> bool:
    """Whether ``path`` is a directory on ``fs``. On an object store a path that is not a file counts as one (its
    "directories" appear when written into) unless ``strict``."""
    if _is_object_storage(fs) and not strict:
        return not fs.isfile(os.fspath(path))
    return fs.isdir(os.fspath(path))


def _is_local_file_protocol(path: _PATH) -> bool:
    """Whether ``path`` is on the local file system (a plain path or a ``file://`` URL)."""
    return protocol(path) == "file"
