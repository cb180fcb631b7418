"""The seed guide's pitfalls, noticed at run time: each check runs once (at setup, in the first batches, at the
first epoch end, or on the error path), warns once with the fix, and is silent on the good version.

Nothing here runs per step for the whole run: ``watch_batches`` looks at the first three batches of the first
epoch only, then hands the loader's batches through untouched.
"""
from __future__ import annotations

import inspect
import itertools
import os
from collections.abc import Iterable, Iterator
from typing import Any, Optional

import torch
from torch import Tensor, nn

from featherlight.utilities.apply_func import apply_to_collection

#: a plain tensor attribute of the module at least this large is "data" when every rank builds it (bytes)
LARGE_TENSOR_BYTES = 64 * 2**20
_WATCHED_BATCHES = 3
#: device types whose values a ``.item()`` reads without waiting for a device (the sync watch is off there)
_HOST_DEVICES = ("cpu", "meta")
#: Tensor methods that copy a value to the host: on an accelerator each waits for the device's queued work
_SYNCING = ("item", "tolist", "cpu", "__bool__", "__float__", "__int__")
#: reads made from these folders (featherlight's logging at its interval, torch's printing) are not the user's
_OWN_DIRS = tuple(os.path.dirname(os.path.abspath(f)) + os.sep
                  for f in (os.path.dirname(os.path.abspath(__file__)), torch.__file__))


def _module_attributes(module: nn.Module) -> Iterator[tuple[str, Any]]:
    """The module's own attributes: not its parameters, buffers or submodules (torch keeps those apart)."""
    for name, value in vars(module).items():
        if not name.startswith("__") and name not in ("_parameters", "_buffers", "_modules", "trainer", "_trainer"):
            yield name, value


def _tensors_in(value: Any, depth: int = 2, limit: int = 64) -> list[Tensor]:
    """Tensors in ``value`` or in lists/tuples/dicts of it, ``depth`` levels down (the first and last ``limit``
    entries of each: a list that grows every step shows its graph in its newest entries)."""
    if isinstance(value, Tensor):
        return [value]
    if depth == 0:
        return []
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, (list, tuple)):
        return []
    items = list(value) if len(value) <= 2 * limit else list(value[:limit]) + list(value[-limit:])
    return [t for item in items for t in _tensors_in(item, depth - 1, limit)]


def check_graph_kept_on_module(trainer: Any) -> None:
    """At the end of the first training epoch: module attributes that hold tensors still attached to their autograd
    graph (``self.losses.append(loss)``) keep every step's graph alive, so memory grows until the run fails."""
    module = trainer.lightning_module
    names = [name for name, value in _module_attributes(module)
             if any(t.grad_fn is not None for t in _tensors_in(value))]
    if names:
        listed = ", ".join(f"`self.{n}`" for n in names)
        trainer.warnings.warn(
            f"{listed} of `{type(module).__name__}` still hold(s) tensors attached to their autograd graph at the end of "
            "the first epoch: each keeps its step's whole graph (activations included) alive, so memory grows every "
            "step. Store `loss.detach()` (or `loss.item()` at an epoch end), or log the value with `self.log(...)`."
        )


def check_data_on_module(trainer: Any) -> None:
    """Under several processes: a dataset or a large tensor that ``__init__`` put on the module is built (and held in
    memory) by every rank; a ``LightningDataModule`` builds data in ``prepare_data`` (once) and ``setup`` (per rank,
    only what that rank needs)."""
    if trainer.world_size <= 1:
        return
    from torch.utils.data import Dataset

    module = trainer.lightning_module
    found = []
    for name, value in _module_attributes(module):
        if isinstance(value, Dataset):
            found.append(f"`self.{name}` (a {type(value).__name__})")
        elif isinstance(value, Tensor) and not isinstance(value, nn.Parameter) and \
                value.numel() * value.element_size() >= LARGE_TENSOR_BYTES:
            found.append(f"`self.{name}` (a tensor of {value.numel() * value.element_size() / 2**20:.0f} MiB)")
    if found:
        trainer.warnings.warn(
            f"{', '.join(found)} of `{type(module).__name__}` is data the module holds from `__init__`: with "
            f"{trainer.world_size} processes every rank builds and keeps its own copy. Build datasets in a "
            "`LightningDataModule`: download in `prepare_data` (runs once) and create them in `setup` (per rank), "
            "and return loaders from its `*_dataloader` methods."
        )


def watch_batches(trainer: Any, batches: Iterable[tuple[int, Any, bool]]) -> Iterator[tuple[int, Any, bool]]:
    """The first epoch's batches, the first three watched, then the rest straight from the loader's iterator
    (``itertools.chain``: no Python frame per batch).

    Two things are watched while a watched batch's step runs:

    * in-place edits (``x.mul_(2)``, ``batch[0] += 1``) of a tensor the loader hands out again (a view into a cached
      dataset, a batch ``overfit_batches`` repeats): they change the data for every later epoch. A collated batch
      is a fresh tensor each time, so editing it is harmless and stays silent;
    * on an accelerator, a value the user's code reads to the host (``.item()``, ``.cpu()``, ``.tolist()``,
      ``float(t)``, ``if t:``) at the same place in every watched step: each read waits for the device.
    """
    iterator = iter(batches)
    return itertools.chain(_watch_first(trainer, iterator), iterator)


