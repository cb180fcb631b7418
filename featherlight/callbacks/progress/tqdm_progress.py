from featherlight.callbacks.progress.progress_bar import ProgressBar


class TQDMProgressBar(ProgressBar):
    pass
