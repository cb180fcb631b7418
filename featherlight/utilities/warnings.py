"""Warning categories Lightning users filter on."""


class PossibleUserWarning(UserWarning):
    """A warning about something that may be on purpose (e.g. ``max_epochs`` left unset): silence it with
    ``warnings.filterwarnings("ignore", category=PossibleUserWarning)`` once you have checked it."""
