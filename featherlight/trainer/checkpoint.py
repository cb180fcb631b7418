"""Checkpoints: what goes in, how it is written (atomically) and read (never executing code).

A checkpoint is a dict of parts that each save and load themselves: the module's weights, the
optimizers, schedulers, precision (GradScaler), callbacks, datamodule, loop counters and RNG
states. The top-level keys are Lightning's, so checkpoints move between the two frameworks.
"""
from __future__ import annotations

import glob
import inspect
import os
import pickle
import warnings
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any, Optional, Union

import torch

from featherlight.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from featherlight.trainer.trainer import Trainer

# Lightning reads this key to decide which migrations to run; our layout matches its 2.x format.
LIGHTNING_VERSION_KEY = "pytorch-lightning_version"
LIGHTNING_COMPAT_VERSION = "2.5.0"
VERSION_KEY = "featherlight_version"
LOOP_KEY = "featherlight_loop"
RNG_KEY = "featherlight_rng_states"
# where ckpt_path="last" leaves the checkpoint it has read and verified, for the restore that follows
_PRELOADED = "_featherlight_preloaded_checkpoint"


class CheckpointError(RuntimeError):
    """A checkpoint could not be read: truncated, corrupt, not a checkpoint, or needing arbitrary unpickling.

    ``reason`` says which: ``"corrupt"`` (damaged or not a checkpoint), ``"unsafe"`` (needs
    ``weights_only=False``) or ``"other"``.
    """

    def __init__(self, message: str, reason: str = "other") -> None:
        super().__init__(message)
        self.reason = reason


# ------------------------------------------------------------------------------------------- writing
def _strip_compile_prefix(state_dict: dict[str, Any]) -> dict[str, Any]:
    """torch.compile wraps modules in ``_orig_mod``; checkpoints keep the plain names."""
    if not any("_orig_mod." in k for k in state_dict):
        return state_dict
    return type(state_dict)((k.replace("_orig_mod.", ""), v) for k, v in state_dict.items())


def _dump_checkpoint(trainer: "Trainer", weights_only: bool = False) -> dict[str, Any]:
    """Build the checkpoint dict of the trainer's current state (hooks included)."""
    from featherlight import __version__
    from featherlight.utilities.seed import _collect_rng_states

    module = trainer.lightning_module
    loop = trainer._loop
    checkpoint: dict[str, Any] = {
        "epoch": loop.epoch,
        "global_step": loop.global_step,
        LIGHTNING_VERSION_KEY: LIGHTNING_COMPAT_VERSION,
        VERSION_KEY: __version__,
        "state_dict": _strip_compile_prefix(trainer.strategy.model_state_dict()),
        "loops": _lightning_loops(trainer),
        LOOP_KEY: loop._checkpoint_state(trainer),
    }
    if not weights_only:
        checkpoint["callbacks"] = {}
        for cb in trainer.callbacks:
            state = cb.state_dict()
            if state:
                checkpoint["callbacks"][cb.state_key] = state
        checkpoint["optimizer_states"] = [opt.state_dict() for opt in trainer.optimizers]
        checkpoint["lr_schedulers"] = [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs]
        precision = trainer.precision_plugin
        prec_state = precision.state_dict()
        if prec_state:
            checkpoint[type(precision).__qualname__] = prec_state
        checkpoint[RNG_KEY] = _rng_to_tensors(_collect_rng_states())
    if getattr(module, "_hparams_name", None) is not None or getattr(module, "_hparams", None):
        checkpoint["hparams_name"] = getattr(module, "_hparams_name", None)
        checkpoint["hyper_parameters"] = _plain(module.hparams)
    dm = trainer.datamodule
    if dm is not None:
        if getattr(dm, "_hparams", None):
            checkpoint["datamodule_hparams_name"] = getattr(dm, "_hparams_name", None)
            checkpoint["datamodule_hyper_parameters"] = _plain(dm.hparams)
        dm_state = dm.state_dict()
        if dm_state:
            checkpoint[type(dm).__qualname__] = dm_state
    if not weights_only:
        trainer._dispatch.call_callbacks("on_save_checkpoint", checkpoint)
    else:
        # callbacks that decide what the model's weights are (weight averaging) edit weights-only files too
        for cb in trainer.callbacks:
            if getattr(cb, "_saves_into_weights_only_checkpoints", False):
                cb.on_save_checkpoint(trainer, module, checkpoint)
    trainer._call_module("on_save_checkpoint", checkpoint)
    if dm is not None:
        dm.on_save_checkpoint(checkpoint)
    return checkpoint


def _progress(ready: int, started: Optional[int] = None, processed: Optional[int] = None,
              completed: Optional[int] = None) -> dict[str, int]:
    """One tracker in Lightning's progress format (the keys depend on which counters it has)."""
    out = {"ready": int(ready), "completed": int(ready if completed is None else completed)}
    if started is not None:
        out["started"] = int(started)
    if processed is not None:
        out["processed"] = int(processed)
    return out


