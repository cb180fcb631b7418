"""Exact resume: what a checkpoint records about the position inside an epoch, and how a resumed run
gets back there.

Saved with every mid-epoch checkpoint: the loop phase and batch, the RNG states from when the
epoch's data order was drawn, the resumable sampler's seed, a stateful dataloader's own state, the
gradients of an unfinished accumulation window, the epoch's logged values so far, and (if taken
inside validation) the RNG states from when that validation began. On resume the data order is
redrawn from the same seed and the sampler starts after the batches already trained on: nothing is
loaded to be thrown away.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Optional

import torch

from featherlight.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from featherlight.trainer.logging import _ResultStore
    from featherlight.trainer.trainer import Trainer

_MID_EPOCH = ("batch", "ended", "validating", "validated", "done", "epoch_end")


def _position_state(trainer: "Trainer") -> dict[str, Any]:
    """The extra state a mid-epoch checkpoint needs (nothing at an epoch boundary)."""
    from featherlight.trainer.checkpoint import _rng_to_tensors
    from featherlight.trainer.data import _resumable_sampler

    loop = trainer._loop
    if loop.phase not in _MID_EPOCH or trainer.state.fn != "fit":
        return {}
    out: dict[str, Any] = {}
    loader = trainer.train_dataloader
    if loop.epoch_start_rng is not None:
        out["epoch_start_rng"] = _rng_to_tensors(loop.epoch_start_rng)
    sampler = _resumable_sampler(loader)
    if sampler is not None:
        out["sampler"] = sampler.state_dict()
    if hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict"):
        out["loader"] = loader.state_dict()  # torchdata's StatefulDataLoader knows its own position
    module = trainer.lightning_module
    mid_window = not module.automatic_optimization or not loop.batch_stepped or loop.phase == "batch"
    if mid_window:
        grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
        if grads:
            out["grads"] = grads
    store = trainer._log.store
    if store is not None and store.training:
        out["results"] = store.state_dict()
    elif trainer._train_store is not None:
        out["results"] = trainer._train_store.state_dict()
    if loop.phase == "validating" and loop.val_start_rng is not None:
        out["val_start_rng"] = _rng_to_tensors(loop.val_start_rng)
    return out


class _ResumePoint:
    """A mid-epoch position read from a checkpoint; the fit loop consumes it when it starts."""

    def __init__(self, state: dict[str, Any]) -> None:
        from featherlight.trainer.checkpoint import _rng_from_tensors

        self.phase: str = state["phase"]
        self.batch_idx: int = int(state["batch_idx"])
        self.stepped: bool = bool(state.get("batch_stepped", True))
        self.is_last: bool = bool(state.get("batch_is_last", False))
        self.epoch_start_rng = _rng_from_tensors(state["epoch_start_rng"]) if "epoch_start_rng" in state else None
        self.val_start_rng = _rng_from_tensors(state["val_start_rng"]) if "val_start_rng" in state else None
        self.sampler: Optional[dict] = state.get("sampler")
        self.loader: Optional[dict] = state.get("loader")
        self.grads: Optional[dict] = state.get("grads")
        self.results: Optional[dict] = state.get("results")

    def restore_epoch(self, trainer: "Trainer", store: "_ResultStore") -> int:
        """Put back the epoch's logged values and accumulated gradients; returns the first batch to run."""
        from featherlight.utilities.seed import _set_rng_states

        loop = trainer._loop
        loop.epoch_start_rng = self.epoch_start_rng
        if self.results:
            store.load_state_dict(self.results)
        if self.grads:
            params = dict(trainer.lightning_module.named_parameters())
            for name, grad in self.grads.items():
                if name in params:
                    params[name].grad = grad.to(params[name].device)
        if self.phase == "validating" and self.val_start_rng is not None:
            _set_rng_states(self.val_start_rng)  # the interrupted validation runs again from its start
        if self.phase == "batch":
            rank_zero_warn(
                f"The checkpoint was taken inside training batch {self.batch_idx} (before its optimizer step "
                "finished); that batch runs again, so this resume is not bit-exact. Checkpoints taken from "
                "callbacks (ModelCheckpoint) or the interruption handler are."
            )
            return self.batch_idx
        if self.phase == "epoch_end":
            return int(trainer.num_training_batches) if trainer.num_training_batches != float("inf") else 0
        return self.batch_idx + 1

    def iterator(self, trainer: "Trainer", loader: Any, start: int) -> Iterator:
        """An iterator over ``loader`` that yields the epoch's batches from ``start`` on."""
        from featherlight.trainer.data import _resumable_sampler
        from featherlight.utilities.seed import _set_rng_states, isolate_rng

        if self.loader is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(self.loader)
            return trainer._profiled_iter(loader, "train")
        sampler = _resumable_sampler(loader)
        batch_size = getattr(loader, "batch_size", None)
        with isolate_rng():
            # the iterator draws its seeds as it did when this epoch first started
            if self.epoch_start_rng is not None:
                _set_rng_states(self.epoch_start_rng)
            if sampler is not None and batch_size is not None and self.sampler is not None or (
                    sampler is not None and batch_size is not None and not getattr(sampler, "shuffle", True)):
                sampler.load_state_dict(self.sampler, skip=start * batch_size)
                return trainer._profiled_iter(loader, "train")
            rank_zero_warn(
                f"Resuming mid-epoch: this dataloader has no resumable sampler (custom sampler, batch sampler or "
                f"iterable dataset), so the {start} batches already trained on are loaded and skipped. Use a plain "
                "DataLoader over a map-style dataset, or torchdata's StatefulDataLoader, to skip them for free."
            )
            it = trainer._profiled_iter(loader, "train")
            for _ in range(start):
                next(it)
        return it
