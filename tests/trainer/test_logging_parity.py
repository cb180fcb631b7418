"""`self.log` against Lightning: the same program fills callback/logged/progress-bar metrics, the
validate() results and metrics.csv the same way (values equal up to float summation order)."""
import csv
import io
import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import featherlight


def _run(L, root):
    torch.manual_seed(0)

    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.l = torch.nn.Linear(4, 1)

        def training_step(self, batch, i):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.l(x), y)
            self.log("train_loss", loss, prog_bar=True, on_epoch=True)
            self.log("a", float(i), on_step=False, on_epoch=True, reduce_fx="max")
            self.log_dict({"b": loss * 2, "c": 3.0}, on_step=True)
            return loss

        def on_train_epoch_end(self):
            self.log("ep_end", 1.5)

        def validation_step(self, batch, i, dataloader_idx=0):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.l(x), y), prog_bar=True)
            self.log("val_step", 1.0 * i, on_step=True, on_epoch=False)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    g = torch.Generator().manual_seed(1)
    ds = TensorDataset(torch.randn(50, 4, generator=g), torch.randn(50, 1, generator=g))
    trainer = L.Trainer(max_epochs=2, logger=L.loggers.CSVLogger(root) if hasattr(L, "loggers") else None,
                        log_every_n_steps=3, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=1)
    model = M()
    trainer.fit(model, DataLoader(ds, batch_size=8), [DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=16)])
    out = {
        "callback": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "logged": {k: float(v) for k, v in trainer.logged_metrics.items()},
        "pbar": dict(trainer.progress_bar_metrics),
        "validate": trainer.validate(model, DataLoader(ds, batch_size=8), verbose=False),
    }
    with open(os.path.join(trainer.logger.log_dir, "metrics.csv")) as f:
        out["csv"] = list(csv.DictReader(io.StringIO(f.read())))
    return out


def _approx(d):
    return {k: pytest.approx(v, rel=1e-6) if isinstance(v, float) else v for k, v in d.items()}


def test_log_matches_lightning(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    ours = _run(featherlight, str(tmp_path / "ours"))
    theirs = _run(pl, str(tmp_path / "theirs"))
    for key in ("callback", "logged", "pbar"):
        assert ours[key] == _approx(theirs[key]), key
    assert [_approx(d) for d in theirs["validate"]] == ours["validate"]
    assert list(ours["csv"][0]) == list(theirs["csv"][0])  # same columns, same order
    assert len(ours["csv"]) == len(theirs["csv"])
    for mine, ref in zip(ours["csv"], theirs["csv"]):
        assert {k: v != "" for k, v in mine.items()} == {k: v != "" for k, v in ref.items()}
        for k, v in ref.items():
            if v:
                assert float(mine[k]) == pytest.approx(float(v), rel=1e-6), (k, mine, ref)
