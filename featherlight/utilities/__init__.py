"""General utilities (``lightning.pytorch.utilities``): rank-zero helpers, seeding, hyperparameter containers,
exceptions, gradient norms and data helpers.

Names load on first use, so importing one utility module does not import the others.
"""
import importlib
from typing import TYPE_CHECKING, Any

_NAMES = {
    "AttributeDict": "featherlight.utilities.parsing",
    "GradClipAlgorithmType": "featherlight.utilities.enums",
    "LightningEnum": "featherlight.utilities.enums",
    "MisconfigurationException": "featherlight.utilities.exceptions",
    "disable_possible_user_warnings": "featherlight.utilities.rank_zero",
    "grad_norm": "featherlight.utilities.grads",
    "is_picklable": "featherlight.utilities.parsing",
    "is_shared_filesystem": "featherlight.utilities.distributed",
    "isolate_rng": "featherlight.utilities.seed",
    "move_data_to_device": "featherlight.utilities.apply_func",
    "rank_zero_debug": "featherlight.utilities.rank_zero",
    "rank_zero_deprecation": "featherlight.utilities.rank_zero",
    "rank_zero_info": "featherlight.utilities.rank_zero",
    "rank_zero_only": "featherlight.utilities.rank_zero",
    "rank_zero_warn": "featherlight.utilities.rank_zero",
    "seed_everything": "featherlight.utilities.seed",
    "suggested_max_num_workers": "featherlight.utilities.data",
}

__all__ = sorted(_NAMES)

if TYPE_CHECKING:
    from featherlight.utilities.apply_func import move_data_to_device
    from featherlight.utilities.data import suggested_max_num_workers
    from featherlight.utilities.distributed import is_shared_filesystem
    from featherlight.utilities.enums import GradClipAlgorithmType, LightningEnum
    from featherlight.utilities.exceptions import MisconfigurationException
    from featherlight.utilities.grads import grad_norm
    from featherlight.utilities.parsing import AttributeDict, is_picklable
    from featherlight.utilities.rank_zero import (
        disable_possible_user_warnings,
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
