"""Weight averaging during training: an equal-weight (SWA) or exponential (EMA) moving average of the
weights, used for validation and testing and saved as the checkpoint's model weights."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import torch
from torch import Tensor

from featherlight.callbacks.callback import Callback
from featherlight.utilities.model_helpers import is_overridden
from featherlight.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule

_AVG_KWARGS = ("avg_fn", "multi_avg_fn")


class WeightAveraging(Callback):
    r"""Keep an average of the model's weights, updated after optimizer steps (and/or epochs).

    Without an averaging function the average is the equal-weight mean of the weights after every update
    (stochastic weight averaging). ``avg_fn(averaged, current, num_averaged)`` (one tensor at a time) or
    ``multi_avg_fn(averaged_list, current_list, num_averaged)`` (in place, on lists of tensors of one device
    and dtype), as taken by :class:`torch.optim.swa_utils.AveragedModel`, define another average; see
    :class:`EMAWeightAveraging` for the exponential moving average. The first update copies the weights.

    When to update is decided by :meth:`should_update`, called with the zero-based index of the optimizer
    step just taken (``step_idx``) after each step, and with the epoch index (``epoch_idx``) at the end of
    each training epoch. The default updates after every optimizer step. Override it to change that.

    * The averaged weights are swapped into the module for validation (including the sanity check) and
      testing, and swapped back afterwards; when training ends they stay in the module (the training
      weights are kept by the callback).
    * A checkpoint's ``state_dict`` holds the averaged weights, so ``Model.load_from_checkpoint`` gives the
      averaged model. The training weights are saved under ``checkpoint["current_model_state"]`` and the
      number of averaged models under ``checkpoint["averaging_state"]`` (Lightning's layout): resuming
      with this callback restores both, so training continues exactly as if never interrupted.
    * The average lives on ``device`` (default: where each weight lives, i.e. the training device) and an
      update is a few ``torch._foreach_*`` kernels per (device, dtype) group: no host synchronisation.

    Args:
        device: where to keep the average; ``None``: alongside each weight. ``"cpu"`` saves accelerator
            memory at the cost of a copy per update.
        use_buffers: also average the buffers (e.g. batch-norm statistics). With ``False`` only parameters
            are averaged and swapped; the buffers stay the module's own.
        avg_fn: per-tensor averaging function (see above).
        multi_avg_fn: list averaging function (see above).
    """

    # asks the trainer to call on_save_checkpoint for weights-only checkpoints too (they should hold the average)
    edits_weights_only_checkpoints = True

    def __init__(
        self,
        device: Optional[Union[torch.device, str, int]] = None,
        use_buffers: bool = True,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - set(_AVG_KWARGS))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unexpected keyword arguments {unknown}; it takes `device`, "
                "`use_buffers`, `avg_fn` and `multi_avg_fn`."
            )
        for name in _AVG_KWARGS:
            if kwargs.get(name) is not None and not callable(kwargs[name]):
                raise TypeError(f"`{name}` must be callable; got {kwargs[name]!r}.")
        self._device: Optional[Union[torch.device, int]] = torch.device(device) if isinstance(device, str) else device
        self._use_buffers = use_buffers
        self._kwargs = kwargs
        self._avg_fn: Optional[Callable] = kwargs.get("avg_fn")
        self._multi_avg_fn: Optional[Callable] = kwargs.get("multi_avg_fn")
        self._ema_decay: Optional[float] = None  # set by EMAWeightAveraging: the built-in EMA update
        # optimizer steps taken when the average was last updated (0: the first check follows the first step)
        self._latest_update_step = 0
        # the epoch after which the average was last updated
        self._latest_update_epoch = -1
        self._reset_average()

    def _reset_average(self) -> None:
        self._average: Optional[list[Tensor]] = None  # averaged copies: parameters, then buffers (use_buffers)
        self._n_averaged = 0  # a Python int, so deciding "copy or average" never waits for the device
        self._n_tensors: dict[torch.device, Tensor] = {}  # the same count on each device, for custom functions
        self._groups: Optional[list[tuple[list[Tensor], list[Tensor], bool, Optional[torch.device]]]] = None
        self._swapped = False  # the module holds the averaged weights and `_average` the training weights
        self._eval_swap = False  # swapped in by an evaluation epoch (swapped back when it ends)

    # ------------------------------------------------------------------ public API
    def should_update(self, step_idx: Optional[int] = None, epoch_idx: Optional[int] = None) -> bool:
        """Whether to update the average after optimizer step ``step_idx`` (zero-based) or at the end of
        epoch ``epoch_idx`` (exactly one of them is given). The default: after every optimizer step."""
        return step_idx is not None

    # ------------------------------------------------------------------ the average
    def _module_tensors(self, pl_module: torch.nn.Module, buffers: Optional[bool] = None) -> list[Tensor]:
        tensors = list(pl_module.parameters())
        if self._use_buffers if buffers is None else buffers:
            tensors += list(pl_module.buffers())
        return tensors

    def _create(self, pl_module: "LightningModule") -> None:
        """A copy of the module's weights (the average before its first update)."""
        with torch.no_grad():
            self._average = [
                t.detach().clone() if self._device is None else t.detach().to(self._device, copy=True)
                for t in self._module_tensors(pl_module)
            ]
        self._n_averaged = 0
        self._n_tensors = {}
        self._groups = None
        self._swapped = self._eval_swap = False

    def _refresh(self, pl_module: "LightningModule") -> None:
        """Group (averaged, current) tensors by device and dtype for the foreach kernels. Done once per epoch:
        the module's tensors are looked up again in case something replaced them."""
        assert self._average is not None
        current = [t.detach() for t in self._module_tensors(pl_module)]
        if len(current) != len(self._average):
            raise RuntimeError(
                f"{type(self).__name__}: the module now has {len(current)} averaged tensors, the average "
                f"{len(self._average)}; the model's structure must not change during training."
            )
        groups: dict[tuple, tuple[list[Tensor], list[Tensor]]] = {}
        for avg, cur in zip(self._average, current):
            same = avg.device == cur.device
            key = (avg.device, avg.dtype, same)
            groups.setdefault(key, ([], []))
            groups[key][0].append(avg)
            groups[key][1].append(cur)
        self._groups = [
            (avgs, curs, avgs[0].is_floating_point() or avgs[0].is_complex(), None if same else device)
            for (device, _, same), (avgs, curs) in groups.items()
        ]

    def _count_on(self, device: torch.device) -> Tensor:
        count = self._n_tensors.get(device)
        if count is None:
            count = self._n_tensors[device] = torch.tensor(self._n_averaged, dtype=torch.long, device=device)
        return count

    @torch.no_grad()
    def _update(self, pl_module: "LightningModule") -> None:
        """Fold the module's current weights into the average."""
        if self._average is None:
            self._create(pl_module)
        if self._groups is None:
            self._refresh(pl_module)
        assert self._groups is not None
        n = self._n_averaged
        decay = self._ema_decay
        for avgs, curs, floating, target in self._groups:
            if target is not None:  # the average lives on another device
                curs = [c.to(target, non_blocking=True) for c in curs]
            if n == 0:
                torch._foreach_copy_(avgs, curs)
            elif self._multi_avg_fn is not None:
                self._multi_avg_fn(avgs, curs, self._count_on(avgs[0].device))
            elif self._avg_fn is not None:
                count = self._count_on(avgs[0].device)
                for avg, cur in zip(avgs, curs):
                    avg.copy_(self._avg_fn(avg, cur, count))
            elif floating:
                # EMA: avg + (1 - decay) * (cur - avg); equal-weight mean: avg + (cur - avg) / (n + 1)
                torch._foreach_lerp_(avgs, curs, 1.0 - decay if decay is not None else 1.0 / (n + 1))
            else:  # integer buffers (e.g. num_batches_tracked): the same formulas, truncated
                for avg, cur in zip(avgs, curs):
                    value = avg * decay + cur * (1.0 - decay) if decay is not None else avg + (cur - avg) / (n + 1)
                    avg.copy_(value)
        self._n_averaged = n + 1
        for count in self._n_tensors.values():
            count.add_(1)

    @torch.no_grad()
    def _swap(self, pl_module: "LightningModule") -> None:
        """Exchange the module's weights with the ones the callback holds (one tensor at a time)."""
        assert self._average is not None
        for held, own in zip(self._average, self._module_tensors(pl_module)):
            tmp = own.detach().clone()
            own.detach().copy_(held)
            held.copy_(tmp)
        self._swapped = not self._swapped

    # ------------------------------------------------------------------ training hooks
    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        if stage == "fit":
            # a new fit starts a new average from the module's weights as they are (restored from a checkpoint
            # by on_load_checkpoint when resuming)
            self._reset_average()
            self._latest_update_step = 0
            self._latest_update_epoch = -1

    def on_fit_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self._average is None:
            self._create(pl_module)  # the module is on its training device by now

    def on_train_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self._average is not None:
            self._refresh(pl_module)

    def on_train_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self._average is not None and not self._swapped:
            self._refresh(pl_module)

    def _maybe_update_after_step(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        step = trainer.global_step
        if step > self._latest_update_step and not self._swapped:
            if self.should_update(step_idx=step - 1):
                self._update(pl_module)
            self._latest_update_step = step

    def reads_outputs(self, hook: str) -> bool:
        # this class's on_train_batch_end never reads `outputs`; a subclass that overrides it may
        return is_overridden(hook, self, WeightAveraging)

    def on_train_batch_end(
        self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._maybe_update_after_step(trainer, pl_module)

    def on_train_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        epoch = trainer.current_epoch
        if epoch > self._latest_update_epoch and not self._swapped:
            if self.should_update(epoch_idx=epoch):
                self._update(pl_module)
            self._latest_update_epoch = epoch

    def on_train_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        # the module keeps the averaged weights after fit; the callback keeps the training ones (so a checkpoint
        # saved now still resumes training exactly)
        if self._average is not None and not self._swapped:
            self._swap(pl_module)
        self._eval_swap = False

    # ------------------------------------------------------------------ evaluation hooks
    def _swap_in_for_eval(self, pl_module: "LightningModule") -> None:
        if self._average is not None and not self._swapped:
            self._swap(pl_module)
            self._eval_swap = True

    def _swap_back_after_eval(self, pl_module: "LightningModule") -> None:
        if self._eval_swap:
            self._eval_swap = False
            if self._swapped:
                self._swap(pl_module)

    def on_validation_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._swap_in_for_eval(pl_module)

    def on_validation_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._swap_back_after_eval(pl_module)

    def on_test_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._swap_in_for_eval(pl_module)

    def on_test_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._swap_back_after_eval(pl_module)

    def on_exception(self, trainer: "Trainer", pl_module: "LightningModule", exception: BaseException) -> None:
        self._swap_back_after_eval(pl_module)  # an evaluation that failed leaves the training weights in place

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"latest_update_step": self._latest_update_step, "latest_update_epoch": self._latest_update_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._latest_update_step = int(state_dict["latest_update_step"])
        self._latest_update_epoch = int(state_dict.get("latest_update_epoch", -1))

    def _state_dict_keys(self, pl_module: "LightningModule") -> list[tuple[str, int]]:
        """(key in the checkpoint's ``state_dict``, index in the average) for every held tensor."""
        index = {id(t): i for i, t in enumerate(self._module_tensors(pl_module))}
        out = []
        for key, value in pl_module.state_dict(keep_vars=True).items():
            i = index.get(id(value))
            if i is not None:
                out.append((key.replace("_orig_mod.", ""), i))
        return out

    def _with_held(self, state: dict[str, Any], keys: list[tuple[str, int]]) -> dict[str, Any]:
        """A copy of ``state`` with the tensors the callback holds in place of the module's."""
        assert self._average is not None
        out = type(state)(state)
        metadata = getattr(state, "_metadata", None)
        if metadata is not None:
            out._metadata = metadata  # type: ignore[attr-defined]
        for key, i in keys:
            if key in out:
                out[key] = self._average[i]
        return out

    def on_save_checkpoint(self, trainer: "Trainer", pl_module: "LightningModule", checkpoint: dict[str, Any]) -> None:
        if self._average is None:
            return
        if "optimizer_states" not in checkpoint:
            # a weights-only checkpoint (for inference): just the averaged weights, nothing to resume from
            if not self._swapped:
                checkpoint["state_dict"] = self._with_held(checkpoint["state_dict"], self._state_dict_keys(pl_module))
            return
        if trainer.state.fn == "fit" and trainer.training:
            # a callback that checkpoints in on_train_batch_end before this one runs must still see the update
            # for the step just taken (a resumed run does not repeat that hook)
            self._maybe_update_after_step(trainer, pl_module)
            if isinstance(checkpoint.get("callbacks"), dict):
                checkpoint["callbacks"][self.state_key] = self.state_dict()  # collected before this hook
        keys = self._state_dict_keys(pl_module)
        state = checkpoint["state_dict"]
        if self._swapped:  # the module holds the average (evaluation, or after fit)
            checkpoint["current_model_state"] = self._with_held(state, keys)
        else:
            checkpoint["current_model_state"] = state
            checkpoint["state_dict"] = self._with_held(state, keys)
        checkpoint["averaging_state"] = {"n_averaged": torch.tensor(self._n_averaged, dtype=torch.long)}

    def on_load_checkpoint(self, trainer: "Trainer", pl_module: "LightningModule", checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != "fit":
            return  # evaluating: the module has loaded the checkpoint's averaged weights, which is what is wanted
        # the module has loaded checkpoint["state_dict"]: the average (or plain weights)
        self._create(pl_module)
        if "current_model_state" in checkpoint and "averaging_state" in checkpoint:
            from featherlight.io.state import load_module_state

            self._n_averaged = int(checkpoint["averaging_state"].get("n_averaged", 0))
            load_module_state(pl_module, checkpoint["current_model_state"], pl_module.strict_loading,
                               getattr(trainer, "ckpt_path", None))
            rank_zero_info("Restored the training weights from `current_model_state`, the average from `state_dict`.")
        else:
            rank_zero_warn(
                f"The checkpoint was not saved with {type(self).__name__}: the training weights and the average "
                "both start from its `state_dict`."
            )


class EMAWeightAveraging(WeightAveraging):
    """An exponential moving average of the weights: ``ema = decay * ema + (1 - decay) * weights`` (computed
    as one ``torch._foreach_lerp_`` per device and dtype).

    Args:
        device: where to keep the average (default: alongside each weight).
        use_buffers: also average the buffers.
        decay: the EMA decay, in ``[0, 1]``.
        update_every_n_steps: update after optimizer steps whose zero-based index is a multiple of this.
        update_starting_at_step: update only from this (zero-based) optimizer step on.
        update_starting_at_epoch: also update at the end of every epoch from this one on (``None``: never
            at epoch ends).
    """

    def __init__(
        self,
        device: Optional[Union[torch.device, str, int]] = None,
        use_buffers: bool = True,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: Optional[int] = None,
        update_starting_at_epoch: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        if set(kwargs) & set(_AVG_KWARGS):
            raise TypeError(f"{type(self).__name__} averages with `decay`; it takes no `avg_fn`/`multi_avg_fn`.")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"`decay` must be in [0, 1]; got {decay!r}.")
        super().__init__(device=device, use_buffers=use_buffers, **kwargs)
        self.decay = decay
        self._ema_decay = float(decay)
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch

    def should_update(self, step_idx: Optional[int] = None, epoch_idx: Optional[int] = None) -> bool:
        if step_idx is not None:
            started = self.update_starting_at_step is None or step_idx >= self.update_starting_at_step
            due = self.update_every_n_steps > 0 and step_idx % self.update_every_n_steps == 0
            if started and due:
                return True
        if epoch_idx is not None:
            return self.update_starting_at_epoch is not None and epoch_idx >= self.update_starting_at_epoch
        return False
