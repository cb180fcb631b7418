"""Progress bars: the :class:`ProgressBar` base, the default :class:`TQDMProgressBar` and :class:`RichProgressBar`."""
from featherlight.callbacks.progress.progress_bar import ProgressBar
from featherlight.callbacks.progress.rich_progress import RichProgressBar
from featherlight.callbacks.progress.tqdm_progress import TQDMProgressBar

__all__ = ["ProgressBar", "RichProgressBar", "TQDMProgressBar"]
