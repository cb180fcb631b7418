"""Accelerators (``lightning.pytorch.accelerators``): CPU, CUDA and MPS (XLA/TPU named, never available), and ``find_usable_cuda_devices``. Their
Lightning modules ``accelerator``, ``cpu``, ``cuda`` and ``mps`` are :mod:`featherlight.accelerators.accelerator`."""
from featherlight.accelerators.accelerator import (
    Accelerator,
    CPUAccelerator,
    CUDAAccelerator,
    MPSAccelerator,
    TPUAccelerator,
    XLAAccelerator,
    find_usable_cuda_devices,
)

__all__ = ["Accelerator", "CPUAccelerator", "CUDAAccelerator", "MPSAccelerator", "TPUAccelerator", "XLAAccelerator",
           "find_usable_cuda_devices"]
