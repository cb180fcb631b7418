"""Precision plugins: full, double, half and mixed (autocast + GradScaler)."""
from featherlight.precision.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision

__all__ = ["Precision", "DoublePrecision", "HalfPrecision", "MixedPrecision"]