def _watch_first(trainer: Any, iterator: Iterator[tuple[int, Any, bool]]) -> Iterator[tuple[int, Any, bool]]:
    syncs = _SyncWatch(trainer) if trainer.strategy.root_device.type not in _HOST_DEVICES else None
    for item in itertools.islice(iterator, _WATCHED_BATCHES):
        tensors: list[Tensor] = []
        apply_to_collection(item[1], Tensor, tensors.append)
        versions = [t._version for t in tensors]
        if syncs is not None:
            syncs.start_step()
        try:
            yield item  # the step runs while this generator waits here
        finally:
            if syncs is not None:
                syncs.stop()
        edited = [t for t, v in zip(tensors, versions) if t._version != v]
        if edited and (trainer.overfit_batches or any(t._is_view() for t in edited)):
            trainer.warnings.warn(
                "`training_step` changed its batch in place (e.g. `x.mul_(2)` or `batch[0] += 1`), and the loader "
                "hands the same tensors out again (a view into a cached dataset, or `overfit_batches`): every later "
                "epoch trains on the edited data. Edit a copy (`x = x * 2`, or `x = x.clone()` first).",
            )
    if syncs is not None:
        syncs.report()


class _SyncWatch:
    """Host reads of device values made by the user's code during the watched steps, by (hook, file, line).

    The Tensor methods in ``_SYNCING`` are wrapped only while a watched step runs (``start_step``/``stop``; the
    trainer also calls ``stop_sync_watch`` when a run ends, in case the step raised). Reads made inside torch or
    featherlight (printing, logging at its interval) are not the user's and are not counted.
    """

    active: Optional["_SyncWatch"] = None

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.steps: list[set[tuple[str, str, str, int]]] = []
        self.saved: dict[str, Any] = {}

    def start_step(self) -> None:
        self.steps.append(set())
        seen, hooks = self.steps[-1], self.trainer.hooks
        for name in _SYNCING:
            original = getattr(torch.Tensor, name)
            self.saved[name] = torch.Tensor.__dict__.get(name)
            setattr(torch.Tensor, name, _counting(original, name, seen, hooks))
        _SyncWatch.active = self

    def stop(self) -> None:
        for name, own in self.saved.items():
            if own is None:
                delattr(torch.Tensor, name)  # it was TensorBase's: inherit it again
            else:
                setattr(torch.Tensor, name, own)
        self.saved.clear()
        _SyncWatch.active = None

    def report(self) -> None:
        """Places that read a device value in every watched step: one warning naming each hook and line."""
        if len(self.steps) < _WATCHED_BATCHES:
            return  # an epoch too short to say "every step"
        every = set.intersection(*self.steps)
        if not every:
            return
        device = self.trainer.strategy.root_device.type
        places = "; ".join(f"`{hook}` ({os.path.basename(file)}:{line}, `.{method}()`)"
                           for hook, method, file, line in sorted(every, key=lambda k: (k[2], k[3])))
        self.trainer.warnings.warn(
            f"{places} {'reads' if len(every) == 1 else 'read'} a {device} tensor's value to the host on every step: each read waits until the "
            "device has finished its queued work, so the device idles once per step. Log the tensor itself with "
            "`self.log(...)` (featherlight reduces logged values at the logging interval, not per step), keep running "
            "values as tensors on the device, and call `.item()` at an epoch end."
        )


def _counting(original: Any, method: str, seen: set, hooks: Any) -> Any:
    label = method.strip("_")

    def wrapper(self: Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.device.type not in _HOST_DEVICES:
            caller = inspect.currentframe().f_back  # type: ignore[union-attr]
            file = caller.f_code.co_filename
            if not file.startswith(_OWN_DIRS):
                seen.add((hooks.current or caller.f_code.co_name, label, file, caller.f_lineno))
        return original(self, *args, **kwargs)

    return wrapper


def stop_sync_watch() -> None:
    """Undo the watch's wrapping if a run ended inside a watched step (its generator may be kept alive by a
    traceback)."""
    if _SyncWatch.active is not None:
        _SyncWatch.active.stop()


def device_hint(exc: BaseException, hook: Optional[str]) -> None:
    """On the error path: an exception from a step that moved data to CUDA by hand on a machine (or strategy) where
    that is wrong gets a note naming the fix (the exception itself is unchanged)."""
    text = str(exc)
    if hook is None or not any(s in text for s in ("Torch not compiled with CUDA enabled", "Found no NVIDIA driver",
                                                   "Expected all tensors to be on the same device")):
        return
    note = (f"(featherlight) `{hook}` moved a tensor to a device by hand (`.cuda()`, `.to('cuda')`)? The Trainer puts "
            "the module and the batch on its device: create new tensors with `device=self.device` or "
            "`torch.zeros_like(x)` / `y.type_as(x)`, and leave the batch where it arrives.")
    if hasattr(exc, "add_note"):  # Python >= 3.11: printed under the traceback
        exc.add_note(note)
    elif exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]}\n{note}", *exc.args[1:])
