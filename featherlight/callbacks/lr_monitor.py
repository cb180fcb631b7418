"""Log the learning rate (and optionally momentum and weight decay) of every optimizer during training."""
from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Literal, Optional

import torch
from torch.optim import Optimizer

from featherlight.callbacks.callback import Callback
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule
    from featherlight.core.optimizer import LRSchedulerConfig


class LearningRateMonitor(Callback):
    """Log the learning rate of each optimizer param group to the trainer's loggers.

    Keys are ``lr-{OptimizerClass}`` (``lr-Adam``), or the ``name`` of the scheduler config when it has
    one. A second optimizer of the same class gets ``-1`` (``lr-Adam-1``), and so on. An optimizer with
    several param groups gets one key per group, ``/{group name}`` or ``/pg{i}`` (``lr-SGD/pg1``,
    ``lr-SGD/pg2``); a single group with a ``name`` gets ``/{name}``. Momentum (``betas[0]`` for
    Adam-like optimizers) is logged as ``{key}-momentum``, weight decay as ``{key}-weight_decay``.

    Values are logged at ``step = trainer``'s count of optimizer-stepping batches: every
    ``log_every_n_steps`` batches (at batch start) for schedulers that step per batch, at each epoch
    start for schedulers that step per epoch; optimizers without a scheduler are logged at both. The
    values also appear in ``trainer.callback_metrics``, so they can be monitored.

    Args:
        logging_interval: ``"step"`` or ``"epoch"`` logs every optimizer at that interval; ``None`` follows
            each scheduler's own ``interval``.
        log_momentum: also log momentum (0 for optimizers without one).
        log_weight_decay: also log weight decay.

    Raises:
        MisconfigurationException: for another ``logging_interval``, or (when training starts) a trainer
            without a logger, or an optimizer with two param groups of the same ``name``.

    Example::

        trainer = Trainer(callbacks=[LearningRateMonitor(logging_interval="step")])
    """

    def __init__(
        self,
        logging_interval: Optional[Literal["step", "epoch"]] = None,
        log_momentum: bool = False,
        log_weight_decay: bool = False,
    ) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise MisconfigurationException("logging_interval should be `step` or `epoch` or `None`.")
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs: dict[str, list[float]] = {}
        self.last_momentum_values: dict[str, Optional[float]] = {}
        self.last_weight_decay_values: dict[str, Optional[float]] = {}

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if not trainer.loggers:
            raise MisconfigurationException(
                "Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger."
            )
        if self.log_momentum:
            optimizers = ([cfg.scheduler.optimizer for cfg in trainer.lr_scheduler_configs]
                          if trainer.lr_scheduler_configs else list(trainer.optimizers))

            def lacks(key: str) -> bool:
                return any(key not in opt.defaults for opt in optimizers)

            if lacks("momentum") and lacks("betas"):
                rank_zero_warn(
                    "You have set log_momentum=True, but some optimizers do not have momentum. This will log a "
                    "value 0 for the momentum.",
                    category=RuntimeWarning,
                )
        sched_names, seen, seen_types = self._find_names_from_schedulers(trainer.lr_scheduler_configs)
        opt_names, _ = self._find_names_from_optimizers(trainer.optimizers, seen, seen_types)
        names = [name for group in sched_names + opt_names for name in group]
        self.lrs = {name: [] for name in names}
        self.last_momentum_values = {f"{name}-momentum": None for name in names}
        self.last_weight_decay_values = {f"{name}-weight_decay": None for name in names}

    def on_train_batch_start(self, trainer: "Trainer", pl_module: "LightningModule", batch: Any, batch_idx: int) -> None:
        if self.logging_interval == "epoch":
            return
        every = trainer.log_every_n_steps
        if not every or ((trainer.progress.batches_that_stepped + 1) % every and not trainer.should_stop):
            return
        self._log(trainer, "step" if self.logging_interval is None else "any")

    def on_train_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self.logging_interval == "step":
            return
        self._log(trainer, "epoch" if self.logging_interval is None else "any")

    def _log(self, trainer: "Trainer", interval: str) -> None:
        stats = self._extract_stats(trainer, interval)
        if stats:
            step = trainer.progress.batches_that_stepped
            for logger in trainer.loggers:
                logger.log_metrics(stats, step=step)

    # ------------------------------------------------------------------ values
    def _extract_stats(self, trainer: "Trainer", interval: str) -> dict[str, float]:
        stats: dict[str, float] = {}
        configs = trainer.lr_scheduler_configs
        sched_names, seen, seen_types = self._find_names_from_schedulers(configs)
        self._remap_keys(sched_names)
        for names, config in zip(sched_names, configs):
            if interval in (config.interval, "any"):
                stats.update(self._get_optimizer_stats(config.scheduler.optimizer, names))
        opt_names, without_scheduler = self._find_names_from_optimizers(trainer.optimizers, seen, seen_types)
        self._remap_keys(opt_names)
        for optimizer, names in zip(without_scheduler, opt_names):
            stats.update(self._get_optimizer_stats(optimizer, names))
        if stats:
            device = trainer.strategy.root_device
            trainer.callback_metrics.update({k: torch.tensor(v, device=device) for k, v in stats.items()})
        return stats

    def _get_optimizer_stats(self, optimizer: Optimizer, names: list[str]) -> dict[str, float]:
        stats: dict[str, float] = {}
        use_betas = "betas" in optimizer.defaults
        for group, name in zip(optimizer.param_groups, names):
            lr = group["lr"]
            self.lrs.setdefault(name, []).append(lr)
            stats[name] = lr
            if self.log_momentum:
                momentum = group["betas"][0] if use_betas else group.get("momentum", 0)
                self.last_momentum_values[f"{name}-momentum"] = momentum
                stats[f"{name}-momentum"] = momentum
            if self.log_weight_decay:
                decay = group["weight_decay"]
                self.last_weight_decay_values[f"{name}-weight_decay"] = decay
                stats[f"{name}-weight_decay"] = decay
        return stats

    def _remap_keys(self, names: list[list[str]], token: str = "/pg1") -> None:
        """When an optimizer gains param groups, its old key ``lr-X`` continues as ``lr-X/pg1``."""
        for group in names:
            for new in group:
                old = new.replace(token, "")
                if token in new and old in self.lrs:
                    self.lrs[new] = self.lrs.pop(old)
                elif new not in self.lrs:
                    self.lrs[new] = []

    # ------------------------------------------------------------------ names
    def _find_names_from_schedulers(
        self, configs: list["LRSchedulerConfig"]
    ) -> tuple[list[list[str]], list[Optimizer], defaultdict]:
        names: list[list[str]] = []
        seen: list[Optimizer] = []
        seen_types: defaultdict = defaultdict(int)
        for config in configs:
            optimizer = config.scheduler.optimizer
            name = config.name if config.name is not None else f"lr-{type(optimizer).__name__}"
            names.append(self._names_for(optimizer, name, seen, seen_types, counted=config.name is None))
        return names, seen, seen_types

    def _find_names_from_optimizers(
        self, optimizers: list[Any], seen: list[Optimizer], seen_types: defaultdict
    ) -> tuple[list[list[str]], list[Optimizer]]:
        names: list[list[str]] = []
        without_scheduler: list[Optimizer] = []
        for optimizer in optimizers:
            optimizer = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wrapper
            if any(optimizer is s for s in seen):
                continue
            names.append(self._names_for(optimizer, f"lr-{type(optimizer).__name__}", seen, seen_types, counted=True))
            without_scheduler.append(optimizer)
        return names, without_scheduler

    @staticmethod
    def _names_for(optimizer: Optimizer, name: str, seen: list[Optimizer], seen_types: defaultdict,
                   counted: bool) -> list[str]:
        """One key per param group of ``optimizer``, made unique among optimizers of the same class."""
        seen.append(optimizer)
        cls = type(optimizer)
        if counted:
            seen_types[cls] += 1
        groups = optimizer.param_groups
        group_names = [g.get("name", f"pg{i}") for i, g in enumerate(groups, start=1)]
        duplicates = {n for n in group_names if group_names.count(n) > 1}
        if duplicates:
            raise MisconfigurationException(
                "A single `Optimizer` cannot have multiple parameter groups with identical `name` values. "
                f"{name} has duplicated parameter group names {duplicates}"
            )
        count = seen_types.get(cls, 0)
        if count > 1:
            name = f"{name}-{count - 1}"
        if len(groups) > 1:
            return [f"{name}/{g.get('name', f'pg{i}')}" for i, g in enumerate(groups, start=1)]
        if not groups:
            return []
        group_name = groups[0].get("name")
        return [f"{name}/{group_name}" if group_name else name]
