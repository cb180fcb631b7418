"""General utilities: rank-zero helpers, seeding, hyperparameter containers and exceptions.

Names load on first use, so importing one utility module does not import the others.
"""
import importlib
from typing import TYPE_CHECKING, Any

_NAMES = {
    "AttributeDict": "featherlight.utilities.parsing",
    "MisconfigurationException": "featherlight.utilities.exceptions",
    "is_picklable": "featherlight.utilities.parsing",
    "isolate_rng": "featherlight.utilities.seed",
    "rank_zero_debug": "featherlight.utilities.rank_zero",
    "rank_zero_deprecation": "featherlight.utilities.rank_zero",
    "rank_zero_info": "featherlight.utilities.rank_zero",
    "rank_zero_only": "featherlight.utilities.rank_zero",
    "rank_zero_warn": "featherlight.utilities.rank_zero",
    "seed_everything": "featherlight.utilities.seed",
}

__all__ = sorted(_NAMES)

if TYPE_CHECKING:
    from featherlight.utilities.exceptions import MisconfigurationException
    from featherlight.utilities.parsing import AttributeDict, is_picklable
    from featherlight.utilities.rank_zero import (
        rank_zero_debug,
        rank_zero_deprecation,
        rank_zero_info,
        rank_zero_only,
        rank_zero_warn,
    )
    from featherlight.utilities.seed import isolate_rng, seed_everything


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'featherlight.utilities' has no attribute {name!r}")
