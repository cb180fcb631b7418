"""Strategies: where the module lives and how processes talk. Chosen once per Trainer.

A strategy's verbs: ``setup`` (place and wrap the module), ``training_step``/``validation_step``/...
(run the step through the wrapper so e.g. DDP's hooks fire), ``reduce``, ``all_gather``,
``broadcast``, ``barrier``, ``clip_grad_norm`` and ``teardown``. It never calls user hooks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule
    from featherlight.precision.precision import Precision


class Strategy:
    """Base class; the single-process behaviour. Subclasses override what changes with more processes."""

    strategy_name = "single_device"

    def __init__(self, device: Optional[torch.device] = None) -> None:
        self._root_device = torch.device(device) if device is not None else torch.device("cpu")
        self.precision: Optional["Precision"] = None
        self._lightning_module: Optional["LightningModule"] = None
        self.model: Optional[nn.Module] = None
        self._lightning_optimizers: list = []
        self.num_nodes = 1

    # ---------------------------------------------------------------- ranks
    @property
    def root_device(self) -> torch.device:
        return self._root_device

    @property
    def world_size(self) -> int:
        return 1

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def node_rank(self) -> int:
        return 0

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def lightning_module(self) -> Optional["LightningModule"]:
        return self._lightning_module

    @property
    def distributed_sampler_kwargs(self) -> Optional[dict[str, Any]]:
        return None

    # ---------------------------------------------------------------- lifecycle
    def launch(self, function: Any, *args: Any) -> Any:
        """Run ``function(*args)`` (the trainer's whole run). Multi-process strategies start their
        processes here and return rank zero's result."""
        return function(*args)

    def setup_environment(self) -> None:
        """Prepare the process (process group, device selection) before the module is touched."""
        if self._root_device.type == "cuda":
            torch.cuda.set_device(self._root_device)

    def connect(self, module: "LightningModule") -> None:
        self._lightning_module = module
        self.model = module

    def setup(self, module: "LightningModule") -> None:
        """Convert the module to the precision's dtype, move it to the device and wrap it."""
        assert self.precision is not None
        self._lightning_module = module
        module = self.precision.convert_module(module)
        module.to(self.root_device)
        self.model = module

    def teardown(self) -> None:
        """Release what ``setup`` created; the module stays on its device like Lightning's does on CPU."""

    # ---------------------------------------------------------------- steps
    def step_function(self, name: str) -> Any:
        """The callable the loop uses for ``name`` (e.g. ``"training_step"``), resolved once per run.
        In one process that is the module's own method; wrappers (DDP) return their forward path."""
        if getattr(type(self), name) is getattr(Strategy, name):
            return getattr(self._lightning_module, name)
        return getattr(self, name)

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._lightning_module.training_step(*args, **kwargs)  # type: ignore[union-attr]

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._lightning_module.validation_step(*args, **kwargs)  # type: ignore[union-attr]

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._lightning_module.test_step(*args, **kwargs)  # type: ignore[union-attr]

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._lightning_module.predict_step(*args, **kwargs)  # type: ignore[union-attr]

    def pre_backward(self, loss: Tensor) -> None:
        """Called right before each backward (e.g. DDP prepares its reducer for manual optimization)."""

    # ---------------------------------------------------------------- collectives (no-ops in one process)
    def reduce(self, tensor: Any, group: Any = None, reduce_op: str = "mean") -> Any:
        return tensor

    def all_gather(self, tensor: Tensor, group: Any = None, sync_grads: bool = False) -> Tensor:
        return tensor

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def barrier(self, name: Optional[str] = None) -> None:
        pass

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision

    def clip_grad_norm(self, parameters: list, max_norm: float) -> Tensor:
        """Clip by total norm without a host sync (the norm stays a tensor)."""
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def model_state_dict(self) -> dict[str, Any]:
        return self._lightning_module.state_dict()  # type: ignore[union-attr]


class SingleDeviceStrategy(Strategy):
    """Everything in one process on one device."""


_ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")


def _resolve_device(accelerator: Any, devices: Any) -> tuple[str, list[int]]:
    """Turn the ``accelerator``/``devices`` flags into a device type and device indices."""
    from featherlight.utilities.exceptions import MisconfigurationException

    if not isinstance(accelerator, str):
        raise MisconfigurationException(f"`accelerator` must be one of {_ACCELERATORS}, got {accelerator!r}.")
    acc = accelerator.lower()
    if acc not in _ACCELERATORS:
        raise MisconfigurationException(
            f"`Trainer(accelerator={accelerator!r})` is not supported. Choose one of {_ACCELERATORS}."
        )
    if acc == "auto":
        if torch.cuda.is_available():
            acc = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            acc = "mps"
        else:
            acc = "cpu"
    if acc == "gpu":
        acc = "cuda" if torch.cuda.is_available() or not _mps_available() else "mps"
    if acc == "cuda" and not torch.cuda.is_available():
        raise MisconfigurationException(
            f"`Trainer(accelerator={accelerator!r})` was requested but no CUDA GPU is available. "
            "Use `accelerator='cpu'` or `accelerator='auto'`."
        )
    if acc == "mps" and not _mps_available():
        raise MisconfigurationException("`accelerator='mps'` was requested but MPS is not available on this machine.")

    available = torch.cuda.device_count() if acc == "cuda" else 1
    if devices == "auto" or devices is None:
        count = available if acc == "cuda" else 1
        ids = list(range(count))
    elif isinstance(devices, str):
        devices = devices.strip()
        if devices == "-1":
            ids = list(range(available if acc == "cuda" else 1))
        elif "," in devices:
            ids = [int(d) for d in devices.split(",") if d.strip()]
        else:
            ids = list(range(int(devices)))
    elif isinstance(devices, int):
        if devices == -1:
            ids = list(range(available if acc == "cuda" else 1))
        elif devices < 1:
            raise MisconfigurationException(
                f"`devices={devices}` is invalid: pass a positive number of devices, a list of indices, or 'auto'."
            )
        else:
            ids = list(range(devices))
    elif isinstance(devices, (list, tuple)):
        ids = [int(d) for d in devices]
        if not ids:
            raise MisconfigurationException("`devices=[]` selects no device; pass at least one index or 'auto'.")
    else:
        raise MisconfigurationException(f"`devices={devices!r}` is invalid; use an int, a list of ints, or 'auto'.")
    if acc == "cuda" and max(ids) >= available:
        raise MisconfigurationException(
            f"`devices={devices!r}` asks for GPU {max(ids)} but only {available} GPU(s) are visible."
        )
    return acc, ids


def _external_world_size() -> int:
    """The world size of a job another launcher started (torchrun, SLURM), or 1."""
    import os

    if all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return int(os.environ["WORLD_SIZE"])
    return 1


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def _select_strategy(strategy: Any, accelerator: Any, devices: Any, num_nodes: int) -> Strategy:
    """The strategy object for the Trainer's flags. Distributed strategies live in their own modules."""
    from featherlight.utilities.exceptions import MisconfigurationException

    if isinstance(strategy, Strategy):
        if isinstance(strategy, SingleDeviceStrategy) or type(strategy) is Strategy:
            return strategy
        acc, ids = _resolve_device(accelerator, devices)
        strategy._configure(acc, ids, num_nodes)  # type: ignore[attr-defined]
        return strategy
    acc, ids = _resolve_device(accelerator, devices)
    name = strategy.lower() if isinstance(strategy, str) else strategy
    if name == "auto" and devices == "auto" and _external_world_size() > 1:
        # launched by torchrun/SLURM: join that job (one process per device on this node)
        import os

        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        ids = list(range(local))
        name = "ddp"
    multi = len(ids) * num_nodes > 1
    if name in ("auto", "single_device", None) and not multi:
        index = ids[0] if acc == "cuda" else None
        return SingleDeviceStrategy(torch.device(acc, index) if index is not None else torch.device(acc))
    if name in ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_find_unused_parameters_true",
                "ddp_find_unused_parameters_false", "fsdp"):
        try:
            from featherlight.strategies.ddp import _make_distributed_strategy
        except ImportError:
            raise MisconfigurationException(
                f"`strategy={strategy!r}` with {len(ids) * num_nodes} processes needs the distributed strategies, "
                "which this version of featherlight does not ship yet. Use `devices=1`."
            ) from None
        return _make_distributed_strategy(name, acc, ids, num_nodes)
    raise MisconfigurationException(
        f"`Trainer(strategy={strategy!r})` is not supported. Use 'auto', 'ddp', 'ddp_spawn', 'fsdp' or a Strategy instance."
    )
