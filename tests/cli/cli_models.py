"""Small models and data for the CLI tests: importable by class path in-process and by ``cli_train.py`` in a
subprocess (both put this folder on ``sys.path``)."""
from typing import Optional

import torch
from jsonargparse import lazy_instance
from torch.utils.data import DataLoader

from featherlight.cli import LRSchedulerCallable, OptimizerCallable
from featherlight.demos.boring_classes import BoringDataModule, BoringModel, RandomDataset


class Net(BoringModel):
    """A two-layer regression model.

    Args:
        hidden: Width of the hidden layer.
        lr: Learning rate of the model's own SGD optimizer.
    """

    def __init__(self, hidden: int = 4, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Sequential(torch.nn.Linear(32, hidden), torch.nn.Linear(hidden, 2))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class WideNet(Net):
    """Net with a scale factor.

    Args:
        scale: Multiplies the output.
    """

    def __init__(self, scale: float = 2.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale = scale


class Data(BoringDataModule):
    """Random data in batches.

    Args:
        batch_size: Samples per batch.
    """

    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.num_outputs = 2  # known only once built: a target for `apply_on="instantiate"` links

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.random_train, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.random_val, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.random_test, batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.random_predict, batch_size=self.batch_size)


class LinkedNet(BoringModel):
    """Takes its batch size and output width from the datamodule (links)."""

    def __init__(self, batch_size: int = 1, num_outputs: int = 1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(32, num_outputs)


class InjectedNet(BoringModel):
    """Optimizer, scheduler and activation are injected from the config."""

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.SGD,
        scheduler: LRSchedulerCallable = torch.optim.lr_scheduler.ConstantLR,
        activation: torch.nn.Module = lazy_instance(torch.nn.LeakyReLU, negative_slope=0.05),
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.layer(x))

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler(optimizer)}


class ConfigDictNet(BoringModel):
    """Receives linked optimizer/scheduler configs and builds them itself."""

    def __init__(self, opt_config: Optional[dict] = None, sched_config: Optional[dict] = None) -> None:
        super().__init__()
        self.opt_config = opt_config
        self.sched_config = sched_config


def random_loader() -> DataLoader:
    return DataLoader(RandomDataset(32, 16), batch_size=4)
