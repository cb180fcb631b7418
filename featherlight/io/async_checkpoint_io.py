"""Writing checkpoints on a background thread: :class:`AsyncCheckpointIO` (Lightning's plugin, under its name) and
:class:`PendingCheckpoint`, the handle of one background write.

What a background write keeps of a synchronous one (Lightning's plugin promises none of it):

* **a consistent file**: the snapshot is taken on the calling thread before the call returns: every tensor is
  copied to host memory (pinned memory for CUDA tensors), storage by storage, so views and tied weights stay
  shared as ``torch.save`` writes them; training may change the weights right away;
* **one write at a time, in order**: a new save first waits for the write before it, so at most one snapshot is
  held (its host buffers are reused by the next save, which then copies without allocating);
* **a crash costs nothing written before**: each file goes through the wrapped plugin (for
  :class:`~featherlight.io.checkpoint_io.TorchCheckpointIO`: temporary file, fsync, rename, fsync the folder), and a
  removal queued behind a failed write is skipped;
* **failures surface in the training thread**: as a :class:`~featherlight.utilities.exceptions.CheckpointError`
  naming the file and the cause, from :meth:`PendingCheckpoint.wait`, else the next save or load, else
  :meth:`AsyncCheckpointIO.teardown` (which the trainer calls when a run ends, after waiting for the last write).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import sys
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional

import torch

from featherlight.io.checkpoint_io import _PATH, CheckpointIO, TorchCheckpointIO, _WrappingCheckpointIO
from featherlight.utilities.exceptions import CheckpointError
from featherlight.utilities.rank_zero import rank_zero_warn

__all__ = ["AsyncCheckpointIO", "PendingCheckpoint"]


class PendingCheckpoint:
    """A checkpoint being written on a background thread, to one or more paths in order.

    Returned by :meth:`AsyncCheckpointIO.save_checkpoint` and ``Trainer.save_checkpoint(..., background=True)``.
    Each path is complete (and, with the default plugin, durable) once :meth:`done` is true and :attr:`failed` is
    false. A failure stops the write: the paths after the failed one are not written, and each keeps its previous
    file.
    """

    def __init__(self, paths: Sequence[_PATH], action: str = "Writing") -> None:
        self.paths: tuple[str, ...] = tuple(os.fspath(p) for p in paths)
        self._action = action
        self._finished = threading.Event()
        self._error: Optional[CheckpointError] = None
        self._reported = False

    @property
    def path(self) -> str:
        """The first (main) path."""
        return self.paths[0]

    def done(self) -> bool:
        """Whether the write has finished (written or failed)."""
        return self._finished.is_set()

    @property
    def failed(self) -> bool:
        """Whether the write finished with an error (which :meth:`wait` raises once)."""
        return self._finished.is_set() and self._error is not None

    def wait(self) -> None:
        """Block until the write has finished.

        Raises:
            featherlight.utilities.exceptions.CheckpointError: if it failed, naming the file and the cause (chained as
                ``__cause__``). Raised once, by whichever waits first: this call, the plugin's next save or load, or
                its teardown.
        """
        self._finished.wait()
        error = self._take_error()
        if error is not None:
            raise error

    def _take_error(self) -> Optional[CheckpointError]:
        if self._error is None or self._reported:
            return None
        self._reported = True
        return self._error

    def _fail(self, path: str, err: BaseException) -> None:
        message = f"{self._action} the checkpoint {path!r} on the background thread failed: {type(err).__name__}: {err}"
        if self._action == "Writing":
            message += " (the file that was at this path before, if any, is left as it was)"
        error = CheckpointError(message)
        error.__cause__ = err
        self._error = error

    def _finish(self) -> None:
        self._finished.set()

    def __repr__(self) -> str:
        state = "failed" if self.failed else "done" if self.done() else "writing"
        return f"{type(self).__name__}({', '.join(self.paths)}: {state})"


# ------------------------------------------------------------------------------------------------------ snapshots
_IMMUTABLE = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device, torch.Size, range)


class _HostSnapshot:
    """Copies a checkpoint into host memory: containers rebuilt, tensors copied storage by storage (so views of one
    storage stay views of one copy, as ``torch.save`` writes them), other mutable objects deep-copied.

    The buffers of the previous snapshot are reused, in the same order, when their size and kind match: a run saves
    the same structure every time, so after the first save a snapshot only copies bytes (no allocation, no page
    faults). Only call :meth:`take` again once the previous snapshot is no longer read.
    """

    def __init__(self) -> None:
        self._buffers: list[torch.UntypedStorage] = []

    def release(self) -> None:
        self._buffers = []

    def take(self, checkpoint: Any, reuse: bool) -> Any:
        previous = iter(self._buffers if reuse else ())
        used: list[torch.UntypedStorage] = []
        copies: dict[tuple, torch.UntypedStorage] = {}
        devices: set[torch.device] = set()

        def host_storage(storage: torch.UntypedStorage) -> torch.UntypedStorage:
            key = (storage.device, storage.data_ptr(), storage.nbytes())
            found = copies.get(key)
            if found is not None and storage.nbytes():
                return found
            pinned = storage.device.type == "cuda"
            buffer = next(previous, None)
            if buffer is None or buffer.nbytes() != storage.nbytes() or buffer.is_pinned() != pinned:
                buffer = torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=pinned).untyped_storage()
            # a CUDA copy into pinned memory is asynchronous: the stream is synchronised once, below
            buffer.copy_(storage, non_blocking=pinned)
            if pinned:
                devices.add(storage.device)
            used.append(buffer)
            copies[key] = buffer
            return buffer

        def tensor(t: torch.Tensor) -> torch.Tensor:
            plain = type(t) in (torch.Tensor, torch.nn.Parameter)
            if (not plain or t.layout != torch.strided or t.is_quantized or t.device.type == "meta" or t.is_conj()
                    or t.is_neg()):
                # rare kinds (sparse, quantized, subclasses): a plain copy, on the host
                return t.detach().to("cpu", copy=True)
            out = torch.empty(0, dtype=t.dtype).set_(host_storage(t.untyped_storage()), t.storage_offset(),
                                                     t.size(), t.stride())
            if isinstance(t, torch.nn.Parameter):
                return torch.nn.Parameter(out, requires_grad=t.requires_grad)
            return out.requires_grad_() if t.requires_grad and t.is_leaf and out.is_floating_point() else out

        out = _copy_structure(checkpoint, tensor)
        for device in devices:
            # the snapshot must be complete before training changes the tensors it was copied from
            torch.cuda.current_stream(device).synchronize()
        self._buffers = used
        return out


def _copy_structure(data: Any, tensor: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``data`` with its containers rebuilt, ``tensor`` applied to every tensor and other mutable leaves deep-copied,
    so nothing the background thread writes is shared with the running training."""
    if isinstance(data, torch.Tensor):
        return tensor(data)
    if isinstance(data, _IMMUTABLE):
        return data
    if isinstance(data, Mapping):
        out = {k: _copy_structure(v, tensor) for k, v in data.items()}
        if type(data) is dict:
            return out
        if isinstance(data, defaultdict):
            return defaultdict(data.default_factory, out)
        try:  # OrderedDict and other dict types rebuild from a dict
            return type(data)(out)
        except TypeError:
            return out
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(_copy_structure(d, tensor) for d in data))
    if isinstance(data, (list, tuple)):
        return type(data)(_copy_structure(d, tensor) for d in data)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        changes = {f.name: _copy_structure(getattr(data, f.name), tensor) for f in dataclasses.fields(data) if f.init}
        return dataclasses.replace(data, **changes)
    try:
        return copy.deepcopy(data)
    except Exception:  # an object that cannot be copied is written as it is when the thread gets to it
        return data


