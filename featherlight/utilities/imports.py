"""Whether optional packages are installed (checked without importing them), under the names Lightning's own
example programs and libraries read (``from lightning.pytorch.utilities.imports import _TORCHVISION_AVAILABLE``,
``lightning.fabric.utilities.imports``).

Availability flags come from ``importlib.util.find_spec`` (nothing is imported); version flags from the installed
packages' metadata, on first access.
"""
import importlib.util
import operator
import platform
import sys
from typing import Any, Callable


def _package_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or half-installed package counts as missing
        return False


_JSONARGPARSE_AVAILABLE = _package_available("jsonargparse")
_OMEGACONF_AVAILABLE = _package_available("omegaconf")
_RICH_AVAILABLE = _package_available("rich")
_TORCHMETRICS_AVAILABLE = _package_available("torchmetrics")
_TORCHVISION_AVAILABLE = _package_available("torchvision")
_NUMPY_AVAILABLE = _package_available("numpy")
_IS_WINDOWS = platform.system() == "Windows"
# the interactive interpreter, or `python -i`
_IS_INTERACTIVE = hasattr(sys, "ps1") or bool(sys.flags.interactive)
_PYTHON_GREATER_EQUAL_3_10_0 = sys.version_info[:2] >= (3, 10)
_PYTHON_GREATER_EQUAL_3_11_0 = sys.version_info[:2] >= (3, 11)


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string (``"2.6.0+cu124"`` -> ``(2, 6, 0)``); enough to compare releases."""
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):  # "0rc1": a pre-release of this number ends the release part
            break
    return tuple(parts)


def _compare_version(package: str, op: Callable[[Any, Any], bool], version: str) -> bool:
    """``op(installed release of package, version)``, ``False`` when it is not installed. Reads the installed
    version from the package metadata, without importing the package."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        installed = installed_version(package)
    except PackageNotFoundError:
        return False
    have, want = _release(installed), _release(version)
    width = max(len(have), len(want))
    return op(have + (0,) * (width - len(have)), want + (0,) * (width - len(want)))


# Version flags are computed on first access (module __getattr__): reading package metadata costs a little, and
# most programs read none of them.
_VERSION_FLAGS: dict[str, tuple[str, Callable[[Any, Any], bool], str]] = {
    "_TORCH_GREATER_EQUAL_2_2": ("torch", operator.ge, "2.2.0"),
    "_TORCH_GREATER_EQUAL_2_3": ("torch", operator.ge, "2.3.0"),
    "_TORCH_GREATER_EQUAL_2_4": ("torch", operator.ge, "2.4.0"),
    "_TORCH_GREATER_EQUAL_2_4_1": ("torch", operator.ge, "2.4.1"),
    "_TORCH_GREATER_EQUAL_2_5": ("torch", operator.ge, "2.5.0"),
    "_TORCH_GREATER_EQUAL_2_6": ("torch", operator.ge, "2.6.0"),
    "_TORCH_GREATER_EQUAL_2_8": ("torch", operator.ge, "2.8.0"),
    "_TORCH_EQUAL_2_4_0": ("torch", operator.eq, "2.4.0"),
    "_TORCH_LESS_EQUAL_2_6": ("torch", operator.le, "2.6.0"),
    "_TORCHMETRICS_GREATER_EQUAL_0_8_0": ("torchmetrics", operator.ge, "0.8.0"),
    "_TORCHMETRICS_GREATER_EQUAL_0_9_1": ("torchmetrics", operator.ge, "0.9.1"),
    "_TORCHMETRICS_GREATER_EQUAL_0_11": ("torchmetrics", operator.ge, "0.11.0"),
    "_TORCHMETRICS_GREATER_EQUAL_1_0_0": ("torchmetrics", operator.ge, "1.0.0"),
}
_RANGE_FLAGS = {
    "_TORCH_EQUAL_2_8": ("torch", "2.8.0", "2.9.0"),
    "_TORCH_EQUAL_2_9": ("torch", "2.9.0", "2.10.0"),
}


def __getattr__(name: str) -> bool:
    if name in _VERSION_FLAGS:
        value = _compare_version(*_VERSION_FLAGS[name])
    elif name in _RANGE_FLAGS:
        package, low, high = _RANGE_FLAGS[name]
        value = _compare_version(package, operator.ge, low) and _compare_version(package, operator.lt, high)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_VERSION_FLAGS) | set(_RANGE_FLAGS))
