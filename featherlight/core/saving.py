"""Reading and writing ``hparams.yaml``.

Loading uses a *safe* YAML loader: a hyperparameters file can never make featherlight construct arbitrary
Python objects or run code. The one Python-specific tag accepted is ``!!python/tuple`` (files written by
other tools use it for tuples); it is loaded as a plain tuple.
"""
from __future__ import annotations

import enum
import importlib.util
import os
import warnings
from argparse import Namespace
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Union

from featherlight.utilities.io import atomic_write
from featherlight.utilities.rank_zero import WarningCache

_PATH = Union[str, "os.PathLike[str]"]

_warning_cache = WarningCache()


def _omegaconf_available() -> bool:
    return importlib.util.find_spec("omegaconf") is not None


def _yaml_dumper() -> type:
    """A ``SafeDumper`` that also writes the common non-YAML values in a form ``safe_load`` reads back:
    dict/list/tuple subclasses (``AttributeDict``, ``OrderedDict``, namedtuples) as plain mappings/sequences,
    enums by member name, paths as strings and numpy scalars as Python numbers."""
    import yaml

    class _HparamsDumper(yaml.SafeDumper):
        pass

    def mapping(dumper: yaml.SafeDumper, data: Mapping) -> Any:
        return dumper.represent_dict(dict(data))

    def sequence(dumper: yaml.SafeDumper, data: Any) -> Any:
        return dumper.represent_list(list(data))

    def enum_member(dumper: yaml.SafeDumper, data: enum.Enum) -> Any:
        return dumper.represent_str(data.name)

    def path(dumper: yaml.SafeDumper, data: PurePath) -> Any:
        return dumper.represent_str(str(data))

    _HparamsDumper.add_multi_representer(dict, mapping)
    _HparamsDumper.add_multi_representer(list, sequence)
    _HparamsDumper.add_multi_representer(tuple, sequence)
    _HparamsDumper.add_multi_representer(enum.Enum, enum_member)
    _HparamsDumper.add_multi_representer(PurePath, path)
    if importlib.util.find_spec("numpy") is not None:
        import numpy as np

        _HparamsDumper.add_multi_representer(np.generic, lambda d, x: d.represent_data(x.item()))
    return _HparamsDumper


def _yaml_loader() -> type:
    import yaml

    class _HparamsLoader(yaml.SafeLoader):
        pass

    def construct_tuple(loader: yaml.SafeLoader, node: Any) -> tuple:
        return tuple(loader.construct_sequence(node, deep=True))

    _HparamsLoader.add_constructor("tag:yaml.org,2002:python/tuple", construct_tuple)
    return _HparamsLoader


def _to_plain_dict(hparams: Any, use_omegaconf: bool) -> dict:
    if isinstance(hparams, Namespace):
        hparams = vars(hparams)
    if use_omegaconf and _omegaconf_available():
        from omegaconf import Container, OmegaConf

        if isinstance(hparams, Container):
            hparams = OmegaConf.to_container(hparams, resolve=True)
        elif isinstance(hparams, Mapping):
            hparams = {
                k: OmegaConf.to_container(v, resolve=True) if isinstance(v, Container) else v
                for k, v in hparams.items()
            }
    if not isinstance(hparams, Mapping):
        raise TypeError(f"hparams must be a dict or an argparse.Namespace, got {type(hparams).__name__}")
    return dict(hparams)


def save_hparams_to_yaml(config_yaml: _PATH, hparams: dict | Namespace, use_omegaconf: bool = True) -> None:
    """Write ``hparams`` to the YAML file ``config_yaml`` (atomically: no torn file on a crash).

    Args:
        config_yaml: destination file; its directory must exist.
        hparams: a dict (``AttributeDict`` included), an ``argparse.Namespace``, or an OmegaConf config.
        use_omegaconf: if omegaconf is installed, resolve OmegaConf configs (top level or values) to plain
            containers before writing.

    Values YAML cannot represent safely (custom objects, tensors, modules, ...) are left out of the file with a
    warning naming the key (once per key and message). Keys are written sorted.

    Raises:
        RuntimeError: if the destination directory does not exist.
        TypeError: if ``hparams`` is not a mapping or namespace.
    """
    import yaml

    directory = os.path.dirname(os.fspath(config_yaml)) or "."
    if not os.path.isdir(directory):
        raise RuntimeError(f"Missing folder: {directory}. Create it before saving the hparams file {config_yaml}.")

    hparams = _to_plain_dict(hparams, use_omegaconf)
    dumper = _yaml_dumper()
    allowed: dict[Any, Any] = {}
    for key, value in hparams.items():
        try:
            yaml.dump(value, Dumper=dumper)
        except (yaml.YAMLError, TypeError, ValueError, RecursionError):
            _warning_cache.warn(
                f"Skipping hyperparameter {key!r} ({type(value).__name__}) in {os.fspath(config_yaml)}: it cannot be"
                " written to YAML safely.",
                stacklevel=3,
            )
            continue
        allowed[key] = value

    text = yaml.dump(allowed, Dumper=dumper, default_flow_style=False, allow_unicode=True)
    atomic_write(config_yaml, lambda f: f.write(text.encode("utf-8")))


def load_hparams_from_yaml(config_yaml: _PATH, use_omegaconf: bool = True) -> dict[str, Any]:
    """Read a hyperparameters YAML file with a safe loader.

    Args:
        config_yaml: path of the file.
        use_omegaconf: if omegaconf is installed, return an OmegaConf ``DictConfig`` when the content allows it
            (as Lightning does); otherwise a plain dict.

    Returns:
        The hyperparameters; ``{}`` (with a ``RuntimeWarning``) if the file does not exist, ``{}`` if it is empty.

    Raises:
        ValueError: if the file holds something other than a mapping, or a tag the safe loader refuses.
    """
    import yaml

    if not os.path.isfile(config_yaml):
        warnings.warn(
            f"Hyperparameters file not found: {os.fspath(config_yaml)}. Using no hparams.", RuntimeWarning, stacklevel=2
        )
        return {}
    with open(config_yaml, encoding="utf-8") as f:
        try:
            hparams = yaml.load(f, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
        except yaml.constructor.ConstructorError as err:
            raise ValueError(
                f"Refusing to load {os.fspath(config_yaml)}: it contains a tag that would construct a Python"
                f" object, which the safe loader does not allow ({err.problem})."
            ) from err
    if hparams is None:
        return {}
    if not isinstance(hparams, dict):
        raise ValueError(
            f"{os.fspath(config_yaml)} must contain a mapping of hyperparameters, found {type(hparams).__name__}."
        )
    if use_omegaconf and _omegaconf_available():
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        try:
            return OmegaConf.create(hparams)  # type: ignore[return-value]
        except OmegaConfBaseException:
            pass
    return hparams
