"""Stochastic Weight Averaging (SWA): average the weights of the last epochs and train with an SWA LR schedule."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Union

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import SWALR, AveragedModel

from featherlight.callbacks.callback import Callback
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.model_helpers import is_overridden
from featherlight.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule

_AVG_FN = Callable[[Tensor, Tensor, Tensor], Tensor]


class StochasticWeightAveraging(Callback):
    r"""Average the model's weights over the last epochs of training (Izmailov et al., "Averaging Weights
    Leads to Wider Optima and Better Generalization", UAI 2018), using :mod:`torch.optim.swa_utils`.

    From epoch ``swa_start`` on, the optimizer's learning rate follows :class:`~torch.optim.swa_utils.SWALR`
    (it replaces the module's scheduler) and, at the start of every epoch up to the last, the current
    weights are folded into an :class:`~torch.optim.swa_utils.AveragedModel`. When training ends the
    averaged weights are copied into the module. If the module has batch-norm layers, training runs one
    extra epoch (``max_epochs`` grows by one while fitting) in which the averaged weights are in place and
    the training data only goes forward through ``training_step`` (no backward, no optimizer step) so the
    batch-norm running statistics are recomputed for them (a cumulative average over the epoch). Its
    hooks, logging and validation run as in any epoch (the validation scores the final model), and like
    Lightning it adds one to ``global_step`` at its end, so checkpoint callbacks save the final model.

    The averaged weights, the number of models averaged and the SWA scheduler are saved in checkpoints
    (``checkpoint["callbacks"]["StochasticWeightAveraging"]``, the layout Lightning uses) and restored on
    resume; a run resumed from a checkpoint taken inside the batch-norm epoch carries on accumulating the
    statistics.

    Only one optimizer and at most one LR scheduler are supported; the averaging happens once per epoch.

    Args:
        swa_lrs: the SWA learning rate, for all param groups (a float) or one per param group (a list).
        swa_epoch_start: an int ``n >= 1``: SWA starts at the ``n``-th epoch (1-based, i.e. epoch index
            ``n - 1``); a float in ``[0, 1]``: at the ``int(swa_epoch_start * max_epochs)``-th epoch.
        annealing_epochs: epochs over which SWALR anneals each group's LR to its SWA LR.
        annealing_strategy: ``"cos"`` or ``"linear"`` annealing.
        avg_fn: ``avg_fn(averaged_param, model_param, num_averaged) -> new averaged value``; the default
            is the equal-weight running mean.
        device: where the averaged model lives (default CPU); ``None``: on the module's device.
    """

    def __init__(
        self,
        swa_lrs: Union[float, list[float]],
        swa_epoch_start: Union[int, float] = 0.8,
        annealing_epochs: int = 10,
        annealing_strategy: Literal["cos", "linear"] = "cos",
        avg_fn: Optional[_AVG_FN] = None,
        device: Optional[Union[torch.device, str]] = torch.device("cpu"),
    ) -> None:
        bad_start = ("swa_epoch_start should be a >0 integer or a float between 0 and 1: an int is the first SWA "
                     "epoch counted from 1, a float a fraction of `max_epochs`")
        if isinstance(swa_epoch_start, bool) or not isinstance(swa_epoch_start, (int, float)):
            raise MisconfigurationException(f"{bad_start}; got {swa_epoch_start!r}.")
        if isinstance(swa_epoch_start, int) and swa_epoch_start < 1:
            raise MisconfigurationException(f"{bad_start}; got {swa_epoch_start!r}.")
        if isinstance(swa_epoch_start, float) and not 0 <= swa_epoch_start <= 1:
            raise MisconfigurationException(f"{bad_start}; got {swa_epoch_start!r}.")
        valid_lrs = (isinstance(swa_lrs, float) and swa_lrs > 0) or (
            isinstance(swa_lrs, list) and all(isinstance(lr, float) and lr > 0 for lr in swa_lrs)
        )
        if not valid_lrs:
            raise MisconfigurationException(
                "The `swa_lrs` should be a positive float, or a list of positive floats (one per param group); got "
                f"{swa_lrs!r}."
            )
        if avg_fn is not None and not callable(avg_fn):
            raise MisconfigurationException(f"The `avg_fn` should be callable; got {avg_fn!r}.")
        if device is not None and not isinstance(device, (torch.device, str)):
            raise MisconfigurationException(
                f"device is expected to be a torch.device or a str. Found {device!r} (None: the module's device)."
            )
        if annealing_strategy not in ("cos", "linear"):
            raise MisconfigurationException(
                f"`annealing_strategy` must be 'cos' or 'linear'; got {annealing_strategy!r}."
            )
        if isinstance(annealing_epochs, bool) or not isinstance(annealing_epochs, int) or annealing_epochs < 0:
            raise MisconfigurationException(f"`annealing_epochs` must be an int >= 0; got {annealing_epochs!r}.")

        self._swa_epoch_start = swa_epoch_start
        self._swa_lrs = swa_lrs
        self._annealing_epochs = annealing_epochs
        self._annealing_strategy = annealing_strategy
        self._avg_fn: _AVG_FN = avg_fn or self.avg_fn
        self._device = device
        self._model_contains_batch_norm: Optional[bool] = None
        self._average_model: Optional[AveragedModel] = None
        self.momenta: dict[nn.modules.batchnorm._BatchNorm, Optional[float]] = {}
        self._reset_fit_state()

    def _reset_fit_state(self) -> None:
        self._initialized = False
        self._swa_scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None
        self._scheduler_state: Optional[dict] = None
        self._init_n_averaged = 0
        self._latest_update_epoch = -1
        self._max_epochs: Optional[int] = None
        self._start_epoch: Optional[int] = None  # swa_epoch_start resolved to an int (1-based)
        self._bumped_max_epochs = False  # max_epochs was raised by one for the batch-norm epoch
        self._bn_epoch_module: Optional["LightningModule"] = None  # switched to forward-only for the BN epoch
        self._in_bn_epoch = False  # the batch-norm epoch has started and not ended (saved in checkpoints)
        self._resumed_in_bn_epoch = False  # restored from a checkpoint taken inside the batch-norm epoch
        self._pending_average_state: Optional[dict] = None

    # ------------------------------------------------------------------ schedule
    @property
    def swa_start(self) -> int:
        """Zero-based index of the first SWA epoch."""
        start = self._start_epoch if self._start_epoch is not None else self._swa_epoch_start
        if not isinstance(start, int):
            raise RuntimeError("`swa_start` is known once fitting starts (it depends on `max_epochs`).")
        return max(start - 1, 0)

    @property
    def swa_end(self) -> Union[int, float]:
        """Zero-based index of the last SWA epoch (the last epoch of training); ``inf`` without an epoch limit."""
        if self._max_epochs is None or self._max_epochs == -1:
            return float("inf")
        return self._max_epochs - 1

    @property
    def n_averaged(self) -> Optional[Tensor]:
        """How many models the average holds (a tensor), or None before averaging started."""
        if not self._initialized or self._average_model is None:
            return None
        return self._average_model.n_averaged

    @staticmethod
    def pl_module_contains_batch_norm(pl_module: nn.Module) -> bool:
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in pl_module.modules())

    @staticmethod
    def avg_fn(averaged_model_parameter: Tensor, model_parameter: Tensor, num_averaged: Tensor) -> Tensor:
        """The equal-weight running mean: ``avg + (new - avg) / (n + 1)``."""
        return averaged_model_parameter + (model_parameter - averaged_model_parameter) / (num_averaged + 1)

    @staticmethod
    def transfer_weights(src_pl_module: nn.Module, dst_pl_module: nn.Module) -> None:
        """Copy the parameters (not the buffers) of ``src_pl_module`` into ``dst_pl_module``."""
        with torch.no_grad():
            for src, dst in zip(src_pl_module.parameters(), dst_pl_module.parameters()):
                dst.copy_(src.to(dst.device))

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        if stage != "fit":
            return

        self._reset_fit_state()
        self.momenta = {}
        self._average_model = None
        if not is_overridden("configure_model", pl_module):
            # a copy of the module before it moves to the training device; it moves to `device` when SWA starts
            self._average_model = AveragedModel(pl_module, avg_fn=self._avg_fn, use_buffers=False)
        # else: the module gets its layers in configure_model, after this hook: the copy is made in on_fit_start

    def on_fit_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self._average_model is None:
            self._average_model = AveragedModel(pl_module, device=torch.device("cpu"), avg_fn=self._avg_fn,
                                                use_buffers=False)
            if self._pending_average_state is not None:
                self._average_model.module.load_state_dict(self._pending_average_state)
        self._pending_average_state = None
        if len(trainer.optimizers) != 1:
            raise MisconfigurationException(
                f"SWA currently works with 1 `optimizer`; `configure_optimizers` returned {len(trainer.optimizers)}."
            )
        if len(trainer.lr_scheduler_configs) > 1:
            raise MisconfigurationException(
                "SWA currently not supported for more than 1 `lr_scheduler` (it is replaced by SWALR when SWA "
                f"starts); `configure_optimizers` returned {len(trainer.lr_scheduler_configs)}."
            )
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
        start = self._swa_epoch_start
        if isinstance(start, float):
            if max_epochs == -1:
                raise MisconfigurationException(
                    "SWA with `swa_epoch_start` as a float is not supported when `max_epochs=-1`. Please provide "
                    "`swa_epoch_start` as an integer (the first SWA epoch, counted from 1): the float is a fraction "
                    "of `max_epochs`."
                )
            start = int(max_epochs * start)
        self._start_epoch = start
        self._max_epochs = max_epochs
        self._model_contains_batch_norm = self.pl_module_contains_batch_norm(pl_module)
        if self._model_contains_batch_norm and max_epochs != -1:
            # one more epoch, run forward-only, recomputes the batch-norm statistics for the averaged weights
            trainer.max_epochs = max_epochs + 1
            self._bumped_max_epochs = True
        if self._scheduler_state is not None and trainer.lr_scheduler_configs:
            # resuming after SWA started: the checkpoint's scheduler state is SWALR's, restored when SWALR is
            # rebuilt at the next epoch start; the module's own scheduler must not receive it
            trainer.lr_scheduler_configs.clear()

    def on_train_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        epoch = trainer.current_epoch
        in_swa = self.swa_start <= epoch <= self.swa_end
        if not self._initialized and in_swa:
            self._start_swa(trainer, pl_module)
        if in_swa and epoch > self._latest_update_epoch:
            assert self._average_model is not None
            self._average_model.update_parameters(pl_module)
            self._latest_update_epoch = epoch
        if self._max_epochs != -1 and epoch == self.swa_end + 1:
            # the batch-norm epoch: averaged weights in, statistics reset, forward passes only
            if self._resumed_in_bn_epoch:
                # the checkpoint holds the averaged weights and the statistics accumulated so far: carry on
                self._save_momenta_for_cumulative_average(pl_module)
            else:
                assert self._average_model is not None
                self.transfer_weights(self._average_model.module, pl_module)
                self.reset_batch_norm_and_save_state(pl_module)
            self._resumed_in_bn_epoch = False
            self._in_bn_epoch = True
            if pl_module.automatic_optimization:
                pl_module.automatic_optimization = False  # the loop then runs training_step and nothing else
                self._bn_epoch_module = pl_module

    def _start_swa(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        from featherlight.core.optimizer import LRSchedulerConfig

        self._initialized = True
        assert self._average_model is not None
        self._average_model.to(self._device or pl_module.device)
        optimizer = trainer.optimizers[0]
        lrs = self._swa_lrs if isinstance(self._swa_lrs, list) else [self._swa_lrs] * len(optimizer.param_groups)
        if len(lrs) != len(optimizer.param_groups):
            raise MisconfigurationException(
                f"`swa_lrs` has {len(lrs)} values but the optimizer has {len(optimizer.param_groups)} param groups."
            )
        for lr, group in zip(lrs, optimizer.param_groups):
            group["initial_lr"] = lr
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
        self._swa_scheduler = SWALR(
            optimizer,
            swa_lr=lrs,  # type: ignore[arg-type]
            anneal_epochs=self._annealing_epochs,
            anneal_strategy=self._annealing_strategy,
            last_epoch=max_epochs if self._annealing_strategy == "cos" else -1,
        )
        if self._scheduler_state is not None:
            self._swa_scheduler.load_state_dict(self._scheduler_state)
        elif trainer.current_epoch != self.swa_start:
            rank_zero_warn(
                f"`StochasticWeightAveraging` starts at epoch {trainer.current_epoch}, after its start epoch "
                f"{self.swa_start}, and the checkpoint resumed from holds no SWA state: the average and the SWA "
                "schedule begin now."
            )
        config = LRSchedulerConfig(self._swa_scheduler)
        if trainer.lr_scheduler_configs:
            old = trainer.lr_scheduler_configs[0]
            if old.interval != "epoch" or old.frequency != 1:
                rank_zero_warn(
                    f"SWA is currently only supported every epoch. Found interval={old.interval!r}, "
                    f"frequency={old.frequency}: `StochasticWeightAveraging` replaces that scheduler with SWALR, "
                    "stepped once per epoch."
                )
            rank_zero_info(f"Swapping scheduler `{type(old.scheduler).__name__}` for `SWALR`")
            trainer.lr_scheduler_configs[0] = config
        else:
            trainer.lr_scheduler_configs.append(config)
        self._average_model.n_averaged.fill_(self._init_n_averaged)

    def reads_outputs(self, hook: str) -> bool:
        # this class's on_train_batch_end never reads `outputs`; a subclass that overrides it may
        return is_overridden(hook, self, StochasticWeightAveraging)

    def on_train_batch_end(
        self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._in_bn_epoch and trainer.is_last_batch:
            # Lightning closes its batch-norm epoch with one optimizer step (without gradients: the weights do
            # not change). Counting it keeps `global_step` the same, and so checkpointing: ModelCheckpoint saves
            # the final model at the end of this epoch because the step count moved.
            trainer.progress.global_step += 1

    def on_train_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._in_bn_epoch = False
        self._end_bn_epoch()

    def on_train_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        # the epoch counter has already moved past the last epoch here
        last = trainer.current_epoch - 1
        if self._model_contains_batch_norm and self._max_epochs != -1 and last == self.swa_end + 1:
            self.reset_momenta()  # the batch-norm epoch ran: the module holds the averaged model
        elif (last == self.swa_end or self._max_epochs == -1) and self._initialized:
            assert self._average_model is not None
            self.transfer_weights(self._average_model.module, pl_module)
        self._restore_max_epochs(trainer)

    def on_exception(self, trainer: "Trainer", pl_module: "LightningModule", exception: BaseException) -> None:
        self._end_bn_epoch()
        self.reset_momenta()
        self._restore_max_epochs(trainer)

    def _end_bn_epoch(self) -> None:
        if self._bn_epoch_module is not None:
            self._bn_epoch_module.automatic_optimization = True
            self._bn_epoch_module = None

    def _restore_max_epochs(self, trainer: "Trainer") -> None:
        if self._bumped_max_epochs:
            trainer.max_epochs = self._max_epochs
            self._bumped_max_epochs = False

    # ------------------------------------------------------------------ batch norm
    def reset_batch_norm_and_save_state(self, pl_module: nn.Module) -> None:
        """Reset the running statistics of every batch-norm layer and switch it to a cumulative average
        (``momentum=None``), remembering the momenta for :meth:`reset_momenta`."""
        with torch.no_grad():
            for module in pl_module.modules():
                if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                    continue
                if module.running_mean is not None:
                    module.running_mean.zero_()
                if module.running_var is not None:
                    module.running_var.fill_(1)
                if module.num_batches_tracked is not None:
                    module.num_batches_tracked.zero_()
        self._save_momenta_for_cumulative_average(pl_module)

    def _save_momenta_for_cumulative_average(self, pl_module: nn.Module) -> None:
        self.momenta = {}
        for module in pl_module.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                self.momenta[module] = module.momentum
                module.momentum = None

    def reset_momenta(self) -> None:
        """Give the batch-norm layers back the momenta :meth:`reset_batch_norm_and_save_state` replaced."""
        for module, momentum in self.momenta.items():
            module.momentum = momentum
        self.momenta = {}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        n = self._init_n_averaged
        if self._initialized and self._average_model is not None:
            n = int(self._average_model.n_averaged.item())
        # a run resumed inside the batch-norm epoch has no SWALR to rebuild: it passes the saved state on
        scheduler = self._scheduler_state if self._swa_scheduler is None else self._swa_scheduler.state_dict()
        return {
            "n_averaged": n,
            "latest_update_epoch": self._latest_update_epoch,
            "scheduler_state": scheduler,
            "average_model_state": None if self._average_model is None else self._average_model.module.state_dict(),
            "in_batch_norm_epoch": self._in_bn_epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._init_n_averaged = int(state_dict["n_averaged"])
        self._latest_update_epoch = int(state_dict["latest_update_epoch"])
        self._scheduler_state = state_dict["scheduler_state"]
        self._resumed_in_bn_epoch = bool(state_dict.get("in_batch_norm_epoch", False))
        average = state_dict.get("average_model_state")
        if average is not None:
            if self._average_model is not None:
                self._average_model.module.load_state_dict(average)
            else:
                self._pending_average_state = average  # loaded when the copy is made (on_fit_start)
