"""What happens around a loop: the steps between an entry point and its loop, and after it.

``Trainer._run_stage`` reads top to bottom with these: merge the module's callbacks, prepare the data once
per node, set up (datamodule, callbacks, module, strategy), restore a checkpoint, configure the optimizers,
log hyperparameters, run the loop, tear down. Each helper here works on the trainer's public state only.
"""
from __future__ import annotations

from typing import Any

from featherlight.callbacks.callback import Callback
from featherlight.callbacks.checkpoint import Checkpoint
from featherlight.callbacks.model_checkpoint import ModelCheckpoint
from featherlight.core.hooks import DataHooks
from featherlight.core.mixins.hparams_mixin import hparams_to_log
from featherlight.core.module import LightningModule
from featherlight.core.optimizer import optimizers_and_schedulers
from featherlight.loggers.logger import Logger
from featherlight.utilities.enums import RunningStage, TrainerFn
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.model_helpers import is_overridden
from featherlight.utilities.rank_zero import rank_zero_info, rank_zero_warn
from featherlight.utilities.warnings import PossibleUserWarning


def resolve_epoch_limit(trainer: "Trainer") -> None:
    """A fit without ``max_epochs`` runs 1000 epochs (with a warning), or without an epoch limit when ``max_steps``
    or a ``Timer`` (``max_time``) bounds it: Lightning's rule, applied when the fit starts."""
    if trainer.max_epochs is not None:
        return
    from featherlight.callbacks.timer import Timer

    if trainer.max_steps == -1 and not any(isinstance(cb, Timer) for cb in trainer.callbacks):
        rank_zero_warn(
            "`max_epochs` was not set. Setting it to 1000 epochs. To train without an epoch limit, set `max_epochs=-1`.",
            category=PossibleUserWarning,
        )
        trainer.max_epochs = 1000
    else:
        trainer.max_epochs = -1


def merge_module_callbacks(trainer: "Trainer") -> None:
    """``configure_callbacks`` results replace Trainer callbacks of the same type (Lightning's rule)."""
    extra = trainer.hooks.call_module("configure_callbacks")
    if not extra:
        return
    extra = [extra] if isinstance(extra, Callback) else list(extra)
    types = {type(c) for c in extra}
    kept = [c for c in trainer.callbacks if type(c) not in types and not (
        isinstance(c, ModelCheckpoint) and any(issubclass(t, ModelCheckpoint) for t in types))]
    if len(kept) != len(trainer.callbacks):
        rank_zero_info(
            "The following callbacks returned in `LightningModule.configure_callbacks` will override existing "
            f"callbacks passed to Trainer: {', '.join(sorted(t.__name__ for t in types))}"
        )
    trainer.callbacks = order_callbacks(kept + extra)


def order_callbacks(callbacks: list[Callback]) -> list[Callback]:
    """Tuner callbacks first, checkpoint callbacks last (they must see everything logged before them).

    Raises if two stateful callbacks share a ``state_key``: one state would overwrite the other.
    """
    first = [c for c in callbacks if getattr(c, "runs_first", False) is True]
    last = [c for c in callbacks if isinstance(c, Checkpoint)]
    middle = [c for c in callbacks if c not in first and c not in last]
    seen: dict[str, Callback] = {}
    for cb in callbacks:
        if not is_overridden("state_dict", cb, Callback):
            continue
        if cb.state_key in seen:
            raise RuntimeError(
                f"Found more than one stateful callback of type `{type(cb).__name__}` with the same `state_key` "
                f"({cb.state_key!r}): their states would overwrite each other in checkpoints. Give them different "
                "settings (e.g. a different `monitor`/`every_n_epochs` for ModelCheckpoint) or make `state_key` unique."
            )
        seen[cb.state_key] = cb
    return first + middle + last


def prepare_data(trainer: "Trainer") -> None:
    """``prepare_data`` of the datamodule and the module: once per node (or once in all), before any process sets
    up; every process waits for it."""
    module, dm = trainer.lightning_module, trainer.datamodule
    per_node = getattr(dm, "prepare_data_per_node", getattr(module, "prepare_data_per_node", True))
    if (trainer.local_rank if per_node else trainer.global_rank) == 0:
        if dm is not None and is_overridden("prepare_data", dm, DataHooks):
            trainer.hooks.call_datamodule("prepare_data")
        trainer.hooks.call_module("prepare_data")
    trainer.strategy.barrier("prepare_data")


