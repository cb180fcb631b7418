"""Writing checkpoints on a background thread: :class:`AsyncCheckpointIO`, under Lightning's name."""
from __future__ import annotations

import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Optional

import torch

from featherlight.io.checkpoint_io import _PATH, CheckpointIO, _WrappingCheckpointIO
from featherlight.utilities.apply_func import apply_to_collection
from featherlight.utilities.rank_zero import rank_zero_warn

__all__ = ["AsyncCheckpointIO"]


def _snapshot(tensor: torch.Tensor) -> torch.Tensor:
    # a copy taken now, on the training thread: the next optimizer step must not change what is being written.
    # Device tensors are copied to the host, so an extra copy of the model and optimizer never takes device memory.
    if tensor.device.type == "cpu":
        return tensor.detach().clone()
    return tensor.detach().to("cpu", copy=True)


class AsyncCheckpointIO(_WrappingCheckpointIO):
    """Write checkpoints on a background thread so training continues while the file is written.

    ``save_checkpoint`` copies the checkpoint's tensors (to the CPU) on the calling thread and returns; the wrapped
    ``checkpoint_io`` (default: the strategy's, i.e. :class:`~featherlight.io.checkpoint_io.TorchCheckpointIO`)
    writes the copy on one background thread. At most one save is in flight: a second ``save_checkpoint`` first
    waits for the previous one. ``remove_checkpoint`` runs on the same thread after the saves queued before it, and
    ``load_checkpoint`` waits for everything queued. An error of a background save or removal is raised by the next
    call or by :meth:`teardown` (which the trainer calls when a run ends, after waiting for the last write).

    Loggers that upload checkpoints in ``after_save_checkpoint`` (``log_model``) may run before the file exists.

    Args:
        checkpoint_io: the plugin that writes; ``None`` takes the strategy's own.
    """

    def __init__(self, checkpoint_io: Optional[CheckpointIO] = None) -> None:
        super().__init__(checkpoint_io)
        self._executor: Optional[ThreadPoolExecutor] = None
        self._queued: list[Future] = []
        self._error: Optional[BaseException] = None
        self._lock = threading.Lock()

    def _submit(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="featherlight-checkpoint")

        def run() -> None:
            try:
                fn(*args, **kwargs)
            except BaseException as err:  # kept for the training thread, which raises it
                with self._lock:
                    if self._error is None:
                        self._error = err

        self._queued.append(self._executor.submit(run))

    def _wait(self) -> None:
        """Wait for everything queued, then raise the first background error (once)."""
        queued, self._queued = self._queued, []
        for future in queued:
            future.result()
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        """Snapshot ``checkpoint``'s tensors and write it on the background thread (after the previous save)."""
        self._wait()
        snapshot = apply_to_collection(checkpoint, torch.Tensor, _snapshot)
        self._submit(self._base().save_checkpoint, snapshot, path, storage_options=storage_options)

    def remove_checkpoint(self, path: _PATH) -> None:
        """Remove ``path`` on the background thread, after the saves queued before."""
        self._submit(self._base().remove_checkpoint, path)

    def load_checkpoint(
        self, path: _PATH, map_location: Optional[Any] = None, weights_only: Optional[bool] = None
    ) -> dict[str, Any]:
        """Wait for the queued writes, then read ``path`` with the wrapped plugin."""
        self._wait()
        return self._base().load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def teardown(self) -> None:
        """Wait for the queued writes and stop the thread; raise a background error. While another exception is
        already propagating (a failed run), the write error is given as a warning instead of replacing it."""
        propagating = sys.exc_info()[1]  # teardown called while a failed run unwinds
        try:
            self._wait()
        except BaseException as err:
            if propagating is None:
                raise
            rank_zero_warn(f"A background checkpoint write failed as well: {type(err).__name__}: {err}")
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            super().teardown()

    def __getstate__(self) -> dict[str, Any]:
        # a strategy travels to spawned processes before any save: the thread and queue stay behind
        state = self.__dict__.copy()
        state.update(_executor=None, _queued=[], _error=None, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