def _lightning_loops(trainer: "Trainer") -> dict[str, Any]:
    """The ``loops`` entry in Lightning's format, built from our loop counters.

    featherlight resumes from its own ``featherlight_loop`` entry; this one lets
    ``lightning.pytorch.Trainer.fit(ckpt_path=...)`` resume a featherlight checkpoint at the same epoch,
    batch and global step. The epoch, batch, optimizer-step and scheduler progress and
    ``_batches_that_stepped`` are what Lightning writes at the same hook (tests compare them). The
    validation progress is approximate: we do not count validation batches, and Lightning reads it only
    to resume inside a validation (``phase == "validating"``, written as such).
    """
    loop = trainer._loop
    epoch, global_step, stepped_batches = int(loop.epoch), int(loop.global_step), int(loop.batches_that_stepped)
    total, batch_idx, phase = int(loop.total_batch_idx), int(loop.batch_idx), loop.phase
    module = trainer.lightning_module
    automatic = module is None or module.automatic_optimization
    fitting = trainer.state.fn == "fit"
    mid_epoch = fitting and phase in ("batch", "ended", "validating", "validated", "done", "epoch_end")

    val_progress = {"total": _progress(0, 0, 0), "current": _progress(0, 0, 0), "is_last_batch": False}
    counted_epoch = epoch  # the epoch the per-epoch ("current") counters describe
    if not mid_epoch:
        epoch_progress = {"total": _progress(epoch, epoch, epoch), "current": _progress(epoch, epoch, epoch)}
        # Lightning keeps the finished epoch's per-epoch counts until the next epoch starts; we know them
        # when that epoch ran to its last batch
        n_batches = trainer.num_training_batches
        finished = epoch > 0 and loop.batch_is_last and isinstance(n_batches, (int, float)) \
            and 0 < n_batches < float("inf")
        done_batches, open_window, counted_epoch = (int(n_batches), False, epoch - 1) if finished else (0, False, epoch)
        batch_progress = {"total": _progress(total, total, total), "current": _progress(*(done_batches,) * 3),
                          "is_last_batch": bool(finished)}
    else:
        processed = epoch + 1 if phase == "epoch_end" else epoch
        epoch_progress = {"total": _progress(epoch + 1, epoch + 1, processed, epoch),
                          "current": _progress(epoch + 1, epoch + 1, processed, epoch)}
        if phase == "batch":  # inside the batch: Lightning runs it again
            cur, tot = (batch_idx + 1, batch_idx + 1, batch_idx, batch_idx), (total + 1, total + 1, total, total)
            done_batches, open_window = batch_idx, True
        elif phase == "ended":  # on_train_batch_end: the batch is processed, not yet completed
            cur = (batch_idx + 1, batch_idx + 1, batch_idx + 1, batch_idx)
            tot = (total + 1, total + 1, total + 1, total)
            done_batches, open_window = batch_idx + 1, not loop.batch_stepped
        else:  # validation after the batch, the batch's end, or the epoch's end
            cur, tot = (batch_idx + 1,) * 4, (total,) * 4
            done_batches, open_window = batch_idx + 1, not loop.batch_stepped
        batch_progress = {"total": _progress(*tot), "current": _progress(*cur),
                          "is_last_batch": bool(loop.batch_is_last)}
        if phase == "validated":
            n = sum(int(b) for b in trainer.num_val_batches if b != float("inf"))
            val_progress = {"total": _progress(n, n, n), "current": _progress(n, n, n), "is_last_batch": True}
        elif phase == "validating":  # inside validation: Lightning runs the validation again
            val_progress = {"total": _progress(1, 1, 0, 0), "current": _progress(1, 1, 0, 0), "is_last_batch": False}

    if automatic:
        accumulate = max(int(trainer.accumulate_grad_batches), 1)
        steps_now = done_batches // accumulate + int(bool(loop.batch_is_last) and done_batches % accumulate > 0)
        steps_now = min(steps_now, global_step)
        opened = int(open_window and mid_epoch)
        optim = {"optimizer": {
            "step": {"total": _progress(global_step), "current": _progress(steps_now)},
            "zero_grad": {"total": _progress(global_step + opened, global_step + opened),
                          "current": _progress(steps_now + opened, steps_now + opened)},
        }}
        manual = {"total": _progress(0), "current": _progress(0)}
    else:
        steps_now = global_step  # Lightning never resets this one per epoch
        optim = {"optimizer": {"step": {"total": _progress(0), "current": _progress(0)},
                               "zero_grad": {"total": _progress(0, 0), "current": _progress(0, 0)}}}
        manual = {"total": _progress(global_step), "current": _progress(steps_now)}
    # Lightning counts the scheduler steps it makes (none with manual optimization)
    configs = trainer.lr_scheduler_configs if automatic else []
    sched_total = sum(int(getattr(cfg.scheduler, "last_epoch", 0) or 0) for cfg in configs)
    epoch_stepped = done_batches > 0 and phase != "batch" and bool(loop.batch_is_last) and not open_window
    sched_now = sum(steps_now // max(int(cfg.frequency), 1) if cfg.interval == "step"
                    else int(epoch_stepped and (counted_epoch + 1) % max(int(cfg.frequency), 1) == 0)
                    for cfg in configs)
    sched_now = min(sched_now, sched_total)

    fit_loop = {
        "state_dict": {},
        "epoch_loop.state_dict": {"_batches_that_stepped": stepped_batches},
        "epoch_loop.batch_progress": batch_progress,
        "epoch_loop.scheduler_progress": {"total": _progress(sched_total), "current": _progress(sched_now)},
        "epoch_loop.automatic_optimization.state_dict": {},
        "epoch_loop.automatic_optimization.optim_progress": optim,
        "epoch_loop.manual_optimization.state_dict": {},
        "epoch_loop.manual_optimization.optim_step_progress": manual,
        "epoch_loop.val_loop.state_dict": {},
        "epoch_loop.val_loop.batch_progress": val_progress,
        "epoch_progress": epoch_progress,
    }

    def untouched(is_last_batch: Optional[bool]) -> dict[str, Any]:
        progress: dict[str, Any] = {"total": _progress(0, 0, 0), "current": _progress(0, 0, 0)}
        if is_last_batch is not None:
            progress["is_last_batch"] = is_last_batch
        return {"state_dict": {}, "batch_progress": progress}

    return {"fit_loop": fit_loop, "validate_loop": untouched(False), "test_loop": untouched(False),
            "predict_loop": untouched(None)}


