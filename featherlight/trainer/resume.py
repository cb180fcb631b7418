"""Exact resume: what a checkpoint records about the position inside an epoch, and how a resumed run
gets back there.

Saved with every mid-epoch checkpoint: the loop phase and batch, the RNG states from when the
epoch's data order was drawn, the resumable sampler's seed, a stateful dataloader's own state, the
gradients of an unfinished accumulation window, the epoch's logged values so far, and (if taken
inside validation) the RNG states from when that validation began. On resume the data order is
redrawn from the same seed and the sampler starts after the batches already trained on: nothing is
loaded to be thrown away.

With another number of processes (e.g. a 2-process DDP checkpoint resumed in one process, or the
reverse) the position is counted in samples of the epoch's order (``data_order``: the order's
description, the world size and how many samples were trained on): rank ``r`` of ``W`` reads positions
``r, r + W, ...`` of the order, so after ``k`` batches of ``B`` per rank exactly the first ``W*k*B``
positions are done. The resumed run redraws the same order, splits the rest over its own ranks the
same way, and runs that many batches (the epoch's last batch indices); later epochs are its own.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Optional

from featherlight.strategies.samplers import _EpochContinuation, _samples_done, resumable_sampler
from featherlight.trainer.progress import Phase
from featherlight.utilities.rank_zero import rank_zero_info, rank_zero_warn
from featherlight.utilities.seed import _set_rng_states, isolate_rng, rng_states_from_tensors, rng_states_to_tensors

if TYPE_CHECKING:
    from featherlight.trainer.logging import ResultStore


def _position_state(trainer: "Trainer") -> dict[str, Any]:
    """The extra state a mid-epoch checkpoint needs (nothing at an epoch boundary)."""
    loop = trainer.progress
    if not Phase(loop.phase).mid_epoch or trainer.state.fn != "fit":
        return {}
    out: dict[str, Any] = {}
    loader = trainer.data.train_iterable
    if loop.epoch_start_rng is not None:
        out["epoch_start_rng"] = rng_states_to_tensors(loop.epoch_start_rng)
    sampler = resumable_sampler(loader)
    out["world_size"] = int(trainer.world_size)
    if sampler is not None:
        out["sampler"] = sampler.state_dict()
        data_order = _data_order_state(trainer, loader, sampler)
        if data_order is not None:
            out["data_order"] = data_order
    if hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict"):
        out["loader"] = loader.state_dict()  # torchdata's StatefulDataLoader knows its own position
    module = trainer.lightning_module
    mid_window = not module.automatic_optimization or not loop.batch_stepped or loop.phase == Phase.BATCH
    if mid_window:
        grads = trainer.strategy.accumulated_grads(module)
        if grads:
            out["grads"] = grads
    results = trainer.results
    store = results.store
    if store is not None and store.training:
        out["results"] = store.state_dict()
    elif results.train_store is not None:
        out["results"] = results.train_store.state_dict()
    if loop.phase == Phase.VALIDATING and loop.val_start_rng is not None:
        out["val_start_rng"] = rng_states_to_tensors(loop.val_start_rng)
    monitors = {config.monitor: trainer.callback_metrics[config.monitor].detach().cpu().clone()
                for config in trainer.lr_scheduler_configs
                if config.reduce_on_plateau and config.monitor in trainer.callback_metrics}
    if monitors:  # what the plateau schedulers step on at this epoch's end (see ``ResumePoint.monitors``)
        out["monitors"] = monitors
    return out


def _data_order_state(trainer: "Trainer", loader: Any, sampler: Any) -> Optional[dict[str, Any]]:
    """Where the epoch is in its sample order, in samples (not batches): what a resume with another number of
    processes needs to continue with exactly the samples not trained on yet (see ``_EpochContinuation``)."""
    batch_size = getattr(loader, "batch_size", None)
    if not batch_size:
        return None
    data = sampler.order_state()
    if data is None:
        return None
    loop = trainer.progress
    if data["end"] is None:  # the sampler's own epoch: it ends after the run's number of batches
        n_batches = trainer.num_training_batches
        if not isinstance(n_batches, int) and (n_batches != n_batches or n_batches == float("inf")):
            return None
        data["end"] = min(int(data["length"]), int(data["world_size"]) * int(batch_size) * int(n_batches))
    data.update(batch_size=int(batch_size), drop_last=bool(getattr(loader, "drop_last", False)),
                trainer_world_size=int(trainer.world_size))
    data["consumed"] = _samples_done(data, Phase(loop.phase).value, int(loop.batch_idx), int(batch_size))
    return data


def _dataset_size(sampler: Any) -> int:
    dataset = getattr(sampler, "dataset", None)
    return len(dataset) if dataset is not None else int(getattr(sampler, "n", len(sampler)))


class ResumePoint:
    """A mid-epoch position read from a checkpoint; the fit loop consumes it when it starts."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.phase = Phase(state["phase"])
        self.batch_idx: int = int(state["batch_idx"])
        self.stepped: bool = bool(state.get("batch_stepped", True))
        self.is_last: bool = bool(state.get("batch_is_last", False))
        self.epoch_start_rng = rng_states_from_tensors(state["epoch_start_rng"]) if "epoch_start_rng" in state else None
        self.val_start_rng = rng_states_from_tensors(state["val_start_rng"]) if "val_start_rng" in state else None
        self.sampler: Optional[dict] = state.get("sampler")
        self.loader: Optional[dict] = state.get("loader")
        self.grads: Optional[dict] = state.get("grads")
        # FSDP: ``grads`` is the mean over the saving run's ranks (not rank 0's alone), see ``FSDPStrategy``
        self.grads_averaged: bool = bool(state.get("grads_averaged", False))
        self.results: Optional[dict] = state.get("results")
        self.world_size: Optional[int] = int(state["world_size"]) if "world_size" in state else None
        self.data_order: Optional[dict] = state.get("data_order")
        # plateau schedulers' monitors when the checkpoint was taken: the epoch's end steps them with these
        self.monitors: Optional[dict] = state.get("monitors")
        self.continued = False  # the epoch goes on from ``data_order`` (another world size), see ``_continue``

    def restore_epoch(self, trainer: "Trainer", store: "ResultStore") -> int:
        """Put back the epoch's logged values and accumulated gradients; returns the first batch to run."""
        trainer.progress.epoch_start_rng = self.epoch_start_rng
        trainer.progress.resumed_monitors = self.monitors
        if self.results:
            store.load_state_dict(self.results)
        if self.grads:
            trainer.strategy.restore_accumulated_grads(trainer.lightning_module, self.grads)
        if self.phase == Phase.VALIDATING and self.val_start_rng is not None:
            _set_rng_states(self.val_start_rng)  # the interrupted validation runs again from its start
        if self.phase == Phase.BATCH:
            rank_zero_warn(
                f"The checkpoint was taken inside training batch {self.batch_idx} (before its optimizer step "
                "finished); that batch runs again, so this resume is not bit-exact. Checkpoints taken from "
                "callbacks (ModelCheckpoint) or the interruption handler are."
            )
            return self._continue(trainer, self.batch_idx)
        if self.phase == Phase.EPOCH_END:
            return int(trainer.num_training_batches) if trainer.num_training_batches != float("inf") else 0
        return self._continue(trainer, self.batch_idx + 1)

    def _continue(self, trainer: "Trainer", start: int) -> int:
        """The first batch to run. With as many processes as the checkpoint's run, ``start`` (each rank skips
        its own first ``start`` batches). With another number, the sampler is handed the samples of the epoch's
        order not trained on yet, split over the new ranks, and the epoch ends with its last batch as usual."""
        data, old_world, new_world = self.data_order, self.world_size, int(trainer.world_size)
        changed = old_world is not None and old_world != new_world
        if data is None or not (changed or data.get("continued")):
            if changed:
                rank_zero_warn(
                    f"Resuming mid-epoch with {new_world} process(es) from a checkpoint written by {old_world}, but "
                    "the interrupted epoch's sample order cannot be continued exactly: its training dataloader has "
                    "no featherlight sampler (a custom sampler or batch sampler, an iterable dataset, or "
                    f"`use_distributed_sampler=False`). Every rank skips its first {start} batch(es) and trains on the "
                    f"rest of its own share, so samples of epoch {trainer.progress.epoch} may be trained on twice or not "
                    "at all. Resume at an epoch boundary, or with the same number of processes, to avoid this."
                )
            return start
        loader = trainer.data.train_iterable
        sampler = resumable_sampler(loader)
        replicas = int(getattr(sampler, "num_replicas", 1)) if sampler is not None else 0
        batch_size = getattr(loader, "batch_size", None)
        order = data["order"]
        reason = None
        if int(data.get("trainer_world_size", data["world_size"])) != int(data["world_size"]):
            reason = (f"the checkpoint's run read its data with a sampler of {data['world_size']} replica(s) in "
                      f"{data.get('trainer_world_size')} processes (`use_distributed_sampler=False`?)")
        elif sampler is None or not batch_size:
            reason = "this run's training dataloader has no featherlight sampler (a custom sampler or batch sampler)"
        elif replicas != new_world:
            reason = (f"this run's sampler has {replicas} replica(s) for {new_world} processes "
                      "(`use_distributed_sampler=False`?)")
        elif int(order["n"]) != _dataset_size(sampler):
            reason = f"the dataset has {_dataset_size(sampler)} samples, the checkpoint's had {order['n']}"
        if reason is not None:
            rank_zero_warn(
                f"Resuming mid-epoch (checkpoint from {old_world} process(es), now {new_world}) cannot continue the "
                f"interrupted epoch's sample order: {reason}. Every rank skips its first {start} batch(es) and "
                "trains on the rest of its own share, so samples of this epoch may be trained on twice or not at "
                "all. Resume at an epoch boundary to avoid this."
            )
            return start
        rank = int(getattr(sampler, "rank", 0)) if new_world > 1 else 0
        continuation = _EpochContinuation(order, int(data["consumed"]), int(data["end"]), new_world, rank,
                                          int(batch_size), bool(getattr(loader, "drop_last", False)))
        n_batches = trainer.num_training_batches
        total = int(n_batches) if n_batches != float("inf") else continuation.num_batches
        start = total - continuation.num_batches
        if start < 0:
            rank_zero_warn(
                f"The rest of the interrupted epoch needs {continuation.num_batches} batches per process, but this "
                f"run takes {total} per epoch (`limit_train_batches`): its last "
                f"{max(0, continuation.remaining - total * batch_size * new_world)} sample(s) are not trained on in "
                "this epoch."
            )
            start = 0
        continuation.base_batch = start
        if continuation.num_batches and start < total:
            sampler.continue_epoch(continuation)  # taken by the epoch's iterator, whichever path creates it
            self.continued = True
        if changed:
            rank_zero_info(
                f"Resuming epoch {trainer.progress.epoch} with {new_world} process(es) (the checkpoint's run had "
                f"{old_world}): {continuation.consumed} of its samples were trained on, the other "
                f"{continuation.remaining} are split over the processes ({min(continuation.num_batches, total)} "
                f"batch(es) each, batch indices {start}..{total - 1}"
                + (f", {continuation.padding} sample(s) repeated to even out the ranks" if continuation.padding
                   else "") + ")."
            )
            if self.grads and self.grads_averaged:
                rank_zero_info(
                    "The checkpoint was taken inside a gradient accumulation window: the window's gradients so far "
                    f"(the mean over the {old_world} saving processes) are restored on every process and the "
                    "window continues."
                )
            elif self.grads:
                rank_zero_warn(
                    "The checkpoint was taken inside a gradient accumulation window and the number of processes "
                    "changed: the window's gradients so far are global rank 0's alone (ranks synchronise them "
                    "only when the window closes), so the first optimizer step after this resume differs from "
                    "one without the change. Save at the end of a window to avoid this."
                )
        return start

    def iterator(self, trainer: "Trainer", loader: Any, start: int) -> Iterator:
        """An iterator over ``loader`` that yields the epoch's batches from ``start`` on."""
        profiled_iter = trainer.hooks.profiled_iter
        if self.loader is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(self.loader)
            return profiled_iter(loader, "train")
        if self.continued:  # the sampler holds the rest of the epoch already (see ``_continue``)
            with isolate_rng():
                if self.epoch_start_rng is not None:
                    _set_rng_states(self.epoch_start_rng)
                return profiled_iter(loader, "train")
        sampler = resumable_sampler(loader)
        batch_size = getattr(loader, "batch_size", None)
        with isolate_rng():
            # the iterator draws its seeds as it did when this epoch first started
            if self.epoch_start_rng is not None:
                _set_rng_states(self.epoch_start_rng)
            if sampler is not None and batch_size is not None and self.sampler is not None or (
                    sampler is not None and batch_size is not None and not getattr(sampler, "shuffle", True)):
                sampler.load_state_dict(self.sampler, skip=start * batch_size)
                return profiled_iter(loader, "train")
            rank_zero_warn(
                f"Resuming mid-epoch: this dataloader has no resumable sampler (custom sampler, batch sampler or "
                f"iterable dataset), so the {start} batches already trained on are loaded and skipped. Use a plain "
                "DataLoader over a map-style dataset, or torchdata's StatefulDataLoader, to skip them for free."
            )
            it = profiled_iter(loader, "train")
            for _ in range(start):
                next(it)
        return it
