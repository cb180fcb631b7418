"""Batch-size search: run a few steps at growing batch sizes until one runs out of memory.

``power`` doubles the size after each trial that fits and keeps the last one that did;
``binsearch`` doubles the same way, then bisects between the largest size that fit and the
smallest that did not. A trial is ``steps_per_trial`` optimizer steps of the real training loop (or
evaluation batches) with freshly built dataloaders, run and undone by the sandbox in
:mod:`featherlight.tuner.trials`.

The search stops at the data: the dataloader cannot make a batch larger than the dataset, so a size
at or above the number of samples is the last one tried and the result never exceeds it (without
this, on a CPU, where running out of memory does not happen in practice, the search would double
up to ``max_val``). The result is a size that was run, less the ``binsearch`` safety ``margin`` (5% by
default, as in Lightning).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from torch.utils.data import DataLoader, IterableDataset

from featherlight.callbacks.callback import Callback
from featherlight.trainer import eval_loop
from featherlight.trainer.data import _MaxSizeCycle
from featherlight.tuner.trials import (
    _attr_holders,
    _free_memory,
    _get_attr,
    _has_attr,
    _is_oom_error,
    _run_fit_trial,
    _set_attr,
    _trial_flags,
    _TrialSandbox,
)
from featherlight.utilities.enums import RunningStage
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from featherlight.trainer.trainer import Trainer

_PREFIX = {"fit": "train", "validate": "val", "test": "test", "predict": "predict"}
_HOOK = {"train": "train_dataloader", "val": "val_dataloader", "test": "test_dataloader",
         "predict": "predict_dataloader"}


def _check_loaders_not_given(given_loaders: Any, method: str, batch_arg_name: str) -> None:
    """Loaders passed to ``fit`` cannot be resized: Lightning's error. Loaders passed to an evaluation entry
    point are searched as they are (Lightning does the same), with a warning that the result cannot apply."""
    if given_loaders is None:
        return
    prefix = _PREFIX.get(method, "train")
    arg = "train_dataloaders" if method == "fit" else "dataloaders"
    hint = (f"Build the loader in a `{_HOOK[prefix]}()` hook of your LightningModule or LightningDataModule that "
            f"reads `self.{batch_arg_name}`, e.g. `return DataLoader(dataset, batch_size=self.{batch_arg_name})`, "
            f"and don't pass `{arg}`.")
    if method == "fit":
        raise MisconfigurationException(
            "The Batch size finder cannot be used with dataloaders passed directly to `.fit()`. Please disable the "
            "feature or incorporate the dataloader into your LightningModule or LightningDataModule. " + hint
        )
    rank_zero_warn(
        f"The batch size finder cannot resize dataloaders passed directly to `.{method}({arg}=...)`: the search "
        "runs on them as they are, so its result does not measure anything. " + hint
    )


def _check_batch_size_attr(model: Any, batch_arg_name: str, datamodule: Any, method: str) -> None:
    """The batch size must live in an attribute the dataloader hook can read."""
    if not _has_attr(model, batch_arg_name, datamodule):
        prefix = _PREFIX.get(method, "train")
        raise MisconfigurationException(
            f"Field {batch_arg_name} not found in `model`, `datamodule`, nor their `hparams` attributes. The batch "
            f"size finder needs the batch size in one of them (e.g. `self.{batch_arg_name} = 32` in `__init__`, or "
            f"`save_hyperparameters()` with a `{batch_arg_name}` argument), read by the `{_HOOK[prefix]}()` hook; "
            "or pass `batch_arg_name=` with the name of your attribute."
        )


def _check_single_eval_loader(trainer: "Trainer", prefix: str) -> None:
    """An evaluation search sizes one dataloader (the entry point has loaded them by now)."""
    if len(getattr(trainer, f"num_{prefix}_batches")) > 1:
        raise MisconfigurationException(
            f"The Batch size finder cannot be used with multiple {prefix} dataloaders. Tune with a "
            f"`{_HOOK[prefix]}()` that returns one dataloader, then use that batch size for all of them."
        )


@dataclass
class _Outcome:
    size: int  # the batch size that ran (or failed)
    fitted: bool
    at_end: bool = False  # no larger batch can exist: the data (or max_val) is reached
    reason: str = ""


class _BatchProbe(Callback):
    """Counts the batches a trial ran and the largest batch it saw."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.batches = 0
        self.largest: Optional[int] = None

    def _see(self, batch: Any) -> None:
        from featherlight.utilities.apply_func import extract_batch_size

        self.batches += 1
        try:
            size = extract_batch_size(batch)
        except Exception:  # a batch without tensors: the length check below just does not apply
            return
        self.largest = size if self.largest is None else max(self.largest, size)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._see(batch)

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, *args: Any) -> None:
        self._see(batch)

    def on_test_batch_start(self, trainer: Any, pl_module: Any, batch: Any, *args: Any) -> None:
        self._see(batch)

    def on_predict_batch_start(self, trainer: Any, pl_module: Any, batch: Any, *args: Any) -> None:
        self._see(batch)


