"""Batch norm synchronised across ranks (``Trainer(sync_batchnorm=True)``): torch's ``SyncBatchNorm`` on
accelerators, and a CPU version for gloo (torch's accepts accelerator tensors only, and DDP refuses it on CPU
modules). The statistics are all-reduced with ``torch.distributed.nn.functional.all_reduce``, which carries
gradients through the collective."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.nn.functional import all_reduce


class _GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm synchronised across ranks for CPU tensors (torch's ``SyncBatchNorm`` accepts accelerator
    tensors only, and DDP refuses it on CPU modules).

    The batch statistics are computed over every rank with autograd-aware all-reduces, so gradients
    flow through them as with torch's CUDA kernel. In eval mode, or without a process group, it is plain batch norm.
    """

    process_group: Any = None

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        if not self.training or not dist.is_available() or not dist.is_initialized():
            return super().forward(input)
        group = self.process_group or dist.group.WORLD
        if dist.get_world_size(group) == 1:
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked.item())
        channels = input.shape[1]
        dims = [0] + list(range(2, input.dim()))
        shape = [1, channels] + [1] * (input.dim() - 2)
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        count = torch.tensor([x.numel() // channels], dtype=x.dtype)
        # two passes (mean, then squared deviations) keep the variance as accurate as one process's
        first = all_reduce(torch.cat([x.sum(dims), count]), group=group)
        total = first[-1]
        mean = first[:channels] / total
        centered = x - mean.view(shape)
        var = all_reduce((centered * centered).sum(dims), group=group) / total
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                n = total.detach()
                unbiased = var.detach() * n / torch.clamp(n - 1, min=1)
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return out.to(input.dtype)


def _convert_sync_batchnorm(module: nn.Module, device: torch.device) -> dict[str, nn.Module]:
    """Batch norm layers synchronised across ranks: torch's SyncBatchNorm on accelerators, ours on CPU.

    Returns the replaced layers by name. They share their parameters and buffers with their replacements,
    so putting them back (:func:`_revert_sync_batchnorm`) keeps everything the run learned.
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    originals = {name: m for name, m in module.named_modules()
                 if name and isinstance(m, _BatchNorm) and not isinstance(m, (nn.SyncBatchNorm, _GlooSyncBatchNorm))}
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    assert converted is module  # a LightningModule is never itself a batch norm layer
    if device.type == "cpu":
        for m in module.modules():
            if type(m) is nn.SyncBatchNorm:
                m.__class__ = _GlooSyncBatchNorm  # same attributes; only forward differs
    return originals


def _revert_sync_batchnorm(module: nn.Module, originals: dict[str, nn.Module]) -> None:
    for name, layer in originals.items():
        parent_name, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, layer)
