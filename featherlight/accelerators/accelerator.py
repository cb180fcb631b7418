"""Accelerators: what a kind of device can do (is it available, how many, which to use), under Lightning's names.

``Trainer(accelerator=CUDAAccelerator())`` works like ``Trainer(accelerator="cuda")``; libraries mostly use the
static questions (``CUDAAccelerator.is_available()``, ``find_usable_cuda_devices(2)``).
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, Union

import torch

from featherlight.utilities.exceptions import MisconfigurationException

__all__ = [
    "Accelerator",
    "CPUAccelerator",
    "CUDAAccelerator",
    "MPSAccelerator",
    "TPUAccelerator",
    "XLAAccelerator",
    "find_usable_cuda_devices",
    "is_cuda_available",
    "num_cuda_devices",
]

_DEVICES = Union[int, str, list, tuple, None]


class Accelerator(ABC):
    """A kind of device. The trainer reads :attr:`name` to choose its devices (``Trainer(accelerator=<instance>)``
    equals ``Trainer(accelerator=instance.name)``)."""

    #: the ``Trainer(accelerator=...)`` string this accelerator stands for
    name: str = ""

    def setup_device(self, device: torch.device) -> None:
        """Prepare ``device`` for use in this process."""

    def teardown(self) -> None:
        """Release what :meth:`setup_device` acquired."""

    def get_device_stats(self, device: Union[str, torch.device]) -> dict[str, Any]:
        """Device statistics for logging (``DeviceStatsMonitor``); none by default."""
        return {}

    @staticmethod
    @abstractmethod
    def parse_devices(devices: Any) -> Any:
        """The device indices (or count) that a ``devices`` flag means for this accelerator."""

    @staticmethod
    @abstractmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        """The ``torch.device`` objects that :meth:`parse_devices`' result names."""

    @staticmethod
    @abstractmethod
    def auto_device_count() -> int:
        """How many devices ``devices="auto"`` uses."""

    @staticmethod
    @abstractmethod
    def is_available() -> bool:
        """Whether this machine has such a device."""


def _count(devices: Any) -> int:
    if devices in (None, "auto", -1, "-1"):
        return 1
    if isinstance(devices, (list, tuple)):
        return len(devices)
    count = int(devices)
    if count < 1:
        raise ValueError(f"`devices={devices!r}` selects no device; pass a positive number.")
    return count


class CPUAccelerator(Accelerator):
    """The CPU: always available, one device (several processes on it are several "devices")."""

    name = "cpu"

    def setup_device(self, device: torch.device) -> None:
        if device.type != "cpu":
            raise ValueError(f"CPUAccelerator cannot use the device {device}.")

    def get_device_stats(self, device: Union[str, torch.device]) -> dict[str, Any]:
        """System-wide ``cpu_percent`` (since the previous call), ``cpu_vm_percent`` and ``cpu_swap_percent``."""
        return cpu_stats()

    @staticmethod
    def parse_devices(devices: Any) -> int:
        """The number of CPU processes ``devices`` asks for (``"auto"``: 1)."""
        return _count(devices)

    @staticmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        return [torch.device("cpu")] * _count(devices)

    @staticmethod
    def auto_device_count() -> int:
        return 1

    @staticmethod
    def is_available() -> bool:
        return True


