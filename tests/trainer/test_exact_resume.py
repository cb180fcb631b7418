"""A run killed at any point and resumed from its checkpoint ends bit for bit where an uninterrupted run
ends: same weights, same logged metrics (shuffle, dropout, accumulation, workers, mid-epoch validation)."""
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import featherlight as L
from featherlight.loggers.logger import Logger


class Data(Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = torch.randn(n, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class Model(L.LightningModule):
    def __init__(self, workers=0):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                       torch.nn.Linear(16, 1))
        self.workers = workers

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss, on_step=True, on_epoch=True)
        self.log("noise", torch.rand(()), on_step=False, on_epoch=True)  # consumes the RNG
        return loss

    def on_train_epoch_end(self):
        self.log("epoch_marker", float(self.current_epoch))

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=0.01)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)]

    def train_dataloader(self):
        return DataLoader(Data(44), batch_size=4, shuffle=True, num_workers=self.workers,
                          persistent_workers=self.workers > 0)

    def val_dataloader(self):
        return DataLoader(Data(12), batch_size=4)


class Recorder(Logger):
    def __init__(self):
        super().__init__()
        self.rows = []

    @property
    def name(self):
        return "rec"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(sorted(metrics.items()))))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class Killed(Exception):
    pass


class KillAt(L.Callback):
    """Save a checkpoint at a point of the run and die, like a preempted job whose last checkpoint it is."""

    monitors_metrics = True  # at epoch end, after the module's hooks (where ModelCheckpoint saves)

    def __init__(self, hook, epoch, batch, path):
        self.hook, self.epoch, self.batch, self.path = hook, epoch, batch, path

    def _maybe(self, trainer, hook, batch_idx=None):
        if hook == self.hook and trainer.current_epoch == self.epoch and (self.batch is None or batch_idx == self.batch):
            trainer.save_checkpoint(self.path)
            raise Killed

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._maybe(trainer, "on_train_batch_end", batch_idx)

    def on_train_epoch_start(self, trainer, pl_module):
        self._maybe(trainer, "on_train_epoch_start")

    def on_train_epoch_end(self, trainer, pl_module):
        self._maybe(trainer, "on_train_epoch_end")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._maybe(trainer, "on_validation_batch_end", batch_idx)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._maybe(trainer, "on_validation_end")


def _trainer(logger, callbacks=(), **kwargs):
    kwargs = {"max_epochs": 3, "log_every_n_steps": 2, "val_check_interval": 0.5, **kwargs}
    return L.Trainer(logger=logger, callbacks=list(callbacks), enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, **kwargs)


def _run(kill=None, tmp_path=None, workers=0, **kwargs):
    torch.manual_seed(1)
    logger = Recorder()
    model = Model(workers)
    if kill is None:
        _trainer(logger, **kwargs).fit(model)
        return model, logger.rows
    path = tmp_path / "killed.ckpt"
    with pytest.raises(Killed):
        _trainer(logger, [KillAt(*kill, path)], **kwargs).fit(model)
    before = list(logger.rows)
    torch.manual_seed(12345)  # the resumed process starts from a different RNG state: the checkpoint restores it
    logger2 = Recorder()
    resumed = Model(workers)
    _trainer(logger2, **kwargs).fit(resumed, ckpt_path=path)
    return resumed, before + logger2.rows


KILL_POINTS = {
    "mid_epoch": ("on_train_batch_end", 1, 3),
    "last_batch": ("on_train_batch_end", 1, 10),
    "epoch_end": ("on_train_epoch_end", 0, None),
    "epoch_start": ("on_train_epoch_start", 2, None),
    "during_validation": ("on_validation_batch_end", 1, 1),
    "validation_end": ("on_validation_end", 1, None),
}


def _assert_same(a, b):
    (model_a, rows_a), (model_b, rows_b) = a, b
    for (name, pa), pb in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert rows_a == rows_b


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_resume_is_bit_exact(point, tmp_path):
    _assert_same(_run(), _run(KILL_POINTS[point], tmp_path))


@pytest.mark.parametrize("point", ["mid_epoch", "epoch_end"])
def test_resume_is_bit_exact_with_accumulation_half_done(point, tmp_path):
    # accumulate 2 with 11 batches: batch 3 of epoch 1 closes a window, batch 2 leaves one half done
    kill = ("on_train_batch_end", 1, 2) if point == "mid_epoch" else KILL_POINTS[point]
    _assert_same(_run(accumulate_grad_batches=2), _run(kill, tmp_path, accumulate_grad_batches=2))


def test_resume_is_bit_exact_with_workers(tmp_path):
    _assert_same(_run(workers=2), _run(KILL_POINTS["mid_epoch"], tmp_path, workers=2))


def test_mid_epoch_resume_loads_no_skipped_batch(tmp_path):
    """The sampler starts after the trained batches: the dataset is never asked for them."""
    fetched = []

    class Counting(Data):
        def __getitem__(self, i):
            fetched.append(i)
            return super().__getitem__(i)

    class M(Model):
        def train_dataloader(self):
            return DataLoader(Counting(44), batch_size=4, shuffle=True)

    path = tmp_path / "killed.ckpt"
    with pytest.raises(Killed):
        _trainer(False, [KillAt("on_train_batch_end", 0, 7, path)], limit_val_batches=0).fit(M())
    fetched.clear()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(M(), ckpt_path=path)
    assert len(fetched) == 44 - 8 * 4  # only the 3 remaining batches of epoch 0
