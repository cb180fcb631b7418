"""Strategies: single device now; DDP/FSDP build on torch.distributed."""
from featherlight.strategies.strategy import SingleDeviceStrategy, Strategy

__all__ = ["Strategy", "SingleDeviceStrategy"]
