"""The Callback base class: every hook the trainer calls on callbacks, each a no-op by default.

The trainer is passed to every hook at run time; it is annotated by name only ("Trainer"), since nothing
below the trainer imports it.
"""
from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from torch import Tensor
from torch.optim import Optimizer

from featherlight.utilities.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule

# Per callback (by id): the trainer whose run it is part of, for `Callback.log`. Lightning sets
# `callback.log = pl_module.log` on every callback when a run starts; featherlight keeps the link here instead of
# writing onto the user's objects. An entry goes when its callback is collected.
_log_targets: dict[int, Callable[[], Any]] = {}


def bind_logging(callbacks: Iterable["Callback"], trainer: "Trainer") -> None:
    """Make :meth:`Callback.log` of each of ``callbacks`` log through ``trainer``'s LightningModule (the trainer
    calls this when a run starts, in the process that runs the hooks)."""
    ref = weakref.ref(trainer)
    for callback in callbacks:
        key = id(callback)
        if key not in _log_targets:
            try:
                weakref.finalize(callback, _log_targets.pop, key, None)
            except TypeError:  # an object that cannot be weakly referenced keeps its entry until rebound
                pass
        _log_targets[key] = ref


class Callback:
    """Abstract base for callbacks. Override only the hooks you need: the trainer skips the rest.

    ``state_key`` identifies the callback's state in a checkpoint; make it unique when a callback
    may be added several times with different arguments (see ``_generate_state_key``).

    Besides the hooks, a callback may declare how the trainer treats it (each has a default here):
    ``monitors_metrics``, ``runs_first``, ``edits_weights_only_checkpoints``, :meth:`idle_hooks` and
    :meth:`reads_outputs`.
    """

    #: Acts on logged metrics at the end of a training epoch (checkpointing, early stopping): its
    #: ``on_train_epoch_end`` runs after the LightningModule's, so it sees what the module logged there.
    monitors_metrics: bool = False
    #: Runs before every other callback (the tuner's finders, as in Lightning).
    runs_first: bool = False
    #: Also gets ``on_save_checkpoint`` for weights-only checkpoints, because it decides what the weights are
    #: (weight averaging).
    edits_weights_only_checkpoints: bool = False

    def idle_hooks(self, trainer: "Trainer") -> set[str]:
        """Hooks this callback overrides that can do nothing in ``trainer``'s run; the trainer skips them (asked
        once per run, after ``setup``). E.g. ModelCheckpoint's per-batch check without a per-step trigger."""
        return set()

    def reads_outputs(self, hook: str) -> bool:
        """Whether this callback's ``hook`` (``on_train_batch_end``) reads its ``outputs`` argument. The loop builds
        ``outputs`` (a dict holding the detached loss, every batch) only when some hook may read them."""
        return True

    @property
    def state_key(self) -> str:
        """Identifier of this callback's state in ``checkpoint["callbacks"]``."""
        return self.__class__.__qualname__

    @property
    def _legacy_state_key(self) -> type:
        """The key older checkpoints stored this callback's state under (its type), read as a fallback."""
        return type(self)

    def _generate_state_key(self, **kwargs: Any) -> str:
        """A state key built from the class name and ``kwargs``, e.g. ``ModelCheckpoint{'monitor': 'x'}``."""
        return f"{self.__class__.__qualname__}{repr(kwargs)}"

    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        """Called when fit, validate, test, predict, or tune begins."""

    def teardown(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        """Called when fit, validate, test, predict, or tune ends."""

    def on_fit_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when fit begins."""

    def on_fit_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when fit ends."""

    def on_sanity_check_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when the validation sanity check starts."""

    def on_sanity_check_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when the validation sanity check ends."""

    def on_train_batch_start(self, trainer: "Trainer", pl_module: "LightningModule", batch: Any, batch_idx: int) -> None:
        """Called when the train batch begins."""

    def on_train_batch_end(
        self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Called when the train batch ends. ``outputs`` is ``{"loss": ...}`` or the dict training_step returned."""

    def on_train_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when the train epoch begins."""

    def on_train_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when the train epoch ends."""

    def on_validation_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when the val epoch begins."""

    def on_validation_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when the val epoch ends."""

    def on_test_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when the test epoch begins."""

    def on_test_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when the test epoch ends."""

    def on_predict_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when the predict epoch begins."""

    def on_predict_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when the predict epoch ends."""

    def on_validation_batch_start(
        self, trainer: "Trainer", pl_module: "LightningModule", batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Called when the validation batch begins."""

    def on_validation_batch_end(
        self,
        trainer: "Trainer",
        pl_module: "LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Called when the validation batch ends."""

    def on_test_batch_start(
        self, trainer: "Trainer", pl_module: "LightningModule", batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Called when the test batch begins."""

    def on_test_batch_end(
        self,
        trainer: "Trainer",
        pl_module: "LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Called when the test batch ends."""

    def on_predict_batch_start(
        self, trainer: "Trainer", pl_module: "LightningModule", batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Called when the predict batch begins."""

    def on_predict_batch_end(
        self,
        trainer: "Trainer",
        pl_module: "LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Called when the predict batch ends."""

    def on_train_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when the train begins."""

    def on_train_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when the train ends."""

    def on_validation_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when the validation loop begins."""

    def on_validation_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when the validation loop ends."""

    def on_test_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when the test begins."""

    def on_test_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when the test ends."""

    def on_predict_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when the predict begins."""

    def on_predict_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called when predict ends."""

    def on_exception(self, trainer: "Trainer", pl_module: "LightningModule", exception: BaseException) -> None:
        """Called when any trainer execution is interrupted by an exception."""

    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: Optional[bool] = None,
        on_step: Optional[bool] = None,
        on_epoch: Optional[bool] = None,
        reduce_fx: Union[str, Callable] = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Optional[Any] = None,
        add_dataloader_idx: bool = True,
        batch_size: Optional[int] = None,
        metric_attribute: Optional[str] = None,
        rank_zero_only: bool = False,
    ) -> None:
        """``pl_module.log(...)`` from a hook of this callback: the value is logged as if the LightningModule
        logged it in that hook (same arguments, same defaults per hook; see ``LightningModule.log``).

        Raises:
            MisconfigurationException: when the callback is not part of a running Trainer.
        """
        self._logging_module().log(
            name, value, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch, reduce_fx=reduce_fx,
            enable_graph=enable_graph, sync_dist=sync_dist, sync_dist_group=sync_dist_group,
            add_dataloader_idx=add_dataloader_idx, batch_size=batch_size, metric_attribute=metric_attribute,
            rank_zero_only=rank_zero_only,
        )

    def log_dict(
        self,
        dictionary: Union[Mapping[str, Any], Any],
        prog_bar: bool = False,
        logger: Optional[bool] = None,
        on_step: Optional[bool] = None,
        on_epoch: Optional[bool] = None,
        reduce_fx: Union[str, Callable] = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Optional[Any] = None,
        add_dataloader_idx: bool = True,
        batch_size: Optional[int] = None,
        rank_zero_only: bool = False,
    ) -> None:
        """``pl_module.log_dict(...)`` from a hook of this callback (see :meth:`log`)."""
        self._logging_module().log_dict(
            dictionary, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch, reduce_fx=reduce_fx,
            enable_graph=enable_graph, sync_dist=sync_dist, sync_dist_group=sync_dist_group,
            add_dataloader_idx=add_dataloader_idx, batch_size=batch_size, rank_zero_only=rank_zero_only,
        )

    def _logging_module(self) -> "LightningModule":
        ref = _log_targets.get(id(self))
        trainer = ref() if ref is not None else None
        module = trainer.lightning_module if trainer is not None else None
        if module is None:
            raise MisconfigurationException(
                f"`{type(self).__name__}.log()` logs through the LightningModule of the Trainer running this callback:"
                " call it from one of the callback's hooks during `fit`, `validate` or `test`."
            )
        return module

    def state_dict(self) -> dict[str, Any]:
        """Called when saving a checkpoint: the callback's state."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called when loading a checkpoint: restore the state returned by :meth:`state_dict`."""

    def on_save_checkpoint(
        self, trainer: "Trainer", pl_module: "LightningModule", checkpoint: dict[str, Any]
    ) -> None:
        """Called when saving a checkpoint to give you a chance to store anything else you might want to save."""

    def on_load_checkpoint(
        self, trainer: "Trainer", pl_module: "LightningModule", checkpoint: dict[str, Any]
    ) -> None:
        """Called when loading a model checkpoint."""

    def on_before_backward(self, trainer: "Trainer", pl_module: "LightningModule", loss: Tensor) -> None:
        """Called before ``loss.backward()``."""

    def on_after_backward(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Called after ``loss.backward()`` and before optimizers are stepped."""

    def on_before_optimizer_step(
        self, trainer: "Trainer", pl_module: "LightningModule", optimizer: Optimizer
    ) -> None:
        """Called before ``optimizer.step()``."""

    def on_before_zero_grad(self, trainer: "Trainer", pl_module: "LightningModule", optimizer: Optimizer) -> None:
        """Called before ``optimizer.zero_grad()``."""