def _loop_state_from_lightning(checkpoint: dict[str, Any], trainer: "Trainer") -> Optional[dict[str, Any]]:
    """Our loop state for a checkpoint Lightning wrote (it has ``loops`` but no ``featherlight_loop``).

    Lightning's progress counters tell the epoch and, for a checkpoint taken mid-epoch (``ModelCheckpoint``
    after validation or every ``n`` steps), the batch and how far it got; the resumed run continues after
    that batch. Lightning records no data order, so the rest of the epoch is drawn afresh (skipping the
    batches already trained on by index, as Lightning runs only the remaining number of batches).
    """
    fit = (checkpoint.get("loops") or {}).get("fit_loop")
    if not isinstance(fit, dict) or "epoch_progress" not in fit:
        return None

    def counters(progress: Any) -> dict[str, int]:
        return {k: int(v) for k, v in ((progress or {}).get("current") or {}).items()}

    def totals(progress: Any) -> dict[str, int]:
        return {k: int(v) for k, v in ((progress or {}).get("total") or {}).items()}

    epoch_now = counters(fit["epoch_progress"])
    batch = fit.get("epoch_loop.batch_progress") or {}
    batch_now, batch_total = counters(batch), totals(batch)
    val_total = totals(fit.get("epoch_loop.val_loop.batch_progress"))
    global_step = int(checkpoint.get("global_step", 0))
    stepped = fit.get("epoch_loop.state_dict", {}).get("_batches_that_stepped")
    state: dict[str, Any] = {
        "epoch": epoch_now.get("processed", int(checkpoint.get("epoch", -1)) + 1),
        "global_step": global_step,
        "batches_that_stepped": int(stepped) if stepped is not None else global_step,
        "total_batch_idx": batch_total.get("completed", 0),
        "batch_idx": 0,
        "phase": "epoch_start",
        "batch_stepped": False,
        "batch_is_last": False,
    }
    ready, processed = batch_now.get("ready", 0), batch_now.get("processed", 0)
    completed = batch_now.get("completed", 0)
    mid_epoch = epoch_now.get("started", 0) > epoch_now.get("processed", 0) and ready > 0
    if not mid_epoch or trainer.state.fn != "fit":
        return state
    is_last = bool(batch.get("is_last_batch", False))
    batch_idx = ready - 1
    module = trainer.lightning_module
    accumulate = max(int(trainer.accumulate_grad_batches), 1)
    window_end = not module.automatic_optimization or (batch_idx + 1) % accumulate == 0 or is_last
    if processed < ready:  # saved inside the batch: it runs again
        phase, window_end = "batch", False
        state["total_batch_idx"] = batch_total.get("processed", 0)
    elif completed < processed:  # on_train_batch_end
        phase = "ended"
    elif val_total.get("started", 0) > val_total.get("processed", 0):  # inside validation: it runs again
        phase = "validating"
    else:  # validation (or the batch) done
        phase = "validated"
    state.update(epoch=epoch_now.get("processed", 0), batch_idx=batch_idx, phase=phase,
                 batch_stepped=window_end, batch_is_last=is_last, sampler={})
    return state


def _plain(hparams: Any) -> Any:
    """hparams as a plain dict (AttributeDict is a dict subclass; plain dicts load with weights_only)."""
    if isinstance(hparams, dict):
        return {k: _plain(v) for k, v in hparams.items()}
    if hasattr(hparams, "items") and not isinstance(hparams, torch.Tensor):
        return {k: _plain(v) for k, v in hparams.items()}
    return hparams


