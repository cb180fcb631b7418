"""Paths beyond the local disk: ``http(s)://`` URLs and fsspec URLs (``s3://``, ``gs://``, ``memory://``...).

fsspec is an optional extra (``pip install 'featherlight[extra]'`` or ``pip install fsspec``), imported only
when a remote path is used; local paths never import it.
"""
from __future__ import annotations

import os
from typing import Any, Union

_PATH = Union[str, "os.PathLike[str]"]


def protocol(path: _PATH) -> str:
    """The URL scheme of ``path`` (``"file"`` for a plain local path)."""
    path = os.fspath(path)
    if "://" not in path:
        return "file"
    return path.split("://", 1)[0].lower()


def is_remote(path: _PATH) -> bool:
    """Whether ``path`` is a URL of something other than the local file system."""
    return protocol(path) not in ("file", "local")


def get_filesystem(path: _PATH, **storage_options: Any) -> Any:
    """The fsspec file system ``path`` lives on (the local one for plain paths).

    Raises a ``ModuleNotFoundError`` naming the package to install when fsspec is missing.
    """
    try:
        import fsspec
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"The path {os.fspath(path)!r} needs fsspec to be read or written: `pip install fsspec` (plus the "
            "protocol's own package, e.g. `s3fs` for s3://)."
        ) from None
    fs, _ = fsspec.core.url_to_fs(os.fspath(path), **storage_options)
    return fs


def read_bytes(path: _PATH) -> bytes:
    """The whole content of a (possibly remote) file. ``http(s)`` URLs are read with the standard library;
    other protocols with fsspec. A missing file raises ``FileNotFoundError`` naming it."""
    path = os.fspath(path)
    if protocol(path) in ("http", "https"):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(path) as response:  # noqa: S310 - the user asked for this URL
                return response.read()
        except urllib.error.HTTPError as err:
            if err.code == 404:
                raise FileNotFoundError(f"Checkpoint not found at {path!r} (HTTP 404).") from None
            raise
    fs = get_filesystem(path)
    if not fs.exists(path):
        raise FileNotFoundError(f"File not found: {path!r}.")
    with fs.open(path, "rb") as f:
        return f.read()