def prepare_loggers(trainer: "Trainer") -> None:
    """Each logger's directory exists before callbacks' ``setup`` (so they can use ``trainer.log_dir``)."""
    for logger in trainer.loggers:
        if isinstance(logger, Logger):
            logger.prepare()
        else:  # a duck-typed logger: touching `experiment` creates it, as Lightning's loggers do
            getattr(logger, "experiment", None)


def setup(trainer: "Trainer", stage: str) -> None:
    """``setup(stage)`` of the datamodule, the callbacks and the module, then ``configure_model``."""
    hooks = trainer.hooks
    if trainer.datamodule is not None:
        hooks.call_datamodule("setup", stage=stage)
    hooks.call_callbacks("setup", stage)
    hooks.call_module("setup", stage)
    hooks.call_module("configure_model")


def check_module(trainer: "Trainer", fn: TrainerFn) -> None:
    """The module has what the entry point needs, in a combination that can work."""
    module = trainer.lightning_module
    if fn == TrainerFn.FITTING:
        if not is_overridden("training_step", module, LightningModule):
            raise MisconfigurationException(
                "No `training_step()` method defined. The `Trainer` expects as minimum a `training_step()`, "
                "`train_dataloader()` and `configure_optimizers()` to be defined."
            )
        if not is_overridden("configure_optimizers", module, LightningModule):
            raise MisconfigurationException(
                "No `configure_optimizers()` method defined. The `Trainer` expects as minimum a "
                "`training_step()`, `train_dataloader()` and `configure_optimizers()` to be defined."
            )
        if not module.automatic_optimization:
            if trainer.accumulate_grad_batches != 1:
                raise MisconfigurationException(
                    "Automatic gradient accumulation is not supported for manual optimization. Remove "
                    "`Trainer(accumulate_grad_batches=...)` or switch to automatic optimization."
                )
            if trainer.gradient_clip_val:
                raise MisconfigurationException(
                    "Automatic gradient clipping is not supported for manual optimization. Remove "
                    "`Trainer(gradient_clip_val=...)`, or switch to automatic optimization (or call "
                    "`self.clip_gradients(...)` in `training_step`)."
                )
    elif fn == TrainerFn.VALIDATING and not is_overridden("validation_step", module, LightningModule):
        raise MisconfigurationException(
            "No `validation_step()` method defined to run `Trainer.validate`; define it in your LightningModule."
        )
    elif fn == TrainerFn.TESTING and not is_overridden("test_step", module, LightningModule):
        raise MisconfigurationException(
            "No `test_step()` method defined to run `Trainer.test`; define it in your LightningModule."
        )


def configure_optimizers(trainer: "Trainer") -> None:
    """``configure_optimizers``, normalised; automatic optimisation needs exactly one optimizer."""
    from featherlight.utilities.signature_utils import is_param_in_hook_signature

    module = trainer.lightning_module
    trainer.optimizers, trainer.lr_scheduler_configs = optimizers_and_schedulers(
        trainer.hooks.call_module("configure_optimizers"), automatic=module.automatic_optimization)
    if is_param_in_hook_signature(module.training_step, "optimizer_idx", explicit=True):
        raise RuntimeError(
            "Training with multiple optimizers is only supported with manual optimization. Remove the `optimizer_idx`"
            " argument from `training_step`, set `self.automatic_optimization = False` and access your optimizers"
            " in `training_step` with `opt1, opt2, ... = self.optimizers()`."
        )
    if module.automatic_optimization and len(trainer.optimizers) > 1:
        raise RuntimeError(
            "Training with multiple optimizers is only supported with manual optimization. Set "
            "`self.automatic_optimization = False`, then access your optimizers in `training_step` with "
            "`opt1, opt2, ... = self.optimizers()`."
        )
    if module.automatic_optimization and not trainer.optimizers:
        raise MisconfigurationException(
            "`configure_optimizers` returned no optimizer; automatic optimization needs one. Return an "
            "optimizer, or set `self.automatic_optimization = False`."
        )