def _rng_to_tensors(states: dict[str, Any]) -> dict[str, Any]:
    """RNG states in a form ``torch.load(weights_only=True)`` reads without any allow-list."""
    out = dict(states)
    if "numpy" in out:
        name, keys, pos, has_gauss, cached = out["numpy"]
        out["numpy"] = [name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
    if "python" in out:
        version, internal, gauss = out["python"]
        out["python"] = [version, torch.tensor(internal, dtype=torch.int64), gauss]
    return out


def _rng_from_tensors(states: dict[str, Any]) -> dict[str, Any]:
    out = dict(states)
    if "numpy" in out and isinstance(out["numpy"], (list, tuple)) and isinstance(out["numpy"][1], torch.Tensor):
        import numpy as np

        name, keys, pos, has_gauss, cached = out["numpy"]
        out["numpy"] = (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    if "python" in out and isinstance(out["python"][1], torch.Tensor):
        version, internal, gauss = out["python"]
        out["python"] = (version, tuple(int(x) for x in internal.tolist()), gauss)
    return out


def _save_checkpoint(trainer: "Trainer", filepath: Union[str, os.PathLike], weights_only: bool = False) -> None:
    """Dump the state and write it atomically on global rank zero; every rank waits for the write."""
    checkpoint = _dump_checkpoint(trainer, weights_only)
    save = getattr(trainer.strategy, "save_checkpoint", None)
    if save is not None:
        save(checkpoint, filepath)  # every rank takes part (FSDP writes its shards or gathers)
    elif trainer.is_global_zero:
        _atomic_torch_save(checkpoint, filepath)
    trainer.strategy.barrier("save_checkpoint")


class _WritebackStream:
    """A binary file wrapper that asks the kernel to start writing each ``chunk`` to disk as soon as it is
    written (``posix_fadvise(DONTNEED)`` starts writeback of dirty pages without waiting for it), so the
    final ``fsync`` of an atomic write overlaps with serialising the rest instead of following it.

    Only a hint: the data is as durable as before (the fsync still decides), and on platforms without
    ``posix_fadvise`` this is a plain pass-through.
    """

    _CHUNK = 16 << 20

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._written = 0
        self._started = 0
        try:
            self._fd: Optional[int] = f.fileno() if hasattr(os, "posix_fadvise") else None
        except (AttributeError, OSError, ValueError):
            self._fd = None

    def write(self, data: Any) -> int:
        n = self._f.write(data)
        self._written += n
        if self._fd is not None and self._written - self._started >= self._CHUNK:
            self._f.flush()
            try:
                os.posix_fadvise(self._fd, self._started, self._written - self._started, os.POSIX_FADV_DONTNEED)
            except OSError:
                self._fd = None  # a filesystem that does not take the hint
            self._started = self._written
        return n

    def flush(self) -> None:
        self._f.flush()


def _atomic_torch_save(obj: Any, filepath: Union[str, os.PathLike]) -> None:
    from featherlight.utilities.io import atomic_write

    filepath = os.fspath(filepath)
    directory = os.path.dirname(os.path.abspath(filepath))
    os.makedirs(directory, exist_ok=True)
    try:
        atomic_write(filepath, lambda f: torch.save(obj, _WritebackStream(f)))
    except Exception as err:
        # A full disk surfaces as an OSError from a write, or as torch's zip writer failing to finish the file
        # with that OSError as its context: report the OSError, naming the checkpoint (not the temporary file).
        cause: Optional[BaseException] = err
        while cause is not None and not (isinstance(cause, OSError) and cause.errno is not None):
            cause = cause.__context__
        if cause is None:
            raise
        assert isinstance(cause, OSError)
        raise OSError(cause.errno, f"{cause.strerror or cause} while writing the checkpoint (any previous file at "
                                   "this path is left as it was)", filepath) from err


# ------------------------------------------------------------------------------------------- reading
def _safe_globals() -> list:
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


def _load_checkpoint_file(path: Union[str, os.PathLike, IO[bytes]], map_location: Any = None,
                          weights_only: bool = True) -> dict[str, Any]:
    """Read a checkpoint. With ``weights_only=True`` (default) no code from the file can run.

    Raises ``FileNotFoundError`` for a missing path and :class:`CheckpointError` (naming the file) for a
    truncated or corrupt file, one that is not a checkpoint, or one that needs arbitrary unpickling (naming
    ``weights_only=False`` as the explicit opt-in).
    """
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "<stream>")
    if isinstance(path, (str, os.PathLike)):
        if not os.path.exists(path):
            raise FileNotFoundError(f"Checkpoint file not found: {name!r}. Check the path (or use ckpt_path='last').")
        if os.path.isdir(path):
            from featherlight.strategies.dcp_io import is_sharded_checkpoint, read_sharded_checkpoint

            if is_sharded_checkpoint(path):
                # FSDP's sharded directory, read whole in this process (any world size can have written it)
                return _map_tensors(read_sharded_checkpoint(path, weights_only=weights_only), map_location)
            raise CheckpointError(
                f"Checkpoint path {name!r} is a directory, not a checkpoint file (nor a sharded checkpoint "
                "directory written by `FSDPStrategy`, which holds a meta.pt).", reason="corrupt")
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files it did not write itself (damaged or foreign files)
            warnings.filterwarnings("ignore", message=".*Detected pickle protocol.*")
            if weights_only:
                with torch.serialization.safe_globals(_safe_globals()):
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
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{name!r} is not a checkpoint: it holds a {type(checkpoint).__name__}, not the dict "
            "`Trainer.save_checkpoint` writes.", reason="corrupt",
        )
    return checkpoint


