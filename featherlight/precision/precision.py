"""Precision: how the forward runs (autocast, dtype) and how loss and optimizer steps are scaled.

A precision object never calls user hooks; the loop does. Its verbs: ``convert_module``,
``convert_input``, ``forward_context``, ``scale_loss``, ``unscale_gradients``, ``optimizer_step``
and ``state_dict``/``load_state_dict`` for checkpoints.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from featherlight.utilities.apply_func import apply_to_collection

_NULL_CONTEXT = contextlib.nullcontext()  # reusable: entering it has no state
_EVALUATES_CLOSURE_ONCE = frozenset(
    getattr(torch.optim, name) for name in ("SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop",
                                            "Adagrad", "Adadelta", "ASGD", "Rprop") if hasattr(torch.optim, name)
)


class Precision:
    """Full precision (``"32-true"``): nothing is converted or scaled."""

    precision: str = "32-true"

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module

    def convert_input(self, data: Any) -> Any:
        return data

    def forward_context(self) -> contextlib.AbstractContextManager:
        return _NULL_CONTEXT

    def scale_loss(self, loss: Tensor) -> Tensor:
        return loss

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        """Make ``.grad`` hold true gradients before hooks see them and before clipping."""

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any], **kwargs: Any) -> tuple[Any, bool]:
        """Step ``optimizer`` with ``closure``; returns (the optimizer's output, whether it really stepped)."""
        if type(optimizer) in _EVALUATES_CLOSURE_ONCE:
            # these call the closure exactly once, first, under enable_grad: calling it here is the same
            # computation without the closure machinery (LBFGS and unknown optimizers still get it)
            if torch.is_grad_enabled():
                loss = closure()
            else:
                with torch.enable_grad():
                    loss = closure()
            out = optimizer.step(**kwargs)
            return (loss if out is None else out), True
        return optimizer.step(closure=closure, **kwargs), True

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class DoublePrecision(Precision):
    """``"64-true"``: module, inputs and new floating tensors in float64."""

    precision = "64-true"
    _dtype = torch.float64

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module.to(dtype=self._dtype)

    def convert_input(self, data: Any) -> Any:
        dtype = self._dtype
        return apply_to_collection(data, Tensor, lambda t: t.to(dtype) if t.is_floating_point() else t)

    @contextlib.contextmanager
    def forward_context(self):  # type: ignore[override]
        default = torch.get_default_dtype()
        torch.set_default_dtype(self._dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(default)


class HalfPrecision(DoublePrecision):
    """``"16-true"`` / ``"bf16-true"``: module and inputs converted to half precision, no scaler."""

    def __init__(self, precision: str) -> None:
        self.precision = precision
        self._dtype = torch.bfloat16 if precision == "bf16-true" else torch.float16


class MixedPrecision(Precision):
    """``"16-mixed"`` / ``"bf16-mixed"``: forward under ``torch.autocast``; fp16 adds a GradScaler.

    Order of one step: autocast forward, scaled backward, ``unscale_`` (so hooks and clipping see
    true gradients), ``scaler.step`` (skipped when gradients are inf/nan), ``scaler.update``.
    """

    def __init__(self, precision: str, device_type: str, scaler: Optional[Any] = None) -> None:
        self.precision = precision
        self.device_type = device_type
        self._dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
        if scaler is None and precision == "16-mixed":
            scaler = torch.amp.GradScaler(device_type)
        self.scaler = scaler

    def forward_context(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self._dtype)

    def scale_loss(self, loss: Tensor) -> Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        scaler = self.scaler
        if scaler is not None and scaler.is_enabled():
            state = scaler._per_optimizer_states[id(optimizer)]
            # unscale_ refuses to run twice for one step (e.g. a manual clip followed by ours)
            if state["stage"].name != "UNSCALED":
                scaler.unscale_(optimizer)

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any], **kwargs: Any) -> tuple[Any, bool]:
        scaler = self.scaler
        if scaler is None:
            return optimizer.step(closure=closure, **kwargs), True
        if isinstance(optimizer, torch.optim.LBFGS):
            raise TypeError("Native AMP with a GradScaler does not support LBFGS; use precision='bf16-mixed' or 32.")
        # the closure (forward, backward, unscale, hooks, clipping) runs first: GradScaler cannot re-run it
        closure()
        stepped = True
        if scaler.is_enabled():
            out = scaler.step(optimizer, **kwargs)
            found = scaler._per_optimizer_states[id(optimizer)].get("found_inf_per_device", {})
            # scaler.step has already synchronised on these values, so reading them costs nothing more
            stepped = not any(bool(v.item()) for v in found.values())
            scaler.update()
        else:
            out = optimizer.step(**kwargs)
        return out, stepped

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.scaler is not None and state_dict:
            self.scaler.load_state_dict(state_dict)


_ALIASES = {
    "64": "64-true", 64: "64-true", "64-true": "64-true", "double": "64-true",
    "32": "32-true", 32: "32-true", "32-true": "32-true",
    "16": "16-mixed", 16: "16-mixed", "16-mixed": "16-mixed",
    "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
    "16-true": "16-true", "bf16-true": "bf16-true", "half": "16-true",
    "transformer-engine": None,
}


def _normalize_precision(value: Any) -> str:
    key = value.lower() if isinstance(value, str) else value
    out = _ALIASES.get(key)
    if out is None:
        raise ValueError(
            f"Precision {value!r} is invalid. Allowed precision values: "
            "'64-true', '32-true', '16-mixed', 'bf16-mixed', '16-true', 'bf16-true' (or 64, 32, 16, 'bf16')."
        )
    return out


def _select_precision(value: Any, device: torch.device, plugin: Optional[Precision] = None) -> Precision:
    """The precision object for a flag value on ``device`` (chosen once per Trainer)."""
    if plugin is not None:
        return plugin
    name = _normalize_precision(value)
    if name == "32-true":
        return Precision()
    if name == "64-true":
        return DoublePrecision()
    if name in ("16-true", "bf16-true"):
        return HalfPrecision(name)
    if name == "16-mixed" and device.type == "cpu":
        from featherlight.utilities.rank_zero import rank_zero_warn

        rank_zero_warn(
            "You passed `Trainer(accelerator='cpu', precision='16-mixed')` but AMP with fp16 is not supported on "
            "CPU. Using `precision='bf16-mixed'` instead."
        )
        name = "bf16-mixed"
    return MixedPrecision(name, device.type)
