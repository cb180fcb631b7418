"""``lightning.fabric.utilities``: rank-zero helpers, seeding, data and device helpers, under Lightning's names.

The submodules (``types``, ``rank_zero``, ``seed``, ``apply_func``, ``data``, ``distributed``, ``exceptions``,
``imports``, ``enums``) are featherlight's own ``featherlight.utilities`` modules; ``cloud_io``, ``logger`` and
``warnings`` gather names from featherlight's file and logger floors.
"""
from featherlight.utilities.apply_func import move_data_to_device
from featherlight.utilities.data import AttributeDict, suggested_max_num_workers
from featherlight.utilities.distributed import is_shared_filesystem
from featherlight.utilities.enums import LightningEnum
from featherlight.utilities.rank_zero import (
    disable_possible_user_warnings,
    rank_zero_deprecation,
    rank_zero_info,
    rank_zero_only,
    rank_zero_warn,
)

__all__ = [
    "AttributeDict",
    "LightningEnum",
    "disable_possible_user_warnings",
    "is_shared_filesystem",
    "move_data_to_device",
    "rank_zero_deprecation",
    "rank_zero_info",
    "rank_zero_only",
    "rank_zero_warn",
    "suggested_max_num_workers",
]
