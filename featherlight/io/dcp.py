"""Reading ``torch.distributed.checkpoint`` (DCP) directories without running code from them.

torch's own reader unpickles the directory's ``.metadata`` with plain ``pickle`` and every non-tensor value
(an optimizer's hyperparameters, for instance) with ``torch.load(weights_only=False)``: a crafted checkpoint
could run arbitrary code. featherlight reads them with an allow-list instead: ``.metadata`` may only name
DCP's own metadata classes, ``torch.Size``, dtypes, layouts and paths, and values go through
``torch.load(weights_only=True)`` (with the same allow-list as checkpoint files). ``weights_only=False``
is the explicit opt-in to torch's reader, as for checkpoint files.

A sharded featherlight checkpoint is a directory holding DCP's files plus ``meta.pt`` (everything but the
weights and optimizer states). :func:`read_sharded_checkpoint` turns one into the dict an ordinary
checkpoint file holds, in one process and without a process group, whatever the world size that wrote it.
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Any, Union

import torch

from featherlight.io.safe import HPARAM_KEYS, load_file, safe_globals
from featherlight.utilities.exceptions import CheckpointError

META_NAME = "meta.pt"
DCP_METADATA = ".metadata"
SHARDED_KEY = "featherlight_sharded"

_ALLOWED_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata", "BytesStorageMetadata",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # a lookup of torch's layouts by name
    "torch": {"Size"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"},
    "pathlib._local": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
}


def is_sharded_checkpoint(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a directory written by ``FSDPStrategy(state_dict_type="sharded")``."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, META_NAME))


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if name in _ALLOWED_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"the DCP metadata refers to {module}.{name}, which is not on featherlight's "
                                     "allow-list")


class UnsafeCheckpointError(RuntimeError):
    """The DCP directory holds something only arbitrary unpickling can read."""


def _safe_torch_load(stream: io.BytesIO) -> Any:
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(stream, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(str(err).split("WeightsUnpickler error:")[-1].strip()[:300]) from None


def storage_reader(path: Union[str, os.PathLike], weights_only: bool = True) -> Any:
    """A ``FileSystemReader`` for ``path`` whose metadata is read with the allow-list (``weights_only``)."""
    from torch.distributed.checkpoint import FileSystemReader

    if not weights_only:
        return FileSystemReader(path)

    class _SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            get_path = getattr(self, "_get_metadata_path", None)
            meta_path = get_path(kwargs.get("rank")) if get_path is not None else \
                self.fs.concat_path(self.path, DCP_METADATA)
            with self.fs.create_stream(meta_path, "rb") as f:
                try:
                    metadata = _MetadataUnpickler(f).load()
                except pickle.UnpicklingError as err:
                    # DCP catches errors here (and tries other files): the caller looks at ``refused``
                    self.refused = UnsafeCheckpointError(str(err))
                    raise self.refused from None
            if getattr(metadata, "storage_meta", None) is None:
                from torch.distributed.checkpoint.metadata import StorageMeta

                metadata.storage_meta = StorageMeta()
            if hasattr(self, "load_id"):
                metadata.storage_meta.load_id = self.load_id
            return metadata

    return _SafeFileSystemReader(path)


def load_planner(weights_only: bool = True, whole: bool = False) -> Any:
    """DCP's load planner (``whole``: the one that rebuilds the saved state dict from the metadata), reading
    non-tensor values with ``torch.load(weights_only=True)`` unless ``weights_only`` is False."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, _EmptyStateDictLoadPlanner

    base = _EmptyStateDictLoadPlanner if whole else DefaultLoadPlanner
    if not weights_only:
        return base()

    class _SafeLoadPlanner(base):  # type: ignore[misc, valid-type]
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            from torch.distributed.checkpoint._traverse import set_element

            try:
                obj = _safe_torch_load(value)
            except UnsafeCheckpointError as err:
                self.refused = err
                raise
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return _SafeLoadPlanner()


def load_in_place(state: dict[str, Any], path: str, weights_only: bool = True) -> None:
    """``dcp.load`` of ``state`` from ``path`` on every rank of the process group (resharding as needed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    reader, planner = storage_reader(path, weights_only), load_planner(weights_only)
    try:
        dcp.load(state, storage_reader=reader, planner=planner)
    except (Exception, CheckpointException) as err:
        refused = getattr(reader, "refused", None) or getattr(planner, "refused", None)
        if refused is not None or isinstance(err, UnsafeCheckpointError):
            raise _unsafe(path, refused or err) from None
        raise


def read_sharded_checkpoint(path: Union[str, os.PathLike], weights_only: bool = True) -> dict[str, Any]:
    """The checkpoint in the sharded directory ``path`` as one dict, read in this process alone.

    ``state_dict`` holds the full (unsharded) weights, ``optimizer_states`` one state per optimizer keyed by
    parameter name (as ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict`` writes them), the
    other keys come from ``meta.pt``. No process group is needed: any world size can have written it.
    """
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, DCP_METADATA)):
        raise CheckpointError(f"Sharded checkpoint {path!r} has no {DCP_METADATA} file: the shards were not all "
                              "written (the run stopped while saving?). Use an earlier checkpoint.", reason="corrupt")
    checkpoint = load_file(os.path.join(path, META_NAME), map_location="cpu", weights_only=weights_only,
                           tolerate=HPARAM_KEYS)
    saved = checkpoint.pop(SHARDED_KEY, {}).get("optimizers", 0)
    state: dict[str, Any] = {}
    reader, planner = storage_reader(path, weights_only), load_planner(weights_only, whole=True)
    try:
        _load_state_dict(state, storage_reader=reader, planner=planner, no_dist=True)
    except (Exception, CheckpointException) as err:  # a refused object, or a damaged shard (torch says which)
        refused = getattr(reader, "refused", None) or getattr(planner, "refused", None)
        if refused is not None or isinstance(err, UnsafeCheckpointError):
            raise _unsafe(path, refused or err) from None
        raise CheckpointError(f"Sharded checkpoint {path!r} cannot be read ({type(err).__name__}: "
                              f"{str(err)[:300]}). Use an earlier checkpoint.", reason="corrupt") from None
    checkpoint["state_dict"] = state.get("model", {})
    if saved:
        optimizers = state.get("optimizers", {})
        checkpoint["optimizer_states"] = [optimizers.get(str(i), {}) for i in range(saved)]
    return checkpoint


def _unsafe(path: str, err: Exception) -> Exception:
    return CheckpointError(
        f"Refusing to load the sharded checkpoint {path!r}: it holds Python objects that can only be restored by "
        f"executing code from the files ({err}). If you trust where it came from, opt in explicitly with "
        "`weights_only=False` (e.g. `trainer.fit(..., ckpt_path=path, weights_only=False)`).", reason="unsafe",
    )


__all__ = ["is_sharded_checkpoint", "read_sharded_checkpoint", "load_in_place", "storage_reader", "load_planner"]
