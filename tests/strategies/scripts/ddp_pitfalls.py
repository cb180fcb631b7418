"""Two-rank DDP runs for the seed's pitfalls (``strategy="ddp"`` starts rank 1 by running this script again).

    python ddp_pitfalls.py OUTDIR

Four fits: epoch-level ``self.log`` without and with ``sync_dist=True``; a module holding a dataset from
``__init__`` and one whose data comes from its dataloader method. Rank zero records the warnings of each fit
(``rank{R}.json``).
"""
import warnings

import torch
from torch.utils.data import DataLoader, TensorDataset

import featherlight as L
from fl_dist_models import FLAGS, outdir_from_argv, save_json

out = outdir_from_argv()


class Model(L.LightningModule):
    def __init__(self, sync_dist=True, dataset_in_init=False):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.sync_dist = sync_dist
        if dataset_in_init:
            self.dataset = TensorDataset(torch.randn(32, 4))

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=self.sync_dist)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(32, 4)), batch_size=8)


result = {}
for name, kwargs in (("no_sync_dist", dict(sync_dist=False)), ("sync_dist", {}),
                     ("dataset_in_init", dict(dataset_in_init=True))):
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, **FLAGS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Model(**kwargs))
    result[name] = [str(w.message) for w in caught]
save_json(out, f"rank{trainer.global_rank}.json", result)
