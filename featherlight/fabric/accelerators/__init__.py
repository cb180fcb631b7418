"""``lightning.fabric.accelerators``: the accelerators of :mod:`featherlight.accelerators`."""
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
