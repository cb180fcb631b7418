"""Base class of progress bars (placeholder, replaced by the progress-bar work)."""
from featherlight.callbacks.callback import Callback


class ProgressBar(Callback):
    """Base class for progress bars."""
