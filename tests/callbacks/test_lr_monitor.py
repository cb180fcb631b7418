from collections import defaultdict

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import featherlight as L
from featherlight.callbacks import LearningRateMonitor
from featherlight.loggers.logger import Logger
from featherlight.utilities.exceptions import MisconfigurationException


def make_module(base, setup):
    class Net(base):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.head = nn.Linear(4, 1)
            self.automatic_optimization = not setup.startswith("manual")

        def training_step(self, batch, batch_idx):
            loss = self.head(self.body(batch[0])).pow(2).mean()
            if self.automatic_optimization:
                return loss
            optimizers = self.optimizers()
            for opt in optimizers:
                opt.zero_grad()
            self.manual_backward(loss)
            for opt in optimizers:
                opt.step()

        def on_train_epoch_end(self):
            if not self.automatic_optimization:
                schedulers = self.lr_schedulers()
                for sch in schedulers if isinstance(schedulers, list) else [schedulers]:
                    sch.step()

        def configure_optimizers(self):
            if setup == "adam_step":
                opt = torch.optim.Adam(self.parameters(), lr=1e-2)
                return {"optimizer": opt, "lr_scheduler": {
                    "scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5), "interval": "step"}}
            if setup == "sgd_groups_epoch":
                opt = torch.optim.SGD([{"params": self.body.parameters()},
                                       {"params": self.head.parameters(), "lr": 0.5}], lr=0.1, momentum=0.9)
                return [opt], [torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)]
            if setup == "named":
                opt = torch.optim.SGD([{"params": self.body.parameters(), "name": "body"},
                                       {"params": self.head.parameters(), "name": "head"}], lr=0.1,
                                      weight_decay=1e-3)
                return {"optimizer": opt, "lr_scheduler": {
                    "scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1), "name": "my_lr"}}
            if setup == "adagrad":
                return torch.optim.Adagrad(self.parameters(), lr=0.05)
            if setup == "no_scheduler":
                return torch.optim.AdamW(self.parameters(), lr=3e-3)
            if setup == "manual_two_adams":
                a = torch.optim.Adam(self.body.parameters(), lr=1e-2)
                b = torch.optim.Adam(self.head.parameters(), lr=2e-2)
                return [a, b], [torch.optim.lr_scheduler.StepLR(a, step_size=1, gamma=0.5)]
            if setup == "manual_mixed_named":
                a = torch.optim.Adam(self.body.parameters(), lr=1e-2)
                b = torch.optim.SGD(self.head.parameters(), lr=0.3)
                c = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=0.7)
                return [a, b, c], [
                    torch.optim.lr_scheduler.StepLR(a, step_size=1),
                    {"scheduler": torch.optim.lr_scheduler.StepLR(b, step_size=1), "name": "b_lr",
                     "interval": "step"},
                ]
            raise ValueError(setup)

    return Net()


def make_logger(base):
    class Recording(base):
        def __init__(self):
            super().__init__()
            self.records = []

        @property
        def name(self):
            return "rec"

        @property
        def version(self):
            return 0

        def log_hyperparams(self, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            self.records.append((step, dict(metrics)))

    return Recording()


def lr_records(logger, monitor):
    keys = set(monitor.lrs)
    keys |= {f"{k}-momentum" for k in monitor.lrs} | {f"{k}-weight_decay" for k in monitor.lrs}
    return [(step, {k: round(v, 10) for k, v in m.items()}) for step, m in logger.records if set(m) <= keys]


def loader():
    torch.manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(10, 4)), batch_size=2)


def run(framework, setup, **monitor_kwargs):
    if framework == "featherlight":
        Trainer, LoggerBase, Monitor, Module = L.Trainer, Logger, LearningRateMonitor, L.LightningModule
        extra = {}
    else:
        pl = pytest.importorskip("lightning.pytorch")
        from lightning.pytorch.loggers import Logger as PLLogger

        Trainer, LoggerBase, Monitor, Module = pl.Trainer, PLLogger, pl.callbacks.LearningRateMonitor, pl.LightningModule
        extra = {"accelerator": "cpu", "devices": 1}
    monitor = Monitor(**monitor_kwargs)
    logger = make_logger(LoggerBase)
    trainer = Trainer(max_epochs=3, logger=logger, callbacks=[monitor], log_every_n_steps=2,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **extra)
    trainer.fit(make_module(Module, setup), loader())
    return monitor, logger, trainer


EXPECTED_KEYS = {
    "adam_step": ["lr-Adam"],
    "sgd_groups_epoch": ["lr-SGD/pg1", "lr-SGD/pg2"],
    "named": ["my_lr/body", "my_lr/head"],
    "no_scheduler": ["lr-AdamW"],
    "adagrad": ["lr-Adagrad"],
    "manual_two_adams": ["lr-Adam", "lr-Adam-1"],
    "manual_mixed_named": ["lr-Adam", "b_lr", "lr-Adam-1"],
}
SETUPS = sorted(EXPECTED_KEYS)


@pytest.mark.filterwarnings("ignore:.*log_momentum=True.*")
@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("interval", [None, "step", "epoch"])
def test_keys_and_logged_values_match_lightning(setup, interval):
    kwargs = dict(logging_interval=interval, log_momentum=True, log_weight_decay=True)
    monitor, logger, trainer = run("featherlight", setup, **kwargs)
    assert list(monitor.lrs) == EXPECTED_KEYS[setup]
    ours = lr_records(logger, monitor)
    assert ours, "nothing was logged"
    for key in monitor.lrs:
        assert key in trainer.callback_metrics
        assert any(f"{key}-momentum" in m and f"{key}-weight_decay" in m for _, m in ours)

    pl_monitor, pl_logger, _ = run("lightning", setup, **kwargs)
    assert list(monitor.lrs) == list(pl_monitor.lrs)
    assert {k: [round(v, 10) for v in vs] for k, vs in monitor.lrs.items()} == \
        {k: [round(v, 10) for v in vs] for k, vs in pl_monitor.lrs.items()}
    assert ours == lr_records(pl_logger, pl_monitor)
    assert monitor.last_momentum_values == pl_monitor.last_momentum_values
    assert monitor.last_weight_decay_values == pl_monitor.last_weight_decay_values


def test_step_logging_follows_log_every_n_steps():
    monitor, logger, _ = run("featherlight", "adam_step", logging_interval="step")
    steps = [step for step, _ in lr_records(logger, monitor)]
    # 15 stepping batches, logged when (stepped + 1) % 2 == 0, at the step count before the batch
    assert steps == [1, 3, 5, 7, 9, 11, 13]
    assert monitor.lrs["lr-Adam"] == [0.01, 0.005, 0.0025, 0.00125, 0.000625, 0.0003125, 0.00015625]


def test_epoch_logging():
    monitor, logger, _ = run("featherlight", "sgd_groups_epoch", logging_interval="epoch")
    records = lr_records(logger, monitor)
    assert [step for step, _ in records] == [0, 5, 10]
    assert [m["lr-SGD/pg2"] for _, m in records] == [0.5, 0.45, 0.405]


def test_momentum_is_zero_without_momentum():
    with pytest.warns(RuntimeWarning, match="log_momentum=True"):
        monitor, logger, _ = run("featherlight", "adagrad", log_momentum=True)
    assert monitor.last_momentum_values == {"lr-Adagrad-momentum": 0}


def test_requires_a_logger():
    trainer = L.Trainer(max_epochs=1, logger=False, callbacks=[LearningRateMonitor()], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(MisconfigurationException,
                       match="Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger."):
        trainer.fit(make_module(L.LightningModule, "adam_step"), loader())


def test_invalid_interval():
    with pytest.raises(MisconfigurationException, match="logging_interval"):
        LearningRateMonitor(logging_interval="batch")


def test_duplicate_param_group_names():
    monitor = LearningRateMonitor()
    layer = nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": [layer.weight], "name": "x"}, {"params": [layer.bias], "name": "x"}], lr=0.1)
    with pytest.raises(MisconfigurationException, match="identical `name`"):
        monitor._find_names_from_optimizers([opt], [], defaultdict(int))


def test_new_param_group_renames_the_key():
    """An optimizer that gains a param group (finetuning): its history continues under ``/pg1``."""
    monitor = LearningRateMonitor()
    layer = nn.Linear(2, 2)
    opt = torch.optim.SGD([layer.weight], lr=0.1)

    class FakeTrainer:
        lr_scheduler_configs = []
        optimizers = [opt]
        callback_metrics = {}
        strategy = type("S", (), {"root_device": torch.device("cpu")})()

    trainer = FakeTrainer()
    assert monitor._extract_stats(trainer, "epoch") == {"lr-SGD": 0.1}
    opt.add_param_group({"params": [layer.bias], "lr": 0.01})
    assert monitor._extract_stats(trainer, "epoch") == {"lr-SGD/pg1": 0.1, "lr-SGD/pg2": 0.01}
    assert monitor.lrs == {"lr-SGD/pg1": [0.1, 0.1], "lr-SGD/pg2": [0.01]}