def _map_tensors(checkpoint: dict[str, Any], map_location: Any) -> dict[str, Any]:
    """``map_location`` (a device or its name) applied to a checkpoint read as CPU tensors."""
    if map_location is None or callable(map_location) or isinstance(map_location, dict):
        return checkpoint  # a function or a remapping of saved locations: the tensors stay where they were read
    from featherlight.utilities.apply_func import apply_to_collection

    device = torch.device(map_location)
    if device.type == "cpu":
        return checkpoint
    return apply_to_collection(checkpoint, torch.Tensor, lambda t: t.to(device))


def _is_checkpoint_path(path: str) -> bool:
    """A checkpoint file, or a sharded checkpoint directory."""
    if os.path.isfile(path):
        return True
    from featherlight.strategies.dcp_io import is_sharded_checkpoint

    return is_sharded_checkpoint(path)


def _checkpoint_mtime(path: str) -> int:
    """When a checkpoint was written: a sharded directory's ``meta.pt`` is written last."""
    from featherlight.strategies.dcp_io import META_NAME

    if os.path.isdir(path):
        path = os.path.join(path, META_NAME)
    return os.stat(path).st_mtime_ns


def _resolve_ckpt_path(trainer: "Trainer", ckpt_path: Any, fn: Any) -> Optional[str]:
    """``"last"``, ``"best"`` or a path, resolved to an existing file (or None with a warning for "last")."""
    if ckpt_path == "best":
        cb = trainer.checkpoint_callback
        if cb is None or not getattr(cb, "best_model_path", ""):
            raise ValueError(
                f'`.{fn.value}(ckpt_path="best")` is set but there is no best checkpoint: no `ModelCheckpoint` '
                "has saved one yet (set `monitor=` to track the best model, or pass a path)."
            )
        return cb.best_model_path
    if ckpt_path == "last":
        candidates = []
        for cb in trainer.checkpoint_callbacks:
            if getattr(cb, "last_model_path", ""):
                candidates.append(cb.last_model_path)
            dirpath = getattr(cb, "dirpath", None)
            if dirpath and os.path.isdir(dirpath):
                candidates += glob.glob(os.path.join(dirpath, "*.ckpt"))
        from featherlight.trainer.interrupt import _checkpoint_path

        candidates.append(_checkpoint_path(trainer))  # where a signal-interrupted run saved itself
        # newest first; on a tie (coarse timestamps) a "last*" file, which ModelCheckpoint writes after the others
        candidates = sorted({c for c in candidates if _is_checkpoint_path(c)}, reverse=True,
                            key=lambda c: (_checkpoint_mtime(c), os.path.basename(c).startswith("last"), c))
        weights_only = getattr(trainer, "_weights_only", True)
        unreadable = []
        for candidate in candidates:
            try:
                checkpoint = _load_checkpoint_file(candidate, map_location="cpu", weights_only=weights_only)
            except CheckpointError as err:
                if err.reason != "corrupt":  # e.g. needs weights_only=False: falling back would hide that
                    raise
                rank_zero_warn(f"Skipping unreadable checkpoint while resolving ckpt_path='last': {err}")
                unreadable.append(candidate)
                continue
            if candidate != candidates[0]:
                rank_zero_warn(f"ckpt_path='last': the newest checkpoint is unreadable; resuming from {candidate!r}.")
            # read once: the restore that follows uses this copy instead of loading the file again
            trainer.__dict__[_PRELOADED] = (candidate, checkpoint)
            return candidate
        if unreadable:
            # starting afresh would quietly drop the run these files belonged to
            raise CheckpointError(
                f'`.{fn.value}(ckpt_path="last")`: every checkpoint found is unreadable ({unreadable}). Move them '
                "away (or pass `ckpt_path=None`) to start a new run.", reason="corrupt",
            )
        rank_zero_warn(f'`.{fn.value}(ckpt_path="last")` is set, but there is no last checkpoint available. '
                       "No checkpoint will be loaded.")
        return None
    path = os.fspath(ckpt_path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path!r}. Check `ckpt_path`.")
    return path


def _restore_module_and_callbacks(trainer: "Trainer", path: str) -> dict[str, Any]:
    """Load ``path`` and restore the module's weights, the datamodule and the callbacks (before
    ``configure_optimizers``, as Lightning does); returns the checkpoint for the training state."""
    preloaded = trainer.__dict__.pop(_PRELOADED, None)
    strategy_load = getattr(trainer.strategy, "load_checkpoint", None)
    if preloaded is not None and preloaded[0] == path:
        checkpoint = preloaded[1]
    elif strategy_load is not None:
        checkpoint = strategy_load(path)  # loads sharded weights in place; its state_dict reloads harmlessly
    else:
        checkpoint = _load_checkpoint_file(path, map_location="cpu",
                                           weights_only=getattr(trainer, "_weights_only", True))
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"{path!r} has no 'state_dict': it is not a model checkpoint.", reason="corrupt")
    module = trainer.lightning_module
    trainer._call_module("on_load_checkpoint", checkpoint)
    _load_module_state(module, checkpoint["state_dict"], module.strict_loading, path)
    dm = trainer.datamodule
    if dm is not None:
        key = type(dm).__qualname__
        if key in checkpoint:
            dm.load_state_dict(checkpoint[key])
        dm.on_load_checkpoint(checkpoint)
    trainer._dispatch.call_callbacks("on_load_checkpoint", checkpoint)
    states = checkpoint.get("callbacks", {})
    for cb in trainer.callbacks:
        state = states.get(cb.state_key, states.get(getattr(cb, "_legacy_state_key", None)))
        if state:
            cb.load_state_dict(state)
    return checkpoint


