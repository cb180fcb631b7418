"""General utilities: rank-zero helpers, seeding, hyperparameter containers and exceptions."""
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.parsing import AttributeDict
from featherlight.utilities.rank_zero import (
    rank_zero_debug,
    rank_zero_deprecation,
    rank_zero_info,
    rank_zero_only,
    rank_zero_warn,
)
from featherlight.utilities.seed import isolate_rng, seed_everything

__all__ = [
    "AttributeDict",
    "MisconfigurationException",
    "isolate_rng",
    "rank_zero_debug",
    "rank_zero_deprecation",
    "rank_zero_info",
    "rank_zero_only",
    "rank_zero_warn",
    "seed_everything",
]
