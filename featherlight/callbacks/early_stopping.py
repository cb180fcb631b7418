from featherlight.callbacks.callback import Callback


class EarlyStopping(Callback):
    _monitors_metrics = True