def _restore_training_state(trainer: "Trainer", checkpoint: dict[str, Any], path: str) -> None:
    """Optimizers, schedulers, precision, loop position and RNG states (after ``on_fit_start``)."""
    optimizer_states = checkpoint.get("optimizer_states")
    if optimizer_states is None:
        raise KeyError(
            f"Trying to restore optimizer state but checkpoint {path!r} contains only the model (saved with "
            "`weights_only=True`). Load the weights with `Model.load_from_checkpoint` and fit without `ckpt_path`."
        )
    load_optimizers = getattr(trainer.strategy, "load_optimizer_states", None)
    if load_optimizers is not None:
        load_optimizers(checkpoint, trainer.optimizers)  # sharded optimizer state
    else:
        module = trainer.lightning_module
        for opt, state in zip(trainer.optimizers, optimizer_states):
            # FSDP checkpoints (sharded or full) key optimizer states by parameter name; torch wants positions
            opt.load_state_dict(_optimizer_state_by_index(module, opt, state, path))
            _optimizer_state_to_device(opt, trainer.strategy.root_device)
    for cfg, state in zip(trainer.lr_scheduler_configs, checkpoint.get("lr_schedulers", [])):
        cfg.scheduler.load_state_dict(state)
    precision = trainer.precision_plugin
    if type(precision).__qualname__ in checkpoint:
        precision.load_state_dict(checkpoint[type(precision).__qualname__])
    elif "native_amp_scaling_state" in checkpoint:  # GradScaler state in Lightning 1.x checkpoints
        precision.load_state_dict(checkpoint["native_amp_scaling_state"])
    if LOOP_KEY not in checkpoint:  # written by Lightning: read its progress counters
        lightning_state = _loop_state_from_lightning(checkpoint, trainer)
        if lightning_state is not None:
            checkpoint = {**checkpoint, LOOP_KEY: lightning_state}
    trainer._loop._restore_checkpoint_state(checkpoint, trainer)
    if RNG_KEY in checkpoint:
        from featherlight.utilities.seed import _set_rng_states

        _set_rng_states(_rng_from_tensors(checkpoint[RNG_KEY]))
    rank_zero_info(f"Restored all states from the checkpoint at {path}")


def _param_names(module: torch.nn.Module) -> dict[int, list[str]]:
    """Every name of each parameter of ``module`` (shared parameters have several), ``_orig_mod.`` removed."""
    names: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name.replace("_orig_mod.", ""))
    return names


def _keyed_by_name(state: Any) -> bool:
    groups = state.get("param_groups") if isinstance(state, Mapping) else None
    return bool(groups) and any(isinstance(p, str) for g in groups for p in g.get("params", ()))


def _optimizer_state_by_index(module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                              path: Any = None) -> dict[str, Any]:
    """An optimizer state keyed by parameter name (what ``torch.distributed.checkpoint.state_dict``'s
    ``get_optimizer_state_dict`` gives, i.e. FSDP checkpoints) keyed by position, as
    ``Optimizer.load_state_dict`` wants it. A state keyed by position is returned as it is."""
    if not _keyed_by_name(state):
        return state
    names = _param_names(module)
    saved_names = {p for g in state["param_groups"] for p in g["params"]}
    position: dict[str, int] = {}
    index = 0
    for group in optimizer.param_groups:
        for param in group["params"]:
            name = next((n for n in names.get(id(param), ()) if n in saved_names), None)
            if name is None:
                raise CheckpointError(
                    f"The optimizer state in {path!r} is keyed by parameter name and has no entry for the "
                    f"optimizer's parameter {names.get(id(param), ['<not in the module>'])[0]!r}: the model or "
                    "`configure_optimizers` differs from the run that saved it."
                )
            position[name] = index
            index += 1
    extra = sorted(saved_names - set(position))
    if extra:
        raise CheckpointError(
            f"The optimizer state in {path!r} has entries for parameters this optimizer does not have ({extra[:5]}): "
            "the model or `configure_optimizers` differs from the run that saved it."
        )
    by_index: dict[str, Any] = {
        "state": {position[n]: v for n, v in state.get("state", {}).items() if n in position},
        "param_groups": [dict(g, params=[position[p] for p in g["params"]]) for g in state["param_groups"]],
    }
    return by_index


