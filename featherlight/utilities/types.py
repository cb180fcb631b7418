"""Type aliases used in LightningModule/Trainer signatures, importable by user code for annotations."""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, TypedDict, TypeVar, Union, runtime_checkable

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

_PATH = Union[str, os.PathLike]
_NUMBER = Union[int, float]
_METRIC = Union[Tensor, float, int]
#: a device as the user may name it: ``torch.device("cuda", 0)``, ``"cuda:0"`` or ``0``
_DEVICE = Union[torch.device, str, int]
#: what ``torch.load(map_location=...)`` accepts
_MAP_LOCATION_TYPE = Optional[
    Union[_DEVICE, Callable[[torch.UntypedStorage, str], Optional[torch.UntypedStorage]], dict[_DEVICE, _DEVICE]]
]
_PARAMETERS = Iterator[torch.nn.Parameter]
#: a scheduler class of torch's (Lightning's alias)
_TORCH_LRSCHEDULER = LRScheduler

if torch.distributed.is_available():
    from torch.distributed import ProcessGroup, ReduceOp

    RedOpType = ReduceOp.RedOpType
else:  # a torch build without distributed support
    ProcessGroup = Any  # type: ignore[assignment,misc]
    ReduceOp = RedOpType = object  # type: ignore[assignment,misc]

_DictKey = TypeVar("_DictKey")


@runtime_checkable
class _Stateful(Protocol[_DictKey]):
    """Anything with ``state_dict()``/``load_state_dict()``: ``isinstance(obj, _Stateful)`` tells whether an object's
    state can be saved in a checkpoint."""

    def state_dict(self) -> dict[_DictKey, Any]: ...

    def load_state_dict(self, state_dict: dict[_DictKey, Any]) -> None: ...


@runtime_checkable
class CollectibleGroup(Protocol):
    """A process group as far as collectives need one: its size and this process's rank in it."""

    def size(self) -> int: ...

    def rank(self) -> int: ...


@runtime_checkable
class Steppable(Protocol):
    """Anything with an optimizer's ``step(closure=None)``."""

    def step(self, closure: Optional[Callable[[], float]] = ...) -> Optional[float]: ...


@runtime_checkable
class Optimizable(Steppable, Protocol):
    """An optimizer, structurally: ``step``, ``param_groups``, ``defaults``, ``state`` and its state dict."""

    param_groups: list[dict[Any, Any]]
    defaults: dict[Any, Any]
    state: Any

    def state_dict(self) -> dict[str, dict[Any, Any]]: ...

    def load_state_dict(self, state_dict: dict[str, dict[Any, Any]]) -> None: ...

#: What ``training_step`` / ``validation_step`` / ... may return: a loss tensor, a dict (with ``"loss"`` for
#: training), or ``None`` to skip the batch.
STEP_OUTPUT = Optional[Union[Tensor, Mapping[str, Any]]]
#: One dict of logged metrics per evaluation dataloader.
_EVALUATE_OUTPUT = list[Mapping[str, float]]
#: Predictions of one dataloader, or one list per dataloader.
_PREDICT_OUTPUT = Union[list[Any], list[list[Any]]]
#: Any iterable (usually a DataLoader) or a collection (list/dict) of them.
TRAIN_DATALOADERS = Any
EVAL_DATALOADERS = Any

LRSchedulerTypeTuple = (LRScheduler, ReduceLROnPlateau)
LRSchedulerTypeUnion = Union[LRScheduler, ReduceLROnPlateau]
LRSchedulerType = Union[type[LRScheduler], type[ReduceLROnPlateau]]
LRSchedulerPLType = LRSchedulerTypeUnion


@dataclass
class LRSchedulerConfig:
    """A learning-rate scheduler together with how the trainer should step it.

    Attributes:
        scheduler: the scheduler instance.
        name: name under which ``LearningRateMonitor`` logs its learning rate (default: derived from the optimizer).
        interval: ``"epoch"`` or ``"step"``: unit of ``frequency``.
        frequency: step the scheduler every ``frequency`` intervals.
        reduce_on_plateau: whether ``scheduler.step`` takes the monitored metric (``ReduceLROnPlateau``).
        monitor: metric passed to a plateau scheduler.
        strict: if the monitored metric is missing, raise (``True``) or warn and skip the step (``False``).
    """

    scheduler: Union[LRScheduler, ReduceLROnPlateau]
    name: Optional[str] = None
    interval: str = "epoch"
    frequency: int = 1
    reduce_on_plateau: bool = False
    monitor: Optional[str] = None
    strict: bool = True


class _LRSchedulerConfigRequired(TypedDict):
    scheduler: LRSchedulerTypeUnion


class LRSchedulerConfigType(_LRSchedulerConfigRequired, total=False):
    """The dict form of :class:`LRSchedulerConfig` accepted from ``configure_optimizers`` (only ``scheduler``
    is required)."""

    name: Optional[str]
    interval: str
    frequency: int
    reduce_on_plateau: bool
    monitor: Optional[str]
    strict: bool


class OptimizerConfig(TypedDict):
    """``{"optimizer": opt}`` returned from ``configure_optimizers``."""

    optimizer: Optimizer


class _OptimizerLRSchedulerConfigRequired(TypedDict):
    optimizer: Optimizer
    lr_scheduler: Union[LRSchedulerTypeUnion, LRSchedulerConfigType]


class OptimizerLRSchedulerConfig(_OptimizerLRSchedulerConfigRequired, total=False):
    """``{"optimizer": opt, "lr_scheduler": sched_or_config, "monitor": name}`` (``monitor`` optional)."""

    monitor: str


#: Everything ``configure_optimizers`` may return.
OptimizerLRScheduler = Optional[
    Union[
        Optimizer,
        Sequence[Optimizer],
        tuple[Sequence[Optimizer], Sequence[Union[LRSchedulerTypeUnion, LRSchedulerConfig, LRSchedulerConfigType]]],
        OptimizerConfig,
        OptimizerLRSchedulerConfig,
        Sequence[OptimizerConfig],
        Sequence[OptimizerLRSchedulerConfig],
    ]
]

__all__ = [
    "CollectibleGroup",
    "EVAL_DATALOADERS",
    "Optimizable",
    "ProcessGroup",
    "ReduceOp",
    "RedOpType",
    "Steppable",
    "_DEVICE",
    "_MAP_LOCATION_TYPE",
    "_PARAMETERS",
    "_Stateful",
    "_TORCH_LRSCHEDULER",
    "LRScheduler",
    "LRSchedulerConfig",
    "LRSchedulerConfigType",
    "LRSchedulerPLType",
    "LRSchedulerType",
    "LRSchedulerTypeTuple",
    "LRSchedulerTypeUnion",
    "OptimizerConfig",
    "OptimizerLRScheduler",
    "OptimizerLRSchedulerConfig",
    "ReduceLROnPlateau",
    "STEP_OUTPUT",
    "TRAIN_DATALOADERS",
    "_METRIC",
    "_NUMBER",
    "_PATH",
]
