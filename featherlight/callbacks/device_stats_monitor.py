"""``DeviceStatsMonitor``: the accelerator's statistics, logged around batches at the logging interval."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from featherlight.callbacks.callback import Callback
from featherlight.utilities.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule


class DeviceStatsMonitor(Callback):
    """Log the device's statistics at the start and end of training, validation and test batches.

    Keys are ``DeviceStatsMonitor.<hook>/<statistic>`` (e.g. ``DeviceStatsMonitor.on_train_batch_end/cpu_percent``),
    sent straight to the loggers every ``Trainer(log_every_n_steps=...)`` optimizer-stepping batches, at the step
    the other logged values use. On CUDA the statistics are ``torch.cuda.memory_stats`` (allocator counters in
    bytes); on the CPU, ``cpu_percent``, ``cpu_vm_percent`` and ``cpu_swap_percent`` (from ``psutil`` when it is
    installed, else from Linux's ``/proc``). Reading them costs a few microseconds and no host-device sync, and
    only on logging batches.

    Args:
        cpu_stats: ``None`` logs CPU statistics only when training on the CPU; ``True`` adds them on any
            accelerator; ``False`` never logs them.

    Raises:
        MisconfigurationException: at ``fit`` setup when the Trainer has no logger.
    """

    def __init__(self, cpu_stats: Optional[bool] = None) -> None:
        self._cpu_stats = cpu_stats

    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        if stage == "fit" and not trainer.loggers:
            raise MisconfigurationException(
                "Cannot use `DeviceStatsMonitor` callback with `Trainer(logger=False)`: it sends the statistics to "
                "the loggers. Pass a logger (the default `Trainer(logger=True)` writes TensorBoard or CSV files) or "
                "remove the callback."
            )

    def _log(self, trainer: "Trainer", hook: str) -> None:
        every = trainer.log_every_n_steps
        step = trainer.progress.batches_that_stepped
        if not trainer.loggers or not every or ((step + 1) % every and not trainer.should_stop):
            return
        from featherlight.accelerators.accelerator import cpu_stats

        device = trainer.strategy.root_device
        on_cpu = device.type == "cpu"
        if on_cpu and self._cpu_stats is False:
            return
        stats: dict[str, Any] = {} if on_cpu else trainer.accelerator.get_device_stats(device)
        if self._cpu_stats or (on_cpu and self._cpu_stats is None):
            stats.update(cpu_stats())
        for logger in trainer.loggers:
            separator = getattr(logger, "group_separator", "/")
            logger.log_metrics({f"{type(self).__qualname__}.{hook}{separator}{k}": v for k, v in stats.items()},
                               step=step)

    def on_train_batch_start(self, trainer: "Trainer", pl_module: "LightningModule", batch: Any,
                             batch_idx: int) -> None:
        self._log(trainer, "on_train_batch_start")

    def on_train_batch_end(self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._log(trainer, "on_train_batch_end")

    def on_validation_batch_start(self, trainer: "Trainer", pl_module: "LightningModule", batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._log(trainer, "on_validation_batch_start")

    def on_validation_batch_end(self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._log(trainer, "on_validation_batch_end")

    def on_test_batch_start(self, trainer: "Trainer", pl_module: "LightningModule", batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self._log(trainer, "on_test_batch_start")

    def on_test_batch_end(self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._log(trainer, "on_test_batch_end")