def _optimizer_state_by_name(module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             state: dict[str, Any]) -> dict[str, Any]:
    """The reverse of :func:`_optimizer_state_by_index`: a state keyed by position (``Optimizer.state_dict``, e.g.
    a single-process checkpoint) keyed by parameter name, for ``set_optimizer_state_dict``."""
    if _keyed_by_name(state) or not state.get("param_groups"):
        return state
    names = _param_names(module)
    by_position = [names[id(p)][0] for g in optimizer.param_groups for p in g["params"]]
    saved = [int(i) for g in state["param_groups"] for i in g["params"]]
    if len(saved) != len(by_position) or (saved and max(saved) >= len(by_position)):
        raise CheckpointError(
            f"The saved optimizer state covers {len(saved)} parameters, the optimizer has {len(by_position)}: the "
            "model or `configure_optimizers` differs from the run that saved it."
        )
    return {
        "state": {by_position[int(i)]: v for i, v in state.get("state", {}).items()},
        "param_groups": [dict(g, params=[by_position[int(i)] for i in g["params"]]) for g in state["param_groups"]],
    }


def _optimizer_state_to_device(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for k, v in state.items():
            # `step` stays on CPU for optimizers that keep it there (Adam's capturable=False)
            if isinstance(v, torch.Tensor) and k != "step":
                state[k] = v.to(device)


def _match_compiled_keys(module: torch.nn.Module, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints hold plain names; a module with ``torch.compile``d parts expects ``_orig_mod.`` in them."""
    own = [k for k in module.state_dict() if "_orig_mod." in k]
    if not own:
        return state_dict
    plain_to_own = {k.replace("_orig_mod.", ""): k for k in own}
    return type(state_dict)((plain_to_own.get(k, k), v) for k, v in state_dict.items())


def _load_module_state(module: torch.nn.Module, state_dict: dict[str, Any], strict: bool, path: Any) -> None:
    try:
        keys = module.load_state_dict(_match_compiled_keys(module, state_dict), strict=False)
    except RuntimeError as err:  # shapes differ: torch's message lists them
        raise RuntimeError(
            f"The weights in {path!r} do not fit {type(module).__name__}: {err}\nThe model was probably built with "
            "other hyperparameters than the checkpoint's; check them (keyword arguments to `load_from_checkpoint` "
            "override the saved ones)."
        ) from None
    missing, unexpected = list(keys.missing_keys), list(keys.unexpected_keys)
    if not (missing or unexpected):
        return
    detail = ""
    if missing:
        detail += f"\n  missing keys (in the model, not in the checkpoint): {missing[:10]}{' ...' if len(missing) > 10 else ''}"
    if unexpected:
        detail += f"\n  unexpected keys (in the checkpoint, not in the model): {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
    if strict:
        raise RuntimeError(
            f"The checkpoint {path!r} does not match {type(module).__name__}:{detail}\nFix the model definition, or "
            "load with `strict=False` (module attribute `strict_loading = False` for trainer resumes)."
        )
    rank_zero_warn(f"Loaded {path!r} with strict=False; keys that did not match:{detail}")


# ------------------------------------------------------------------------------------------- load_from_checkpoint
# keys LightningCLI adds to hparams to rebuild a class by import path; we never import from a checkpoint
_INSTANTIATOR_KEYS = ("_instantiator", "_class_path")


def _init_kwargs(cls: type, checkpoint: dict[str, Any], hparams_key: str, name_key: str, hparams_file: Any,
                 overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The keyword arguments to rebuild ``cls`` with, and the hyperparameters they came from.

    The saved hyperparameters (replaced by ``hparams_file`` when given, as Lightning does), updated with
    ``overrides``; if they were saved from one config object (``save_hyperparameters(config)``), they are
    passed back as that ``__init__`` argument (an :class:`AttributeDict`: item and attribute access both
    work), overrides naming ``__init__`` arguments applying on top.
    """
    from featherlight.utilities.parsing import AttributeDict

    saved = checkpoint.get(hparams_key)
    hparams: dict[str, Any] = dict(saved) if isinstance(saved, Mapping) else {}
    if hparams_file is not None:
        from featherlight.core.saving import load_hparams_from_yaml

        ext = os.fspath(hparams_file).rsplit(".", 1)[-1].lower()
        if ext not in ("yaml", "yml"):
            raise ValueError(f"`hparams_file` must be a .yaml or .yml file, got {os.fspath(hparams_file)!r}.")
        hparams = dict(load_hparams_from_yaml(hparams_file))
    hparams.update(overrides)
    for key in _INSTANTIATOR_KEYS:
        hparams.pop(key, None)
    params = inspect.signature(cls.__init__).parameters
    names = [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    config_name = checkpoint.get(name_key)
    kwargs: dict[str, Any] = dict(hparams)
    if config_name and config_name in names:
        kwargs = {config_name: AttributeDict(hparams)}
        kwargs.update((k, v) for k, v in overrides.items() if k in names)
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in names}
    return kwargs, hparams


# featherlight's own LightningCLI instantiator (and Lightning's name for it, in checkpoints Lightning wrote)
_CLI_INSTANTIATORS = ("featherlight.cli.instantiate_module", "lightning.pytorch.cli.instantiate_module",
                      "pytorch_lightning.cli.instantiate_module")


def _rebuild_with_cli(cls: type, saved: Any, hparams_file: Any, overrides: dict[str, Any]) -> Any:
    """A module LightningCLI built recorded its parsed config (``class_path`` entries, optimizer callables) and
    ``_instantiator``; rebuild it through the CLI so those come back as objects. Only the CLI's own instantiator
    is honoured (the checkpoint never chooses the code to run), and a ``_class_path`` only within subclasses of
    ``cls``. ``None`` when the hyperparameters were not recorded by the CLI."""
    if hparams_file is not None or not isinstance(saved, Mapping):
        return None
    if saved.get("_instantiator") not in _CLI_INSTANTIATORS:
        return None
    from featherlight.cli import instantiate_module

    config = {k: v for k, v in saved.items() if k != "_instantiator"}
    config.update(overrides)
    return instantiate_module(cls, config)


def _instantiate(cls: type, kwargs: dict[str, Any], hparams: dict[str, Any], path: Any) -> Any:
    try:
        return cls(**kwargs)
    except TypeError as err:
        params = inspect.signature(cls.__init__).parameters
        init_args = [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        missing = [n for n in init_args if params[n].default is params[n].empty and n not in kwargs]
        example = ", ".join(f"{n}=..." for n in missing) or "name=value"
        raise TypeError(
            f"Could not rebuild {cls.__name__} from the hyperparameters saved in {_describe(path)} ({err}). "
            f"Saved hyperparameters: {sorted(hparams)}; {cls.__name__}.__init__ takes {init_args}"
            + (f" and needs {missing}" if missing else "")
            + f". If an argument was renamed or added, pass it: `{cls.__name__}.load_from_checkpoint(path, "
            f"{example})` (keyword arguments override the saved hyperparameters)."
        ) from None


def _describe(path: Any) -> str:
    return repr(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else repr(getattr(path, "name", "<stream>"))


def _default_map_location(storage: Any, location: str) -> Any:
    """Tensors saved on an accelerator this machine lacks load on the CPU; the others where they were saved."""
    device_type = location.split(":")[0]
    if device_type in ("cpu", "meta"):
        return None
    module = getattr(torch, device_type, None)
    available = getattr(module, "is_available", None)
    if callable(available) and available():
        return None
    return storage.cpu()


def _is_overridden(obj: Any, name: str, base: type) -> bool:
    return getattr(type(obj), name, None) is not getattr(base, name, None)


def _load_module_from_checkpoint(cls: type, path: Any, map_location: Any, hparams_file: Any,
                                 strict: Optional[bool], weights_only: bool = True, **kwargs: Any) -> Any:
    from featherlight.core.module import LightningModule

    checkpoint = _load_checkpoint_file(path, map_location=map_location or _default_map_location,
                                       weights_only=weights_only)
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"{_describe(path)} has no 'state_dict': it is not a model checkpoint.", reason="corrupt")
    model = _rebuild_with_cli(cls, checkpoint.get("hyper_parameters"), hparams_file, kwargs)
    if model is None:
        init_kwargs, hparams = _init_kwargs(cls, checkpoint, "hyper_parameters", "hparams_name", hparams_file, kwargs)
        model = _instantiate(cls, init_kwargs, hparams, path)
    if model._strict_loading is not None and strict is not None and strict != model.strict_loading:
        raise ValueError(
            f"You set `.load_from_checkpoint(..., strict={strict!r})`, which conflicts with "
            f"`{cls.__name__}.strict_loading={model.strict_loading!r}`. Set the same value for both."
        )
    strict = model.strict_loading if strict is None else strict
    if _is_overridden(model, "configure_model", LightningModule):
        model.configure_model()
    model.on_load_checkpoint(checkpoint)
    state_dict = checkpoint["state_dict"]
    _load_module_state(model, state_dict, strict, path)
    if not state_dict:
        rank_zero_warn(f"The state dict in {_describe(path)} contains no parameters.")
        return model
    # the model goes where the checkpoint's tensors were loaded (map_location decides), as in Lightning
    device = next((t.device for t in state_dict.values() if isinstance(t, torch.Tensor)), None)
    return model.to(device) if device is not None else model


def _load_datamodule_from_checkpoint(cls: type, path: Any, map_location: Any, hparams_file: Any,
                                     weights_only: bool = True, **kwargs: Any) -> Any:
    checkpoint = _load_checkpoint_file(path, map_location=map_location or _default_map_location,
                                       weights_only=weights_only)
    dm = _rebuild_with_cli(cls, checkpoint.get("datamodule_hyper_parameters"), hparams_file, kwargs)
    if dm is None:
        init_kwargs, hparams = _init_kwargs(cls, checkpoint, "datamodule_hyper_parameters", "datamodule_hparams_name",
                                            hparams_file, kwargs)
        dm = _instantiate(cls, init_kwargs, hparams, path)
    key = cls.__qualname__
    if key in checkpoint:
        dm.load_state_dict(checkpoint[key])
    return dm
