"""``lightning.pytorch.plugins.precision``: the precision plugins (``featherlight.precision``)."""
from featherlight.precision.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision

__all__ = ["DoublePrecision", "HalfPrecision", "MixedPrecision", "Precision"]
