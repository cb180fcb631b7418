"""Warning categories Lightning users filter on (one class each, wherever it is imported from)."""
from featherlight.utilities.rank_zero import PossibleUserWarning

__all__ = ["PossibleUserWarning"]
