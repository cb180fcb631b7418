"""Two-rank DDP with checkpoints written in the background (``strategy="ddp"`` starts rank 1 by running this script
again).

    python ddp_async_checkpoint.py OUTDIR

Fits of 3 epochs with a top-2 ``ModelCheckpoint`` on ``val_loss``: ``async_save=True`` with ``save_last="link"``,
``Trainer(plugins=[AsyncCheckpointIO()])`` with ``save_last=True``, and both again written synchronously; then FSDP
with full checkpoints (``async_save=True`` and synchronously) and with sharded ones (written synchronously, with a
warning). Each rank writes ``rank{R}.json``: which files it wrote and what its checkpoint callback says after each
fit.
"""
import os
import warnings

import torch

import featherlight as L
from featherlight.callbacks import ModelCheckpoint
from featherlight.plugins import AsyncCheckpointIO, TorchCheckpointIO
from featherlight.strategies import FSDPStrategy
from fl_dist_models import FLAGS, Regressor, outdir_from_argv, save_json, train_loader, val_loader

out = outdir_from_argv()
writes = []


class RecordingIO(TorchCheckpointIO):
    """The default checkpoint IO, recording which files this rank writes."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        writes.append(os.path.basename(os.fspath(path)))
        super().save_checkpoint(checkpoint, path, storage_options)


result = {}
runs = (("async_save", "link", RecordingIO(), "ddp"), ("sync_link", "link", RecordingIO(), "ddp"),
        ("plugin", True, AsyncCheckpointIO(RecordingIO()), "ddp"), ("sync", True, RecordingIO(), "ddp"),
        ("fsdp_full_async", True, RecordingIO(), "full"), ("fsdp_full_sync", True, RecordingIO(), "full"),
        ("fsdp_sharded_async", True, RecordingIO(), "sharded"))
for name, save_last, plugin, kind in runs:
    writes.clear()
    cb = ModelCheckpoint(dirpath=os.path.join(out, name), monitor="val_loss", save_top_k=2, save_last=save_last,
                         async_save=name in ("async_save", "fsdp_full_async", "fsdp_sharded_async"))
    strategy = "ddp" if kind == "ddp" else FSDPStrategy(auto_wrap_policy={torch.nn.Linear}, state_dict_type=kind)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=3, callbacks=[cb],
                        plugins=[plugin], **FLAGS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Regressor(), train_loader(), val_loader())
    rank = trainer.global_rank
    result[name] = dict(
        warned_sync=any("written synchronously" in str(w.message) for w in caught),
        writes=list(writes), best=os.path.basename(cb.best_model_path), last=os.path.basename(cb.last_model_path),
        best_k=sorted(os.path.basename(p) for p in cb.best_k_models), score=float(cb.best_model_score),
    )
save_json(out, f"rank{rank}.json", result)
