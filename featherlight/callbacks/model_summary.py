from featherlight.callbacks.callback import Callback


class ModelSummary(Callback):
    def __init__(self, max_depth: int = 1) -> None:
        self._max_depth = max_depth
