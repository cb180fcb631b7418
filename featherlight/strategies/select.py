"""Choosing the strategy for the Trainer's ``accelerator``/``strategy``/``devices``/``num_nodes`` flags, once."""
from __future__ import annotations

import os
from typing import Any

import torch

from featherlight.accelerators.accelerator import Accelerator
from featherlight.strategies.ddp import DDPStrategy
from featherlight.strategies.launch import _is_interactive, env_job
from featherlight.strategies.strategy import SingleDeviceStrategy, Strategy
from featherlight.utilities.exceptions import MisconfigurationException

_ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")


def _resolve_device(accelerator: Any, devices: Any) -> tuple[str, list[int]]:
    """Turn the ``accelerator``/``devices`` flags into a device type and device indices."""
    if isinstance(accelerator, Accelerator):  # `Trainer(accelerator=CUDAAccelerator())` means "cuda"
        accelerator = accelerator.name
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
    if all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return int(os.environ["WORLD_SIZE"])
    return 1


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def select_strategy(strategy: Any, accelerator: Any, devices: Any, num_nodes: int) -> Strategy:
    """The strategy object for the Trainer's flags. Distributed strategies live in their own modules."""
    if isinstance(strategy, Strategy):
        if isinstance(strategy, SingleDeviceStrategy) or type(strategy) is Strategy:
            return strategy
        acc, ids = _resolve_device(accelerator, devices)
        strategy.configure_devices(acc, ids, num_nodes)
        return strategy
    acc, ids = _resolve_device(accelerator, devices)
    name = strategy.lower() if isinstance(strategy, str) else strategy
    if name == "auto" and devices == "auto" and _external_world_size() > 1:
        # launched by torchrun/SLURM: join that job (one process per device on this node)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        ids = list(range(local))
        name = "ddp"
    multi = len(ids) * num_nodes > 1
    if name in ("auto", "single_device", None) and not multi:
        index = ids[0] if acc == "cuda" else None
        return SingleDeviceStrategy(torch.device(acc, index) if index is not None else torch.device(acc))
    if name in ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_find_unused_parameters_true",
                "ddp_find_unused_parameters_false", "fsdp"):
        return _make_distributed_strategy(name, acc, ids, num_nodes)
    raise MisconfigurationException(
        f"`Trainer(strategy={strategy!r})` is not supported. Use 'auto', 'ddp', 'ddp_spawn', 'fsdp' or a Strategy instance."
    )


def _make_distributed_strategy(name: Any, accelerator: str, device_ids: list[int], num_nodes: int) -> Strategy:
    """The strategy for a ``Trainer(strategy=<name>)`` string with more than one process."""
    if name == "fsdp":
        from featherlight.strategies.fsdp import FSDPStrategy  # imports torch's FSDP: only when asked for

        strategy: Strategy = FSDPStrategy()
    elif name == "ddp_spawn":
        strategy = DDPStrategy(start_method="spawn")
    elif name in ("ddp_fork", "ddp_notebook"):
        strategy = DDPStrategy(start_method="fork")
    elif name == "ddp_find_unused_parameters_true":
        strategy = DDPStrategy(find_unused_parameters=True)
    elif name in ("ddp", "ddp_find_unused_parameters_false"):
        if env_job() is None and _is_interactive():
            raise MisconfigurationException(
                f"`Trainer(strategy={name!r})` runs your script again in each process, which is not possible in an "
                "interactive environment (notebook, REPL, `python -c`). Use `strategy='ddp_notebook'` or "
                "'ddp_spawn', or run your code as a script."
            )
        strategy = DDPStrategy()
    else:  # "auto" with several devices
        fork = env_job() is None and _is_interactive()
        strategy = DDPStrategy(start_method="fork" if fork else "popen")
    if accelerator == "mps":
        raise MisconfigurationException("Distributed training on MPS is not supported; use `devices=1`.")
    strategy.configure_devices(accelerator, device_ids, num_nodes)
    if isinstance(strategy, DDPStrategy) and strategy.start_method != "popen":
        strategy.strategy_name = "ddp_spawn" if strategy.start_method == "spawn" else "ddp_fork"
    return strategy