class CUDAAccelerator(Accelerator):
    """NVIDIA (and ROCm) GPUs through ``torch.cuda``."""

    name = "cuda"

    def setup_device(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDAAccelerator cannot use the device {device}.")
        torch.cuda.set_device(device)

    def teardown(self) -> None:
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def get_device_stats(self, device: Union[str, torch.device]) -> dict[str, Any]:
        """``torch.cuda.memory_stats(device)``."""
        return dict(torch.cuda.memory_stats(device))

    @staticmethod
    def parse_devices(devices: Any) -> list[int]:
        """GPU indices: ``2`` -> ``[0, 1]``, ``"0,2"`` -> ``[0, 2]``, ``[1]`` -> ``[1]``, ``-1``/``"auto"`` -> all."""
        available = num_cuda_devices()
        if devices in (None, "auto", -1, "-1"):
            return list(range(available))
        if isinstance(devices, str) and "," in devices:
            return [int(d) for d in devices.split(",") if d.strip()]
        if isinstance(devices, (list, tuple)):
            return [int(d) for d in devices]
        return list(range(_count(devices)))

    @staticmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        return [torch.device("cuda", i) for i in CUDAAccelerator.parse_devices(devices)]

    @staticmethod
    def auto_device_count() -> int:
        return num_cuda_devices()

    @staticmethod
    def is_available() -> bool:
        return is_cuda_available()


class MPSAccelerator(Accelerator):
    """Apple silicon GPUs through ``torch.backends.mps`` (one device)."""

    name = "mps"

    def setup_device(self, device: torch.device) -> None:
        if device.type != "mps":
            raise ValueError(f"MPSAccelerator cannot use the device {device}.")

    @staticmethod
    def parse_devices(devices: Any) -> list[int]:
        return [0] if MPSAccelerator.is_available() else []

    @staticmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        return [torch.device("mps", 0)] if MPSAccelerator.parse_devices(devices) else []

    @staticmethod
    def auto_device_count() -> int:
        return 1

    @staticmethod
    def is_available() -> bool:
        mps = getattr(torch.backends, "mps", None)
        return mps is not None and mps.is_available()


class XLAAccelerator(Accelerator):
    """TPUs and other XLA devices: named so that code written for Lightning can ask ``is_available()`` (and branch on
    the answer); featherlight does not train on XLA devices, so building one is an error that says so."""

    name = "tpu"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise MisconfigurationException(
            "featherlight does not train on TPUs or other XLA devices (torch_xla). Use `accelerator='cpu'`, "
            "`'cuda'` or `'mps'`, or run this program with Lightning on the TPU machine."
        )

    @staticmethod
    def parse_devices(devices: Any) -> list[int]:
        return []

    @staticmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        return []

    @staticmethod
    def auto_device_count() -> int:
        return 0

    @staticmethod
    def is_available() -> bool:
        return False  # never usable here, whether torch_xla is installed or not


class TPUAccelerator(XLAAccelerator):
    """Lightning's deprecated name of :class:`XLAAccelerator`."""


def accelerator_for(device: torch.device) -> Accelerator:
    """The accelerator of ``device``'s type (the CPU's for a type featherlight has none for)."""
    kinds: dict[str, type[Accelerator]] = {"cuda": CUDAAccelerator, "mps": MPSAccelerator}
    return kinds.get(device.type, CPUAccelerator)()


def num_cuda_devices() -> int:
    """How many CUDA devices this process sees (``CUDA_VISIBLE_DEVICES`` applies)."""
    return torch.cuda.device_count()


def is_cuda_available() -> bool:
    """Whether a CUDA device is usable here."""
    return torch.cuda.is_available()


def find_usable_cuda_devices(num_devices: int = -1) -> list[int]:
    """The indices of ``num_devices`` CUDA devices that can be used right now (``-1``: all that can), for
    ``Trainer(devices=find_usable_cuda_devices(2))`` on machines whose GPUs are shared or set to exclusive mode:
    each candidate is tried with a small allocation, and busy ones are skipped.

    Raises:
        ValueError: if fewer than ``num_devices`` devices are usable.
    """
    if num_devices == 0:
        return []
    visible = num_cuda_devices()
    if num_devices > visible:
        mask = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ValueError(f"You asked for {num_devices} CUDA devices but only {visible} are visible"
                         + (f" (CUDA_VISIBLE_DEVICES={mask})." if mask is not None else "."))
    usable: list[int] = []
    for index in range(visible):
        try:
            torch.empty(1, device=torch.device("cuda", index))
        except RuntimeError:
            continue  # busy (exclusive mode) or broken
        usable.append(index)
        if len(usable) == num_devices:
            break
    if num_devices > 0 and len(usable) < num_devices:
        raise ValueError(f"You asked for {num_devices} CUDA devices but only {len(usable)} of the {visible} visible "
                         "ones can be used now (the others are busy or unavailable).")
    return usable


_last_cpu_times: list[tuple[int, int]] = []  # (busy, total) jiffies at the previous `cpu_stats` call (/proc only)


def cpu_stats() -> dict[str, float]:
    """System-wide CPU and memory use in percent, as Lightning's ``DeviceStatsMonitor`` logs them.

    With ``psutil`` installed it answers; without it, Linux's ``/proc`` does (``cpu_percent`` is the share of
    busy time since the previous call, or since boot on the first). Elsewhere, without ``psutil``: a
    ``ModuleNotFoundError`` naming the package to install.
    """
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return {"cpu_percent": psutil.cpu_percent(), "cpu_vm_percent": psutil.virtual_memory().percent,
                "cpu_swap_percent": psutil.swap_memory().percent}
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/meminfo") as f:
            mem = {line.split(":")[0]: int(line.split()[1]) for line in f if ":" in line}
    except OSError:
        raise ModuleNotFoundError("CPU statistics need `psutil` on this system: `pip install psutil`.") from None
    total, idle = sum(fields[:8]), fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy, (last_busy, last_total) = total - idle, (_last_cpu_times[0] if _last_cpu_times else (0, 0))
    _last_cpu_times[:] = [(busy, total)]
    cpu = 100.0 * (busy - last_busy) / (total - last_total) if total > last_total else 0.0

    def used(kind: str) -> float:
        size = mem.get(f"{kind}Total", 0)
        free = mem.get("MemAvailable", mem.get("MemFree", 0)) if kind == "Mem" else mem.get("SwapFree", 0)
        return round(100.0 * (size - free) / size, 1) if size else 0.0

    return {"cpu_percent": round(cpu, 1), "cpu_vm_percent": used("Mem"), "cpu_swap_percent": used("Swap")}
