from featherlight.callbacks.callback import Callback


class ModelCheckpoint(Callback):
    _monitors_metrics = True
    best_model_path = ""
    last_model_path = ""
    dirpath = None
