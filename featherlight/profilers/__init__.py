"""Profilers (``featherlight.profilers``), mirroring ``lightning.pytorch.profilers``.

Importing this package is cheap: ``cProfile``/``pstats`` and ``torch.profiler`` are imported only when the
corresponding profiler starts recording or reporting.
"""

from featherlight.profilers.advanced import AdvancedProfiler
from featherlight.profilers.profiler import PassThroughProfiler, Profiler
from featherlight.profilers.pytorch import PyTorchProfiler
from featherlight.profilers.simple import SimpleProfiler

__all__ = ["Profiler", "SimpleProfiler", "AdvancedProfiler", "PyTorchProfiler", "PassThroughProfiler"]
