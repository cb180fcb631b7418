"""Accelerators (``lightning.pytorch.accelerators``): CPU, CUDA and MPS, and ``find_usable_cuda_devices``. Their
Lightning modules ``accelerator``, ``cpu``, ``cuda`` and ``mps`` are :mod:`featherlight.accelerators.accelerator`."""
from featherlight.accelerators.accelerator import (
    Accelerator,
    CPUAccelerator,
    CUDAAccelerator,
    MPSAccelerator,
    find_usable_cuda_devices,
)

__all__ = ["Accelerator", "CPUAccelerator", "CUDAAccelerator", "MPSAccelerator", "find_usable_cuda_devices"]
