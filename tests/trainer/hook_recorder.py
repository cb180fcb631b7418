"""Record every hook a framework calls, for Lightning and featherlight alike (the golden hook-order test).

Calls are recorded when they return (nested hooks appear before their parent), as Lightning's own
hook-order test does.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

MODULE_HOOKS = [
    "backward", "clip_gradients", "configure_callbacks", "configure_gradient_clipping", "configure_model",
    "configure_optimizers", "forward", "lr_scheduler_step", "on_after_backward", "on_after_batch_transfer",
    "on_before_backward", "on_before_batch_transfer", "on_before_optimizer_step", "on_before_zero_grad",
    "on_fit_end", "on_fit_start", "on_load_checkpoint", "on_predict_batch_end", "on_predict_batch_start",
    "on_predict_end", "on_predict_epoch_end", "on_predict_epoch_start", "on_predict_model_eval",
    "on_predict_start", "on_save_checkpoint", "on_test_batch_end", "on_test_batch_start", "on_test_end",
    "on_test_epoch_end", "on_test_epoch_start", "on_test_model_eval", "on_test_model_train", "on_test_start",
    "on_train_batch_end", "on_train_batch_start", "on_train_end", "on_train_epoch_end", "on_train_epoch_start",
    "on_train_start", "on_validation_batch_end", "on_validation_batch_start", "on_validation_end",
    "on_validation_epoch_end", "on_validation_epoch_start", "on_validation_model_eval",
    "on_validation_model_train", "on_validation_model_zero_grad", "on_validation_start", "optimizer_step",
    "optimizer_zero_grad", "predict_dataloader", "predict_step", "prepare_data", "setup", "teardown",
    "test_dataloader", "test_step", "train", "train_dataloader", "training_step", "transfer_batch_to_device",
    "val_dataloader", "validation_step", "zero_grad",
]

CALLBACK_HOOKS = [
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
    "on_train_batch_start", "on_train_batch_end", "on_train_epoch_start", "on_train_epoch_end",
    "on_validation_epoch_start", "on_validation_epoch_end", "on_test_epoch_start", "on_test_epoch_end",
    "on_predict_epoch_start", "on_predict_epoch_end", "on_validation_batch_start", "on_validation_batch_end",
    "on_test_batch_start", "on_test_batch_end", "on_predict_batch_start", "on_predict_batch_end",
    "on_train_start", "on_train_end", "on_validation_start", "on_validation_end", "on_test_start",
    "on_test_end", "on_predict_start", "on_predict_end", "on_save_checkpoint", "on_load_checkpoint",
    "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
    "state_dict", "load_state_dict",
]


class _Data(Dataset):
    def __init__(self, n: int) -> None:
        self.x = torch.randn(n, 32, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def _describe(name: str, args: tuple, kwargs: dict) -> str:
    # keep what matters for order: the hook, the batch index / stage / train-mode flag
    extra = []
    if name in ("setup", "teardown", "Callback.setup", "Callback.teardown"):
        stage = kwargs.get("stage", args[-1] if args else None)
        extra.append(str(getattr(stage, "value", stage)))
    if name == "train":
        extra.append(str(args[0] if args else kwargs.get("mode", True)))
    if name.endswith("batch_start") or name.endswith("batch_end") or name in ("training_step", "validation_step",
                                                                            "test_step", "predict_step"):
        ints = [a for a in args if isinstance(a, int) and not isinstance(a, bool)]
        if ints:
            extra.append(str(ints[0]))
    return name + (f"({','.join(extra)})" if extra else "")


def make_classes(L: Any, n_train: int = 4, n_val: int = 4) -> tuple[type, type]:
    """(HookedModel, HookedCallback) built on framework ``L`` (``lightning`` or ``featherlight``)."""

    class HookedCallback(L.Callback):
        def __init__(self, called: list) -> None:
            for h in CALLBACK_HOOKS:
                original = getattr(self, h)

                def record(*args: Any, _h: str = h, _fn: Any = original, **kwargs: Any) -> Any:
                    out = _fn(*args, **kwargs)
                    called.append(_describe(f"Callback.{_h}", args[2:] if _h not in ("state_dict", "load_state_dict") else (), kwargs))
                    return out

                setattr(self, h, record)

    class HookedModel(L.LightningModule):
        def __init__(self, called: list) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(32, 2)
            for h in MODULE_HOOKS:
                original = getattr(self, h)

                def record(*args: Any, _h: str = h, _fn: Any = original, **kwargs: Any) -> Any:
                    out = _fn(*args, **kwargs)
                    called.append(_describe(_h, args, kwargs))
                    return out

                object.__setattr__(self, h, functools.wraps(original)(record))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

        # defined on the class so both frameworks see them as overridden (they check the class)
        def prepare_data(self) -> None:
            pass

        def configure_model(self) -> None:
            pass

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return {"loss": self(batch).sum()}

        def validation_step(self, batch: Any, batch_idx: int) -> Any:
            return {"x": self(batch).sum()}

        def test_step(self, batch: Any, batch_idx: int) -> Any:
            return {"y": self(batch).sum()}

        def predict_step(self, batch: Any, batch_idx: int) -> Any:
            return self(batch)

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.layer.parameters(), lr=0.1)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1)]

        def train_dataloader(self) -> DataLoader:
            return DataLoader(_Data(n_train), batch_size=2)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(_Data(n_val), batch_size=2)

        def test_dataloader(self) -> DataLoader:
            return DataLoader(_Data(4), batch_size=2)

        def predict_dataloader(self) -> DataLoader:
            return DataLoader(_Data(4), batch_size=2)

    return HookedModel, HookedCallback


TRAINER_KWARGS = dict(
    max_epochs=1, limit_train_batches=2, limit_val_batches=1, limit_test_batches=1, limit_predict_batches=1,
    num_sanity_val_steps=1, enable_progress_bar=False, enable_model_summary=False, logger=False,
    accelerator="cpu", devices=1,
)


def record(L: Any, fn: str, n_train: int = 4, n_val: int = 4, bare: bool = False, **trainer_kwargs: Any) -> list[str]:
    """The hooks ``L`` calls for ``trainer.<fn>(model)``. ``bare`` drops the default batch limits."""
    called: list[str] = []
    HookedModel, HookedCallback = make_classes(L, n_train, n_val)
    model = HookedModel(called)
    kwargs = dict(TRAINER_KWARGS, enable_checkpointing=False)
    if bare:
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                    "num_sanity_val_steps"):
            kwargs.pop(key)
    kwargs.update(trainer_kwargs)
    trainer = L.Trainer(callbacks=[HookedCallback(called)], default_root_dir=kwargs.pop("default_root_dir", None),
                        **kwargs)
    called.clear()  # ignore anything before the entry point
    getattr(trainer, fn)(model)
    return called


SCENARIOS: dict[str, tuple[str, dict]] = {
    "fit": ("fit", {}),
    "fit_accumulate": ("fit", {"accumulate_grad_batches": 2, "limit_train_batches": 3}),
    "fit_clip": ("fit", {"gradient_clip_val": 1.0}),
    "fit_two_epochs_val_interval": ("fit", {"max_epochs": 2, "val_check_interval": 1, "limit_train_batches": 2}),
    "fast_dev_run": ("fit", {"bare": True, "fast_dev_run": True, "max_epochs": 3}),
    "fast_dev_run_2": ("fit", {"bare": True, "fast_dev_run": 2, "n_train": 8}),
    "max_steps": ("fit", {"bare": True, "max_epochs": -1, "max_steps": 3, "n_val": 2}),
    "val_check_fraction": ("fit", {"bare": True, "n_train": 8, "n_val": 2, "val_check_interval": 0.5}),
    "check_val_every_2_epochs": ("fit", {"bare": True, "n_val": 2, "max_epochs": 3, "check_val_every_n_epoch": 2}),
    "val_interval_across_epochs": ("fit", {"bare": True, "n_val": 2, "max_epochs": 3, "val_check_interval": 3,
                                           "check_val_every_n_epoch": None}),
    "sanity_all": ("fit", {"bare": True, "n_val": 6, "num_sanity_val_steps": -1, "limit_train_batches": 1}),
    "no_sanity": ("fit", {"bare": True, "num_sanity_val_steps": 0}),
    "limit_fraction": ("fit", {"bare": True, "n_train": 8, "limit_train_batches": 0.5, "limit_val_batches": 0.5}),
    "limit_val_zero": ("fit", {"bare": True, "limit_val_batches": 0}),
    "overfit": ("fit", {"bare": True, "n_train": 8, "overfit_batches": 2}),
    "reload_dataloaders": ("fit", {"bare": True, "n_val": 2, "max_epochs": 3, "reload_dataloaders_every_n_epochs": 1}),
    "min_max_epochs": ("fit", {"bare": True, "n_val": 2, "max_epochs": 2, "min_epochs": 1}),
    "validate": ("validate", {}),
    "test": ("test", {}),
    "predict": ("predict", {}),
}


if __name__ == "__main__":  # regenerate the golden file from Lightning: python tests/trainer/hook_recorder.py
    import json
    import os

    import lightning.pytorch as pl

    golden = {name: record(pl, fn, **kw) for name, (fn, kw) in SCENARIOS.items()}
    path = os.path.join(os.path.dirname(__file__), "golden_hooks.json")
    with open(path, "w") as f:
        json.dump({"lightning_version": pl.__version__, "scenarios": golden}, f, indent=1)
    print(f"wrote {path}")
