"""Evaluation (validation, test, sanity check) and prediction: one pass over each dataloader."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from featherlight.trainer.logging import ResultStore
from featherlight.trainer.progress import Phase
from featherlight.utilities.enums import RunningStage
from featherlight.utilities.model_helpers import is_overridden
from featherlight.utilities.signature_utils import drop_batch_idx, is_param_in_hook_signature

_NAMES = {
    RunningStage.VALIDATING: "validation",
    RunningStage.SANITY_CHECKING: "validation",
    RunningStage.TESTING: "test",
}


def run_evaluation(trainer: "Trainer", stage: RunningStage, loaders: list, limits: list,
                   reload: Optional[Callable[[], tuple[list, list]]] = None) -> list[dict[str, float]]:
    """Run ``validation_step``/``test_step`` over ``loaders`` (``limits[i]`` batches each).

    ``reload`` (when dataloaders are reloaded every n epochs) fetches fresh loaders at the point
    Lightning does: after the module's gradients are dropped, before it is put in eval mode.

    Returns one dict per dataloader of the epoch-level metrics sent to the loggers, as floats.
    """
    fn = _NAMES[stage]
    module = trainer.lightning_module
    hooks, results, data, interrupts = trainer.hooks, trainer.results, trainer.data, trainer.interrupts
    call = hooks.call
    strategy = trainer.strategy
    precision = trainer.precision_plugin
    step = hooks.profiled(strategy.step_function(f"{fn}_step"), f"[Strategy]{type(strategy).__name__}.{fn}_step")
    if not is_param_in_hook_signature(getattr(module, f"{fn}_step"), "batch_idx", min_args=2):
        step = drop_batch_idx(step)  # a step written without `batch_idx` (Lightning reads the signature)
    multiple = len(loaders) > 1

    store = ResultStore(training=False)
    store.num_dataloaders = len(loaders)
    results.switch(trainer, store)
    previous_stage, trainer.state.stage = trainer.state.stage, stage
    eval_hook = "on_validation_model_eval" if fn == "validation" else "on_test_model_eval"
    train_hook = "on_validation_model_train" if fn == "validation" else "on_test_model_train"
    if stage == RunningStage.VALIDATING and trainer.state.fn == "fit":
        hooks.call_module("on_validation_model_zero_grad")
    if reload is not None:
        loaders, limits = reload()
    modes = _capture_modes(module)
    # the hooks around the steps run under the evaluation's no-grad/inference mode too, as in Lightning; the
    # results are folded outside it (their running totals must stay ordinary tensors)
    with _grad_context(trainer):
        hooks.call_module(eval_hook)
        call(f"on_{fn}_start")
        call(f"on_{fn}_epoch_start")
    with _grad_context(trainer):
        for dataloader_idx, (loader, limit) in enumerate(zip(loaders, limits)):
            extra = (dataloader_idx,) if multiple else ()
            fetch = hooks.profiled_iter(loader, fn)
            batch_idx = 0
            while batch_idx < limit:
                try:
                    batch = next(fetch)
                except StopIteration:
                    break
                batch = data.transfer(batch, dataloader_idx)
                store.new_batch(batch, dataloader_idx if multiple else None)
                call(f"on_{fn}_batch_start", batch, batch_idx, *extra)
                hooks.current = f"{fn}_step"
                with precision.forward_context():
                    output = step(batch, batch_idx, *extra)
                hooks.current = None
                call(f"on_{fn}_batch_end", output, batch, batch_idx, *extra)
                results.log_eval_step(trainer, stage, dataloader_idx)
                batch_idx += 1
                # one process only: ranks may run different numbers of evaluation batches, so several
                # processes agree on a signal at training batch boundaries instead
                if interrupts.received is not None and not interrupts.every:
                    interrupts.check(trainer)
    results.end_epoch(trainer)
    with _grad_context(trainer):
        call(f"on_{fn}_epoch_end")
    out = results.log_eval_epoch(trainer, stage, len(loaders))
    if stage == RunningStage.VALIDATING and trainer.state.fn == "fit":
        trainer.progress.phase = Phase.VALIDATED  # a checkpoint from on_validation_end does not run it again
    with _grad_context(trainer):
        call(f"on_{fn}_end")
        _restore_modes(trainer, module, train_hook, modes)
    store.reset_metrics()
    trainer.state.stage = previous_stage
    return out


def run_predict(trainer: "Trainer", loaders: list, limits: list, return_predictions: bool) -> Any:
    """Run ``predict_step`` over ``loaders``; returns the outputs (a list, or a list per dataloader)."""
    module = trainer.lightning_module
    hooks, data = trainer.hooks, trainer.data
    call = hooks.call
    precision = trainer.precision_plugin
    multiple = len(loaders) > 1
    trainer.results.switch(trainer, None)
    trainer.state.stage = RunningStage.PREDICTING
    modes = _capture_modes(module)
    with _grad_context(trainer):  # as in Lightning, the hooks around the steps run without gradients too
        hooks.call_module("on_predict_model_eval")
        call("on_predict_start")
        call("on_predict_epoch_start")
    predictions: list[list] = [[] for _ in loaders]
    strategy = trainer.strategy
    predict_step = hooks.profiled(strategy.step_function("predict_step"),
                                  f"[Strategy]{type(strategy).__name__}.predict_step")
    if not is_param_in_hook_signature(module.predict_step, "batch_idx", min_args=2):
        predict_step = drop_batch_idx(predict_step)
    with _grad_context(trainer):
        for dataloader_idx, (loader, limit) in enumerate(zip(loaders, limits)):
            extra = (dataloader_idx,) if multiple else ()
            fetch = hooks.profiled_iter(loader, "predict")
            batch_idx = 0
            while batch_idx < limit:
                try:
                    batch = next(fetch)
                except StopIteration:
                    break
                batch = data.transfer(batch, dataloader_idx)
                call("on_predict_batch_start", batch, batch_idx, *extra)
                hooks.current = "predict_step"
                with precision.forward_context():
                    output = predict_step(batch, batch_idx, *extra)
                hooks.current = None
                call("on_predict_batch_end", output, batch, batch_idx, *extra)
                if return_predictions:
                    predictions[dataloader_idx].append(output)
                batch_idx += 1
    trainer.predict_loop_predictions = predictions
    with _grad_context(trainer):
        call("on_predict_epoch_end")
        call("on_predict_end")
        _restore_modes(trainer, module, None, modes)
    if not return_predictions:
        return None
    return predictions if multiple else predictions[0]


def _grad_context(trainer: "Trainer") -> Any:
    """``inference_mode`` (the ``Trainer(inference_mode=True)`` default) unless the strategy can't use it
    (FSDP reuses gathered parameters in training), else ``no_grad``."""
    if trainer.inference_mode and trainer.strategy.supports_inference_mode:
        return torch.inference_mode()
    return torch.no_grad()


def _capture_modes(module: torch.nn.Module) -> dict[torch.nn.Module, bool]:
    return {m: m.training for m in module.modules()}


def _restore_modes(trainer: "Trainer", module: torch.nn.Module, train_hook: Any, modes: dict) -> None:
    """After evaluation: the user's ``on_*_model_train`` if overridden, else every submodule's own mode
    back as it was (so a frozen, eval-mode backbone stays in eval mode)."""
    if train_hook is not None and is_overridden(train_hook, module):
        trainer.hooks.call_module(train_hook)
        return
    for m, training in modes.items():
        m.training = training