# ------------------------------------------------------------------------------------------------------ the plugin
class AsyncCheckpointIO(_WrappingCheckpointIO):
    """Write checkpoints on a background thread so training continues while the file is written.

    ``save_checkpoint`` first waits for the write before it (one write at a time), then snapshots the checkpoint
    into host memory on the calling thread and returns a :class:`PendingCheckpoint`; the wrapped ``checkpoint_io``
    (default: the strategy's, i.e. :class:`~featherlight.io.checkpoint_io.TorchCheckpointIO`) writes the snapshot
    on one background thread. ``remove_checkpoint`` runs on the same thread after the writes queued before it, and is
    skipped if one of them failed. ``load_checkpoint`` waits for everything queued.

    A failed write is raised in the calling thread as a :class:`~featherlight.utilities.exceptions.CheckpointError`
    naming the file and the cause: by :meth:`PendingCheckpoint.wait`, else by the next ``save_checkpoint`` or
    ``load_checkpoint``, else by :meth:`teardown` (while another exception is already propagating, as a warning).

    ``ModelCheckpoint`` updates ``best_model_path``, ``last_model_path``, removes older files and calls loggers'
    ``after_save_checkpoint`` only once a file written this way is complete; ``Trainer.fit`` returns once every write
    has finished. With this plugin *every* checkpoint of the run is written in the background (also
    ``trainer.save_checkpoint(path)``: wait on the handle it returns before reading the file yourself);
    ``ModelCheckpoint(async_save=True)`` does it for that callback's files only.

    The snapshot's host buffers are kept and reused by the next save when the wrapped plugin is a
    ``TorchCheckpointIO`` (which serialises the tensors and keeps no reference to them), and released at teardown.

    Args:
        checkpoint_io: the plugin that writes; ``None`` takes the strategy's own.
    """

    def __init__(self, checkpoint_io: Optional[CheckpointIO] = None) -> None:
        super().__init__(checkpoint_io)
        self._executor: Optional[ThreadPoolExecutor] = None
        self._queued: list[Future] = []
        self._unreported: list[PendingCheckpoint] = []  # jobs whose failure nobody has raised yet
        self._snapshot = _HostSnapshot()
        self._write_failed = False  # read and written on the background thread only

    # ---------------------------------------------------------------- the queue
    def _submit(self, job: PendingCheckpoint, work: Callable[[], None]) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="featherlight-checkpoint")
        self._unreported = [p for p in self._unreported if not p.done() or p.failed]
        self._unreported.append(job)
        self._queued.append(self._executor.submit(work))

    def wait_idle(self) -> None:
        """Block until every queued write and removal has finished (their errors are not raised here)."""
        queued, self._queued = self._queued, []
        for future in queued:
            future.result()  # the work functions never raise: errors are kept on their handles

    def _raise_failures(self) -> None:
        """Raise the first failure nobody has raised yet (each is raised once)."""
        error: Optional[CheckpointError] = None
        keep = []
        for job in self._unreported:
            if job.done() and job.failed and error is None:
                error = job._take_error()
            elif not job.done() or (job.failed and not job._reported):
                keep.append(job)
        self._unreported = keep
        if error is not None:
            raise error

    # ---------------------------------------------------------------- CheckpointIO
    def save_checkpoint(  # type: ignore[override]
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None
    ) -> PendingCheckpoint:
        """Snapshot ``checkpoint`` now and write it to ``path`` on the background thread (after the previous write).

        Raises:
            featherlight.utilities.exceptions.CheckpointError: a failure of an earlier background write or removal.
        """
        return self.write_in_background(checkpoint, [path], storage_options=storage_options)

    def write_in_background(
        self, checkpoint: dict[str, Any], paths: Sequence[_PATH], storage_options: Optional[Any] = None
    ) -> PendingCheckpoint:
        """Snapshot ``checkpoint`` now and write it to each of ``paths`` in turn on the background thread (e.g. a
        checkpoint and ``last.ckpt``: one snapshot for both). Waits for the previous write first.

        Raises:
            featherlight.utilities.exceptions.CheckpointError: a failure of an earlier background write or removal.
        """
        if not paths:
            raise ValueError("`write_in_background` needs at least one path to write to.")
        self.wait_idle()
        self._raise_failures()
        base = self._base()
        # the host buffers may be reused only when the writer keeps no reference to the tensors it was given
        snapshot = [self._snapshot.take(checkpoint, reuse=isinstance(base, TorchCheckpointIO))]
        job = PendingCheckpoint(paths)

        def work() -> None:
            try:
                for path in job.paths:
                    try:
                        base.save_checkpoint(snapshot[0], path, storage_options=storage_options)
                    except BaseException as err:  # kept for the training thread, which raises it
                        job._fail(path, err)
                        self._write_failed = True
                        return
                self._write_failed = False
            finally:
                snapshot.clear()
                job._finish()

        self._submit(job, work)
        return job

    def remove_checkpoint(self, path: _PATH) -> None:
        """Remove ``path`` on the background thread, after the writes queued before; skipped if one of them failed
        (the file may be the last good one)."""
        base = self._base()
        job = PendingCheckpoint([path], action="Removing")

        def work() -> None:
            try:
                if not self._write_failed:
                    base.remove_checkpoint(path)
            except BaseException as err:
                job._fail(job.path, err)
            finally:
                job._finish()

        self._submit(job, work)

    def load_checkpoint(
        self, path: _PATH, map_location: Optional[Any] = None, weights_only: Optional[bool] = None
    ) -> dict[str, Any]:
        """Wait for the queued writes, then read ``path`` with the wrapped plugin."""
        self.wait_idle()
        self._raise_failures()
        return self._base().load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def finish(self) -> None:
        """Wait for the queued writes, stop the thread and release the snapshot buffers; raise a failure nobody has
        raised yet. While another exception is already propagating (a failed run), the failure is given as a warning
        instead of replacing it. The wrapped plugin is left alone (:meth:`teardown` tears it down too)."""
        propagating = sys.exc_info()[1]  # called while a failed run unwinds
        try:
            self.wait_idle()
            self._raise_failures()
        except BaseException as err:
            if propagating is None:
                raise
            rank_zero_warn(f"A background checkpoint write failed as well: {err}")
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            self._snapshot.release()

    def teardown(self) -> None:
        """:meth:`finish`, then the wrapped plugin's ``teardown``."""
        try:
            self.finish()
        finally:
            super().teardown()

    def __getstate__(self) -> dict[str, Any]:
        # a strategy travels to spawned processes before any save: the thread, queue and buffers stay behind
        state = self.__dict__.copy()
        state.update(_executor=None, _queued=[], _unreported=[], _snapshot=_HostSnapshot(), _write_failed=False)
        return state
