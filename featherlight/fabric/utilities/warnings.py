"""``lightning.fabric.utilities.warnings``: the ``PossibleUserWarning`` category and how to silence it."""
from featherlight.utilities.rank_zero import PossibleUserWarning, disable_possible_user_warnings

__all__ = ["PossibleUserWarning", "disable_possible_user_warnings"]