def _samples_per_epoch(loader: Any) -> Optional[int]:
    """How many samples one pass over ``loader`` yields, when that is known without iterating it."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        return None
    if isinstance(loader, DataLoader) and not isinstance(dataset, IterableDataset):
        try:
            return len(loader.sampler)  # type: ignore[arg-type]
        except TypeError:
            pass
    try:
        return len(dataset)
    except (TypeError, NotImplementedError):
        return None


def _loader_batch_size(loader: Any) -> Optional[int]:
    size = getattr(loader, "batch_size", None)
    if size is None:
        size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    return size if isinstance(size, int) else None


class _BatchSizeTrials(_TrialSandbox):
    """Runs one trial per batch size inside the trainer's current run."""

    def __init__(self, trainer: "Trainer", fn: str, steps_per_trial: int, batch_arg_name: str, max_val: int) -> None:
        self.fn = fn
        self.prefix = _PREFIX[fn]
        self.batch_arg_name = batch_arg_name
        self.max_val = max_val
        self.probe = _BatchProbe()
        self.length: Optional[int] = None  # samples per pass, once a load has told us
        self._warned_fixed_loader = False
        if fn == "fit":
            flags = _trial_flags(trainer, steps_per_trial)
        else:
            flags = {f"limit_{self.prefix}_batches": steps_per_trial}
        super().__init__(trainer, [self.probe], flags)

    def _load(self, size: int) -> tuple[list, list]:
        trainer = self.trainer
        _set_attr(trainer.lightning_module, self.batch_arg_name, size)
        self.begin_trial()
        if self.fn == "fit":
            trainer.data.load_train()
            loader = trainer.data.train_iterable
            loaders = list(loader.flattened) if isinstance(loader, _MaxSizeCycle) else [loader]
            limits: list = []
        else:
            loaders, limits = trainer.data.load_eval(self.prefix)
            if len(loaders) > 1:
                raise MisconfigurationException(
                    f"The batch size finder cannot be used with multiple {self.prefix} dataloaders."
                )
            if not loaders:
                raise MisconfigurationException(
                    f"The batch size finder found no {self.prefix} dataloader: define `{_HOOK[self.prefix]}()`."
                )
        for loader in loaders:
            used = _loader_batch_size(loader)
            if used is not None and used != size and not self._warned_fixed_loader:
                # Lightning runs such a search silently; it is not an error, but its result means nothing
                self._warned_fixed_loader = True
                rank_zero_warn(
                    f"The batch size finder set `{self.batch_arg_name}={size}`, but `{_HOOK[self.prefix]}()` returned "
                    f"a DataLoader with batch_size={used}: the search does not change the loader's batch size, so "
                    "its result measures nothing. Build the DataLoader from the attribute, e.g. "
                    f"`DataLoader(dataset, batch_size=self.{self.batch_arg_name})` (or `self.hparams."
                    f"{self.batch_arg_name}`), so that the finder can change it."
                )
        return loaders, limits

    def clamp(self, size: int) -> int:
        """``size`` within ``[1, max_val]`` and, when known, the number of samples."""
        size = max(1, min(int(size), self.max_val))
        return min(size, self.length) if self.length else size

    def run(self, size: int) -> _Outcome:
        """One trial at ``size`` (lowered to the number of samples when the data is smaller)."""
        size = self.clamp(size)
        loaders, limits = self._load(size)
        lengths = [_samples_per_epoch(dl) for dl in loaders]
        length = max(lengths) if lengths and all(n is not None for n in lengths) else None
        self.length = length
        if length is not None and 0 < length < size:
            rank_zero_info(f"Batch size {size} is larger than the dataset ({length} samples); trying {length}.")
            size = length
            loaders, limits = self._load(size)
        at_end = size >= self.max_val or (length is not None and size >= length)
        self.probe.reset()
        out_of_memory = False
        try:
            self._run_loop(loaders, limits)
        except RuntimeError as err:
            if not _is_oom_error(err):
                raise
            out_of_memory = True  # the exception (and the frames holding activations) is released here
        if out_of_memory:
            _free_memory(force=True)
            return _Outcome(size, fitted=False, reason="ran out of memory")
        if self.probe.batches == 0:
            return _Outcome(size, fitted=False, reason=f"the {self.prefix} dataloader produced no batch")
        largest = self.probe.largest
        if length is None and largest is not None and largest < size:
            # a loader without a length (iterable dataset): it ran out of samples before filling a batch
            return _Outcome(largest, fitted=True, at_end=True)
        return _Outcome(size, fitted=True, at_end=at_end)

    def _run_loop(self, loaders: list, limits: list) -> None:
        trainer = self.trainer
        if self.fn == "fit":
            _run_fit_trial(trainer)
            return
        if self.fn == "predict":
            eval_loop.run_predict(trainer, loaders, limits, False)
        else:
            stage = RunningStage.VALIDATING if self.fn == "validate" else RunningStage.TESTING
            eval_loop.run_evaluation(trainer, stage, loaders, limits)


