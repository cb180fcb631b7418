"""Whether optional packages are installed (checked without importing them), under the names Lightning's own
example programs read (``from lightning.pytorch.utilities.imports import _TORCHVISION_AVAILABLE``)."""
import importlib.util


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