def log_hyperparams(trainer: "Trainer") -> None:
    """The module's and the datamodule's saved hyperparameters (and the graph) to every logger."""
    if not trainer.loggers or not trainer.enable_autolog_hparams:
        return
    module, dm = trainer.lightning_module, trainer.datamodule
    params: dict[str, Any] = dict(hparams_to_log(module) or {})
    dm_params = hparams_to_log(dm)
    if dm_params is not None:
        # `_class_path`: which class LightningCLI built, recorded by each of the two; not a clash
        overlap = (set(params) & set(dm_params)) - {"_class_path"}
        clash = [k for k in overlap if params[k] is not dm_params[k] and params[k] != dm_params[k]]
        if clash:
            raise RuntimeError(
                f"Error while merging hparams: the keys {clash} are present in both the LightningModule's and "
                "LightningDataModule's hparams but have different values. Rename one of them."
            )
        params.update(dm_params)
    params.pop("_class_path", None)  # LightningCLI's internal record, not a hyperparameter to log
    for logger in trainer.loggers:
        if params:
            logger.log_hyperparams(params)
        if hasattr(logger, "log_graph"):
            logger.log_graph(module)
        logger.save()


def run_evaluation_entry(trainer: "Trainer", fn: TrainerFn, verbose: bool, return_predictions: bool) -> Any:
    """``validate``/``test``/``predict``: load the loaders and run the evaluation loop once."""
    from featherlight.trainer import eval_loop

    if fn == TrainerFn.PREDICTING:
        loaders, limits = trainer.data.load_eval("predict")
        if not loaders:
            return []
        return eval_loop.run_predict(trainer, loaders, limits, return_predictions)
    prefix = "val" if fn == TrainerFn.VALIDATING else "test"
    stage = RunningStage.VALIDATING if fn == TrainerFn.VALIDATING else RunningStage.TESTING
    loaders, limits = trainer.data.load_eval(prefix)
    if not loaders:
        return []
    results = eval_loop.run_evaluation(trainer, stage, loaders, limits)
    if verbose and trainer.is_global_zero:
        print_results(results, "Validate" if prefix == "val" else "Test")
    return results


def teardown(trainer: "Trainer", stage: str) -> None:
    """``teardown`` of the datamodule, callbacks and module; loggers finalised; profiler report; strategy."""
    hooks = trainer.hooks
    if trainer.datamodule is not None:
        hooks.call_datamodule("teardown", stage=stage)
    hooks.call_callbacks("teardown", stage)
    hooks.call_module("teardown", stage)
    hooks.current = None
    for logger in trainer.loggers:
        logger.finalize("success")
    trainer.profiler.describe()
    trainer.profiler.teardown(stage)
    trainer.strategy.teardown()


def on_exception(trainer: "Trainer", exc: BaseException) -> None:
    """``on_exception`` everywhere; an interrupted run (Ctrl-C, a signal) still runs its teardown hooks."""
    if isinstance(exc, KeyboardInterrupt):
        rank_zero_info("\nDetected KeyboardInterrupt, attempting graceful shutdown ...")
    hooks = trainer.hooks
    try:
        if hooks.callbacks:
            hooks.call_callbacks("on_exception", exc)
        module = trainer.lightning_module
        if module is not None and hasattr(module, "on_exception"):
            module.on_exception(exc)
        if trainer.datamodule is not None:
            trainer.datamodule.on_exception(exc)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) and hooks.callbacks:
            # an interrupted run still releases what setup() acquired (files, workers, connections)
            stage = trainer.state.fn.value if trainer.state.fn is not None else "fit"
            if trainer.datamodule is not None:
                hooks.call_datamodule("teardown", stage=stage)
            hooks.call_callbacks("teardown", stage)
            hooks.call_module("teardown", stage)
    finally:
        for logger in trainer.loggers:
            try:
                logger.finalize("failed")
            except Exception:  # a logger failing must not hide the original error
                pass
        trainer.strategy.teardown()


def print_results(results: list[dict[str, float]], stage: str) -> None:
    """A plain table of the evaluation results (Lightning prints one too)."""
    if not results or not any(results):
        return
    keys = sorted({k for r in results for k in r})
    headers = [f"{stage} metric"] + [f"DataLoader {i}" for i in range(len(results))]
    rows = [[k] + [f"{r[k]:.10g}" if k in r else "" for r in results] for k in keys]
    widths = [max(len(h), *(len(row[i]) for row in rows)) + 4 for i, h in enumerate(headers)]
    line = "─" * sum(widths)
    out = [line, "".join(h.center(w) for h, w in zip(headers, widths)), line]
    out += ["".join(c.center(w) for c, w in zip(row, widths)) for row in rows]
    out.append(line)
    print("\n".join(out))