def _log_end_of_search(trials: _BatchSizeTrials, size: int) -> None:
    """Why a size that fit is the last one tried (Lightning's INFO lines)."""
    if trials.length is not None and size >= trials.length:
        rank_zero_info(f"The batch size {size} is greater or equal than the length of your dataset: {trials.length}.")
    elif size >= trials.max_val:
        rank_zero_info(f"Reached the maximum batch size limit of {trials.max_val}. Stopping search.")


def _run_power_scaling(trials: _BatchSizeTrials, size: int, max_trials: int) -> Optional[int]:
    """Double after every trial that fits; stop at the first that does not (or at the data's size)."""
    last_fit: Optional[int] = None
    for trial in range(max_trials):
        last = trial + 1 == max_trials  # no "trying" line for a trial that will not run
        outcome = trials.run(size)
        if outcome.fitted:
            last_fit = outcome.size
            if outcome.at_end:
                _log_end_of_search(trials, outcome.size)
                break
            if last:
                break
            size = trials.clamp(outcome.size * 2)
            rank_zero_info(f"Batch size {outcome.size} succeeded, trying batch size {size}")
        else:
            if last_fit is not None:
                rank_zero_info(f"Batch size {outcome.size} failed ({outcome.reason}); keeping {last_fit}")
                break
            _raise_if_nothing_fits(outcome, trials)
            if last:
                break
            size = max(1, outcome.size // 2)
            rank_zero_info(f"Batch size {outcome.size} failed ({outcome.reason}), trying batch size {size}")
    return last_fit


def _run_binsearch_scaling(trials: _BatchSizeTrials, size: int, max_trials: int) -> Optional[int]:
    """Double until a trial fails, then bisect between the largest size that fit and the smallest that failed."""
    low: Optional[int] = None  # largest size that fit
    high: Optional[int] = None  # smallest size that failed
    for trial in range(max_trials):
        last = trial + 1 == max_trials
        outcome = trials.run(size)
        if outcome.fitted:
            low = outcome.size
            if outcome.at_end:
                _log_end_of_search(trials, outcome.size)
                break
            if last or (high is not None and high - low <= 1):
                break
            size = trials.clamp(low * 2) if high is None else (low + high) // 2
            rank_zero_info(f"Batch size {low} succeeded, trying batch size {size}")
        else:
            high = outcome.size
            floor = low or 0
            if high - floor <= 1:
                if low is None:
                    _raise_if_nothing_fits(outcome, trials)
                break
            if last:
                break
            size = (floor + high) // 2
            rank_zero_info(f"Batch size {high} failed ({outcome.reason}), trying batch size {size}")
    return low


def _raise_if_nothing_fits(outcome: _Outcome, trials: _BatchSizeTrials) -> None:
    if outcome.size > 1:
        return
    if outcome.reason == "ran out of memory":
        raise RuntimeError("The batch size finder ran out of memory even with batch size 1.")
    raise MisconfigurationException(f"The batch size finder could not run batch size 1: {outcome.reason}.")


def _scale_batch_size(
    trainer: "Trainer",
    mode: str = "power",
    steps_per_trial: int = 3,
    init_val: int = 2,
    max_trials: int = 25,
    batch_arg_name: str = "batch_size",
    margin: float = 0.05,
    max_val: int = 8192,
) -> Optional[int]:
    """Search the batch size inside the trainer's running fit/validate/test/predict; set and return it.

    ``max_trials=0`` runs no trial: the attribute is set to ``init_val`` (Lightning's result), with a warning.
    ``margin`` is taken off a ``"binsearch"`` result (``int(size * (1 - margin))``, at least 1).
    """
    if trainer.fast_dev_run:
        rank_zero_warn("Skipping batch size scaler since `fast_dev_run` is enabled.")
        return None
    if mode not in ("power", "binsearch"):
        raise ValueError(f"`mode` should be either 'power' or 'binsearch', got {mode!r}.")
    module = trainer.lightning_module
    fn = trainer.state.fn.value if trainer.state.fn is not None else "fit"
    if fn != "fit":
        # Lightning's order: one dataloader first, then the attribute
        _check_single_eval_loader(trainer, _PREFIX[fn])
        _check_batch_size_attr(module, batch_arg_name, trainer.datamodule, fn)
    if max_trials == 0:
        rank_zero_warn(
            f"`max_trials=0`: the batch size finder runs no trial and sets `{batch_arg_name}` to "
            f"`init_val={init_val}`. Pass `max_trials` >= 1 to search."
        )
        found: Optional[int] = init_val
    else:
        original = _get_attr(module, batch_arg_name)
        trials = _BatchSizeTrials(trainer, fn, steps_per_trial, batch_arg_name, max_val)
        try:
            with trials:
                if mode == "power":
                    found = _run_power_scaling(trials, init_val, max_trials)
                else:
                    found = _run_binsearch_scaling(trials, init_val, max_trials)
        except BaseException:
            if _attr_holders(module, batch_arg_name):
                _set_attr(module, batch_arg_name, original)
            raise
        if found is None:
            _set_attr(module, batch_arg_name, original)
            raise RuntimeError(
                f"The batch size finder found no batch size that fits within {max_trials} trial(s) starting at "
                f"{init_val}. Lower `init_val` or raise `max_trials`."
            )
        if margin > 0 and mode == "binsearch":
            reduced = max(1, int(found * (1 - margin)))
            if reduced != found:
                rank_zero_info(f"Applying margin of {margin:.1%}, reducing batch size from {found} to {reduced}")
                found = reduced
    _set_attr(module, batch_arg_name, found)
    if fn == "fit":
        # the run goes on with loaders built for the new size
        trainer.train_dataloader = None
        trainer.data.train_loaded_epoch = None
        trainer.data.val_loaders = None
    rank_zero_info(f"Finished batch size finder, will continue with full run using batch size {found}")
    return found
