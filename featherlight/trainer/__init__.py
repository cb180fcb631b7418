"""The Trainer and its loops."""
from featherlight.trainer.trainer import Trainer

__all__ = ["Trainer"]
