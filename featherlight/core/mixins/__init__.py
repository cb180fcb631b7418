"""Mixins shared by LightningModule and LightningDataModule."""
from featherlight.core.mixins.hparams_mixin import HyperparametersMixin

__all__ = ["HyperparametersMixin"]
