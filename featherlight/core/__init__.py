"""LightningModule, LightningDataModule and the hook catalogue."""
from featherlight.core.datamodule import LightningDataModule
from featherlight.core.module import LightningModule

__all__ = ["LightningDataModule", "LightningModule"]
