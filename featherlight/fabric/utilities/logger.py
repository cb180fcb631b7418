"""``lightning.fabric.utilities.logger``: the hyperparameter and metric helpers custom loggers import."""
from featherlight.loggers.logger import (
    _add_prefix,
    _convert_json_serializable,
    _convert_params,
    _flatten_dict,
    _sanitize_callable_params,
    _sanitize_params,
)

__all__ = ["_add_prefix", "_convert_json_serializable", "_convert_params", "_flatten_dict",
           "_sanitize_callable_params", "_sanitize_params"]
