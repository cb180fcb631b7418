"""``ServableModule``: what a LightningModule declares to be served (payload, serialization, step, response)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import torch
from torch import Tensor


class ServableModule(ABC, torch.nn.Module):
    """Mix into a LightningModule to make it servable (``class Model(LightningModule, ServableModule)``).

    A request's ``body`` is a dict of serialized inputs; each is turned into a tensor by its deserializer,
    passed to :meth:`serve_step` as a keyword argument, and each output of ``serve_step`` is turned back into
    JSON-able data by its serializer. :class:`~featherlight.serve.ServableModuleValidator` checks all of it during
    training.
    """

    @abstractmethod
    def configure_payload(self) -> dict[str, Any]:
        """A request to check the served model with: ``{"body": {<input name>: <serialized value>, ...}}``."""

    @abstractmethod
    def configure_serialization(self) -> tuple[dict[str, Callable], dict[str, Callable]]:
        """``(deserializers, serializers)``: per input name, a function from the request's value to a tensor; per
        output name, a function from ``serve_step``'s tensor to data JSON can carry."""

    @abstractmethod
    def serve_step(self, *args: Tensor, **kwargs: Tensor) -> dict[str, Tensor]:
        """The model's answer to one request (run in eval mode without gradients), as ``{output name: tensor}``."""

    @abstractmethod
    def configure_response(self) -> dict[str, Any]:
        """The response the check expects for :meth:`configure_payload`'s request (the serialized outputs)."""
