"""Tuning before training: the largest batch size that fits (``scale_batch_size``) and a good initial
learning rate (``lr_find``). Mirrors ``lightning.pytorch.tuner``."""
from featherlight.tuner.tuning import Tuner

__all__ = ["Tuner"]
