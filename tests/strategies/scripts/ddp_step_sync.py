"""Two-rank DDP: step-level values logged with ``sync_dist=True`` are reduced across ranks at every step.

    python ddp_step_sync.py OUTDIR

Each rank logs its rank number (a float, and a tensor with ``reduce_fx="max"``) every training step and
records, after every batch, the step values the trainer holds; ``rank{R}.json`` gets them and the epoch values.
"""
import torch

import featherlight as L
from featherlight.callbacks import Callback
from fl_dist_models import FLAGS, Regressor, outdir_from_argv, save_json, train_loader

out = outdir_from_argv()


class RankLogger(Regressor):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        rank = float(self.global_rank)
        self.log("rank_mean", rank, on_step=True, on_epoch=True, sync_dist=True)
        self.log("rank_max", torch.tensor(rank), on_step=True, on_epoch=False, sync_dist=True, reduce_fx="max")
        self.log("rank_local", rank, on_step=True, on_epoch=False)  # no sync_dist: each rank keeps its own
        return loss


class Seen(Callback):
    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        m = trainer.callback_metrics
        self.steps.append({k: float(m[k]) for k in ("rank_mean_step", "rank_max", "rank_local")})


seen = Seen()
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, **FLAGS, callbacks=[seen])
trainer.fit(RankLogger(), train_loader())
save_json(out, f"rank{trainer.global_rank}.json", {
    "steps": seen.steps,
    "epoch": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("rank_mean_epoch")},
})
