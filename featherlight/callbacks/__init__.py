from featherlight.callbacks.callback import Callback
