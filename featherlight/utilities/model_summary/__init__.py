"""Model summaries (``featherlight.utilities.model_summary``), at Lightning's paths: the package exports the summary
classes and helpers, and :mod:`featherlight.utilities.model_summary.model_summary` holds them (with
``UNKNOWN_SIZE``, the ``"?"`` shown for a size that was not recorded)."""
from featherlight.utilities.model_summary.model_summary import (
    NOT_APPLICABLE,
    UNKNOWN_SIZE,
    LayerSummary,
    ModelSummary,
    get_formatted_model_size,
    get_human_readable_count,
    parse_batch_shape,
    summarize,
)

__all__ = [
    "LayerSummary",
    "ModelSummary",
    "NOT_APPLICABLE",
    "UNKNOWN_SIZE",
    "get_formatted_model_size",
    "get_human_readable_count",
    "parse_batch_shape",
    "summarize",
]
