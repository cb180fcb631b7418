"""Export a module's weights to `safetensors <https://github.com/huggingface/safetensors>`_ and back.

A safetensors file holds tensors and string metadata only, so reading one can never run code; it is the
usual way to hand weights to other tools (Hugging Face, inference servers). The ``safetensors`` package is
optional: it is imported only when these functions run (``pip install safetensors``).

Tied weights (one tensor under several names) are written once and restored under every name; the names
of ``torch.compile``d submodules are written without ``_orig_mod.``, as in checkpoints.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Union

import torch
from torch import nn

from featherlight.io.atomic import atomic_write
from featherlight.io.state import load_module_state, strip_compile_prefix
from featherlight.utilities.exceptions import CheckpointError

_PATH = Union[str, "os.PathLike[str]"]
_ALIASES_KEY = "featherlight_aliases"


def _safetensors_torch(fn: str) -> Any:
    try:
        import safetensors.torch
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"`{fn}` needs the optional `safetensors` package. Install it with `pip install safetensors`."
        ) from err
    return safetensors.torch


def _split_shared(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors to write (each storage once) and ``{alias: name written}`` for tied weights.

    safetensors refuses tensors that share memory: an exact duplicate (a tied weight) is recorded as an
    alias; a view overlapping another tensor is written as its own copy.
    """
    written: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    exact: dict[tuple, str] = {}
    storages: set[tuple] = set()
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"State entry {name!r} is a {type(tensor).__name__}; safetensors stores tensors only.")
        tensor = tensor.detach()
        if tensor.device.type == "meta":
            raise ValueError(f"State entry {name!r} is on the meta device (it has no data to export).")
        storage = (tensor.device, tensor.untyped_storage().data_ptr()) if tensor.numel() else None
        key = (storage, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if storage is not None and key in exact:
            aliases[name] = exact[key]
            continue
        if storage is not None:
            exact[key] = name
        if storage is not None and storage in storages or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        elif storage is not None:
            storages.add(storage)
        written[name] = tensor
    return written, aliases


def save_weights_safetensors(module: nn.Module, path: _PATH, metadata: Optional[dict[str, str]] = None) -> None:
    """Write ``module.state_dict()`` to the safetensors file ``path``, atomically.

    The file is written to a temporary name in the same directory, flushed to disk and renamed over
    ``path``: a crash or a full disk leaves any previous file at ``path`` as it was. Parent directories
    are created.

    Args:
        module: any ``nn.Module`` (a ``LightningModule`` included).
        path: destination file (conventionally ``*.safetensors``).
        metadata: extra string metadata stored in the file's header (``{"format": "pt"}`` is always set).

    Raises:
        ModuleNotFoundError: if ``safetensors`` is not installed (``pip install safetensors``).
        TypeError: if the state holds something other than tensors (e.g. ``get_extra_state``).
    """
    st = _safetensors_torch("save_weights_safetensors")
    tensors, aliases = _split_shared(strip_compile_prefix(module.state_dict()))
    header = {"format": "pt"}
    if metadata:
        header.update({str(k): str(v) for k, v in metadata.items()})
    if aliases:
        header[_ALIASES_KEY] = json.dumps(aliases, sort_keys=True)

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = st.save(tensors, metadata=header)
    atomic_write(path, lambda f: f.write(data))


def load_weights_safetensors(module: nn.Module, path: _PATH, strict: bool = True) -> nn.Module:
    """Load weights written by :func:`save_weights_safetensors` (or any safetensors file) into ``module``.

    Tensors are read to the CPU and copied into the module's parameters and buffers wherever they live.

    Args:
        module: the module to load into.
        path: the safetensors file.
        strict: if ``True``, names missing from the file or not in the module are an error listing them;
            if ``False``, they are reported in a warning and the matching names are loaded.

    Returns:
        ``module``.

    Raises:
        ModuleNotFoundError: if ``safetensors`` is not installed (``pip install safetensors``).
        FileNotFoundError: if ``path`` does not exist.
        CheckpointError: if the file is not a readable safetensors file.
        RuntimeError: with ``strict=True``, if names do not match (or shapes differ).
    """
    st = _safetensors_torch("load_weights_safetensors")
    from safetensors import safe_open

    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"Weights file not found: {name!r}.")
    try:
        with safe_open(name, framework="pt") as f:
            header = f.metadata() or {}
        state_dict = st.load_file(name, device="cpu")
    except Exception as err:  # safetensors' own error type, OSError, ...
        raise CheckpointError(
            f"{name!r} is not a readable safetensors file ({type(err).__name__}: {str(err)[:200]}).", reason="corrupt"
        ) from None
    aliases = json.loads(header.get(_ALIASES_KEY, "{}"))
    for alias, target in aliases.items():
        if target in state_dict:
            state_dict[alias] = state_dict[target]
    load_module_state(module, state_dict, strict, name)
    return module
