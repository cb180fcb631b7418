"""Gradient norms for logging (``lightning.pytorch.utilities.grad_norm``)."""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn


def grad_norm(module: nn.Module, norm_type: Union[float, int, str], group_separator: str = "/") -> dict[str, Tensor]:
    """The ``norm_type``-norm of each parameter's gradient, and of all of them together (as one vector).

    Keys are ``grad_{p}_norm{group_separator}{parameter name}`` and ``grad_{p}_norm_total`` with ``p =
    float(norm_type)`` (``"inf"`` for the maximum norm); parameters without a gradient are left out, and with none
    the dict is empty. The values are tensors on the gradients' device (nothing is synchronised), ready for
    ``self.log_dict``, typically in ``on_before_optimizer_step``.

    Raises:
        ValueError: if ``norm_type`` is not positive.
    """
    p = float(norm_type)
    if p <= 0:
        raise ValueError(f"`norm_type` must be a positive number or 'inf' (the maximum norm), got {norm_type!r}.")
    norms = {
        f"grad_{p}_norm{group_separator}{name}": param.grad.detach().norm(p)
        for name, param in module.named_parameters()
        if param.grad is not None
    }
    if norms:
        norms[f"grad_{p}_norm_total"] = torch.stack([n.to(torch.float32) for n in norms.values()]).norm(p)
    return norms
