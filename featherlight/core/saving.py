"""Reading and writing ``hparams.yaml``, and rebuilding a module or datamodule from a checkpoint.

Loading uses a *safe* YAML loader: a hyperparameters file can never make featherlight construct arbitrary
Python objects or run code. The one Python-specific tag accepted is ``!!python/tuple`` (files written by
other tools use it for tuples); it is loaded as a plain tuple.

``load_module_from_checkpoint`` (behind ``LightningModule.load_from_checkpoint``) reads the file through
:func:`featherlight.io.load.load_checkpoint` (no code from the file runs), rebuilds the class from the saved
hyperparameters and loads the weights; ``load_module_state`` is the one place a state dict is loaded into a
module, with errors that list the keys that did not match.
"""
from __future__ import annotations

import ast
import csv
import enum
import importlib.util
import inspect
import io
import os
import warnings
from argparse import Namespace
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Optional, Union

import torch

from featherlight.io.atomic import atomic_write, write_bytes
from featherlight.io.load import load_checkpoint
from featherlight.io.paths import is_remote, read_bytes
from featherlight.io.safe import unloaded_objects
from featherlight.io.state import load_module_state
from featherlight.utilities.exceptions import CheckpointError
from featherlight.utilities.model_helpers import is_overridden
from featherlight.utilities.rank_zero import WarningCache, rank_zero_warn

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

    Values YAML cannot represent safely (custom objects, tensors, modules, ...), and keys other than strings,
    numbers, booleans and None, are left out of the file with a warning naming the key (once per key and message).
    Keys are written sorted (when they are all of one kind).

    Raises:
        RuntimeError: if the destination directory does not exist.
        TypeError: if ``hparams`` is not a mapping or namespace.
    """
    import yaml

    directory = os.path.dirname(os.fspath(config_yaml)) or "."
    remote = is_remote(config_yaml)  # an fsspec URL: object stores have no folders to check
    if not remote and not os.path.isdir(directory):
        raise RuntimeError(f"Missing folder: {directory}. Create it before saving the hparams file {config_yaml}.")

    hparams = _to_plain_dict(hparams, use_omegaconf)
    dumper = _yaml_dumper()
    allowed: dict[Any, Any] = {}
    for key, value in hparams.items():
        # the key too: a safe loader reads back str, int, float, bool and None keys, not e.g. a complex number
        for part, obj in (("key", key), ("value", value)):
            try:
                yaml.dump(obj, Dumper=dumper)
            except (yaml.YAMLError, TypeError, ValueError, RecursionError):
                _warning_cache.warn(
                    f"Skipping '{key}' parameter because it is not possible to safely dump to YAML. (Its {part}, a"
                    f" {type(obj).__name__}, has no safe YAML form; it is left out of {os.fspath(config_yaml)}.)",
                    stacklevel=3,
                )
                break
        else:
            allowed[key] = value

    text = yaml.dump(allowed, Dumper=dumper, default_flow_style=False, allow_unicode=True)
    if remote:
        write_bytes(config_yaml, text.encode("utf-8"))
    else:
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

    if is_remote(config_yaml):  # an fsspec URL
        try:
            text = read_bytes(config_yaml).decode("utf-8")
        except FileNotFoundError:
            text = None
    elif os.path.isfile(config_yaml):
        with open(config_yaml, encoding="utf-8") as f:
            text = f.read()
    else:
        text = None
    if text is None:
        warnings.warn(
            f"Hyperparameters file not found: {os.fspath(config_yaml)}. Using no hparams.", RuntimeWarning, stacklevel=2
        )
        return {}
    try:
        hparams = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
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


def _literal(value: str) -> Any:
    """A CSV cell back as the Python literal it was written from (``32``, ``0.1``, ``True``), else the string.
    ``ast.literal_eval`` only parses literals: no code runs."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def save_hparams_to_tags_csv(tags_csv: _PATH, hparams: dict | Namespace) -> None:
    """Write ``hparams`` to the legacy ``key,value`` CSV file ``tags_csv`` (atomically).

    Raises:
        RuntimeError: if the destination directory does not exist.
    """
    directory = os.path.dirname(os.fspath(tags_csv)) or "."
    if not os.path.isdir(directory):
        raise RuntimeError(f"Missing folder: {directory}. Create it before saving the tags file {tags_csv}.")
    if isinstance(hparams, Namespace):
        hparams = vars(hparams)
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["key", "value"])
    for key, value in hparams.items():
        writer.writerow([key, value])
    text = out.getvalue()
    atomic_write(tags_csv, lambda f: f.write(text.encode("utf-8")))


def load_hparams_from_tags_csv(tags_csv: _PATH) -> dict[str, Any]:
    """Read a legacy ``key,value`` CSV file of hyperparameters (values parsed as Python literals, never executed).

    Returns ``{}`` with a ``RuntimeWarning`` if the file does not exist."""
    if not os.path.isfile(tags_csv):
        warnings.warn(f"Missing Tags: {os.fspath(tags_csv)}.", RuntimeWarning, stacklevel=2)
        return {}
    with open(tags_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=","))
    return {row[0]: _literal(row[1]) for row in rows[1:] if len(row) >= 2}


# ------------------------------------------------------------------------------------------- module state
def plain_hparams(hparams: Any) -> Any:
    """hparams as a plain dict (AttributeDict is a dict subclass; plain dicts load with weights_only)."""
    if isinstance(hparams, dict):
        return {k: plain_hparams(v) for k, v in hparams.items()}
    if hasattr(hparams, "items") and not isinstance(hparams, torch.Tensor):
        return {k: plain_hparams(v) for k, v in hparams.items()}
    return hparams


_PLAIN = (bool, int, float, str, type(None))
_TORCH_NN = "torch.nn.modules."


def torch_module_records(hparams: Any, left_out: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """For the ``nn.Module`` hyperparameters left out of a checkpoint, those that are torch's own layers without
    parameters, buffers or submodules (activations, dropout, pooling): their class and plain attributes, as plain
    data. ``load_from_checkpoint`` rebuilds them from that instead of asking for them, as Lightning (which pickles
    them) needs no argument either."""
    records: dict[str, dict[str, Any]] = {}
    for name in left_out:
        value = hparams.get(name) if isinstance(hparams, Mapping) else None
        if not isinstance(value, torch.nn.Module) or not type(value).__module__.startswith(_TORCH_NN):
            continue
        if any(True for _ in value.parameters(recurse=False)) or any(True for _ in value.buffers(recurse=False)) \
                or any(True for _ in value.children()):
            continue
        attributes = {k: v for k, v in vars(value).items() if not k.startswith("_")}
        if all(isinstance(v, _PLAIN) or (isinstance(v, tuple) and all(isinstance(i, _PLAIN) for i in v))
               for v in attributes.values()):
            records[name] = {"class": f"{type(value).__module__}.{type(value).__qualname__}",
                             "attributes": attributes}
    return records


def rebuild_torch_module(record: Mapping[str, Any]) -> Optional[torch.nn.Module]:
    """The layer :func:`torch_module_records` described, or None when the record is not one of torch's own
    ``torch.nn`` classes (nothing else is looked up: no code named by a checkpoint is imported)."""
    path = str(record.get("class", ""))
    module_name, _, qualname = path.rpartition(".")
    if not path.startswith(_TORCH_NN) or "." in qualname:
        return None
    import sys

    cls = getattr(sys.modules.get(module_name), qualname, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        return None
    layer = cls.__new__(cls)
    torch.nn.Module.__init__(layer)  # torch's own tables, then the attributes __init__ had set
    layer.__dict__.update({k: v for k, v in dict(record.get("attributes", {})).items() if not k.startswith("_")})
    return layer


# ------------------------------------------------------------------------------------------- load_from_checkpoint
# keys LightningCLI adds to hparams to rebuild a class by import path; we never import from a checkpoint
_INSTANTIATOR_KEYS = ("_instantiator", "_class_path")
# nn.Module hyperparameters left out of a checkpoint: {argument name: class}, for load_from_checkpoint to ask for
HPARAMS_LEFT_OUT_KEY = "featherlight_hparams_left_out"
DM_HPARAMS_LEFT_OUT_KEY = "featherlight_datamodule_hparams_left_out"
# left-out hyperparameters that are stateless torch.nn modules (nn.SiLU(), nn.LeakyReLU(0.2)): their class and
# plain attributes, enough for load_from_checkpoint to rebuild them without asking (see `torch_module_records`)
HPARAMS_TORCH_MODULES_KEY = "featherlight_hparams_torch_modules"
DM_HPARAMS_TORCH_MODULES_KEY = "featherlight_datamodule_hparams_torch_modules"
# the saved hyperparameters that were `__init__` arguments (not set by hand): a renamed argument is warned about
HPARAMS_INIT_KEY = "featherlight_hparams_init_args"
DM_HPARAMS_INIT_KEY = "featherlight_datamodule_hparams_init_args"
# where Lightning < 1.0 saved a module's hyperparameters (read before the current key, which wins)
_PAST_HPARAMS_KEYS = ("hparams", "module_arguments")


def _init_kwargs(cls: type, checkpoint: dict[str, Any], hparams_key: str, name_key: str, hparams_file: Any,
                 overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The keyword arguments to rebuild ``cls`` with, the hyperparameters they came from, and the hyperparameters
    left out because ``cls.__init__`` does not take them (see :func:`_dropped_hparams`).

    The saved hyperparameters (replaced by ``hparams_file`` when given, as Lightning does), updated with
    ``overrides``; if they were saved from one config object (``save_hyperparameters(config)``), they are
    passed back as that ``__init__`` argument (an :class:`AttributeDict`: item and attribute access both
    work), overrides naming ``__init__`` arguments applying on top.
    """
    from featherlight.utilities.parsing import AttributeDict

    hparams: dict[str, Any] = {}
    if hparams_key == "hyper_parameters":
        for past in _PAST_HPARAMS_KEYS:
            if isinstance(checkpoint.get(past), Mapping):
                hparams.update(checkpoint[past])
    saved = checkpoint.get(hparams_key)
    if isinstance(saved, Mapping):
        hparams.update(saved)
    if hparams_file is not None:
        ext = os.fspath(hparams_file).rsplit(".", 1)[-1].lower()
        if ext == "csv":
            hparams = load_hparams_from_tags_csv(hparams_file)
        elif ext in ("yaml", "yml"):
            hparams = dict(load_hparams_from_yaml(hparams_file))
        else:
            raise ValueError(
                f".csv, .yml or .yaml is required for `hparams_file`, got {os.fspath(hparams_file)!r}."
            )
    hparams.update(overrides)
    for key in _INSTANTIATOR_KEYS:
        hparams.pop(key, None)
    params = inspect.signature(cls.__init__).parameters
    names = [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    config_name = checkpoint.get(name_key)
    kwargs: dict[str, Any] = dict(hparams)
    if config_name and config_name in names:
        kwargs = {config_name: AttributeDict(hparams)}
        kwargs.update((k, v) for k, v in overrides.items() if k in names)
    dropped: dict[str, Any] = {}
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        dropped = {k: v for k, v in kwargs.items() if k not in names}
        kwargs = {k: v for k, v in kwargs.items() if k in names}
    return kwargs, hparams, dropped


def _parent_init_args(cls: type) -> set[str]:
    """Argument names of the ``__init__`` of every class ``cls`` derives from: ``save_hyperparameters()`` records
    those of the whole ``super().__init__()`` chain, and a subclass that sets a parent's argument itself (e.g.
    ``super().__init__(lr=0.1)``) rightly does not take it back."""
    out: set[str] = set()
    for base in cls.__mro__[1:]:
        init = base.__dict__.get("__init__")
        if init is None or base is object:
            continue
        try:
            out.update(inspect.signature(init).parameters)
        except (TypeError, ValueError):  # a builtin's __init__ without a signature
            continue
    return out


def _dropped_hparams(cls: type, dropped: dict[str, Any], checkpoint: dict[str, Any], hparams_key: str,
                     init_key: str, hparams_file: Any, overrides: dict[str, Any], path: Any) -> dict[str, Any]:
    """Warn about saved hyperparameters ``cls.__init__`` no longer takes (an argument renamed or removed since the
    checkpoint was saved): without a word the module would be built with the default value instead, and a later
    shape mismatch could not say why. Returns the ones warned about.

    Silent for names a parent class's ``__init__`` takes, for values the checkpoint records as set by hand (not
    ``__init__`` arguments; a checkpoint without that record, e.g. Lightning's, counts them all), and when the
    keyword arguments passed to ``load_from_checkpoint`` supply an ``__init__`` argument missing from the saved
    ones (the new name, given)."""
    if not dropped:
        return {}
    recorded = checkpoint.get(init_key) if hparams_file is None else None
    parents = _parent_init_args(cls)
    suspects = {k: v for k, v in dropped.items() if k not in parents
                and (not isinstance(recorded, (list, tuple)) or k in recorded)}
    if not suspects:
        return {}
    params = inspect.signature(cls.__init__).parameters
    saved = set(checkpoint.get(hparams_key) or ()) | set(dropped)
    if any(k in params and k not in saved for k in overrides):
        return suspects
    name = cls.__name__
    listed = ", ".join(f"{k}={v!r}" for k, v in suspects.items())
    rank_zero_warn(
        f"`{name}.load_from_checkpoint`: the hyperparameters saved in {_describe(path)} include {listed}, which "
        f"`{name}.__init__` no longer takes (renamed or removed since the checkpoint was saved?), so they are not "
        f"passed and `{name}` is built with its defaults instead. If an argument was renamed, pass the saved value "
        f"under its new name: `{name}.load_from_checkpoint(path, <new_name>=...)`."
    )
    return suspects


# LightningCLI's instantiator, as checkpoints name it (featherlight's and Lightning's), and the module holding it.
# The one place a checkpoint's content leads to code: only to the CLI's own instantiator, from this allow-list.
_CLI_INSTANTIATORS = {"featherlight.cli.instantiate_module": "featherlight.cli",
                      "lightning.pytorch.cli.instantiate_module": "featherlight.cli",
                      "pytorch_lightning.cli.instantiate_module": "featherlight.cli"}


def _rebuild_with_cli(cls: type, saved: Any, hparams_file: Any, overrides: dict[str, Any]) -> Any:
    """A module LightningCLI built recorded its parsed config (``class_path`` entries, optimizer callables) and
    ``_instantiator``; rebuild it through the CLI so those come back as objects. Only the CLI's own instantiator
    is honoured (the checkpoint never chooses the code to run), and a ``_class_path`` only within subclasses of
    ``cls``. ``None`` when the hyperparameters were not recorded by the CLI."""
    if hparams_file is not None or not isinstance(saved, Mapping):
        return None
    target = _CLI_INSTANTIATORS.get(saved.get("_instantiator"))
    if target is None:
        return None
    # by name: the CLI sits floors above and imports jsonargparse; a CLI-built checkpoint is what needs it
    instantiate_module = importlib.import_module(target).instantiate_module
    config = {k: v for k, v in saved.items() if k != "_instantiator"}
    config.update(overrides)
    return instantiate_module(cls, config)


def _rebuilt_torch_modules(cls: type, records: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The stateless torch layers the checkpoint describes, for ``__init__`` arguments not passed by hand."""
    if not isinstance(records, Mapping):
        return {}
    params = inspect.signature(cls.__init__).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    out = {}
    for name, record in records.items():
        if name in overrides or not (name in params or takes_kwargs) or not isinstance(record, Mapping):
            continue
        layer = rebuild_torch_module(record)
        if layer is not None:
            out[name] = layer
    return out


def _check_rebuildable(cls: type, kwargs: dict[str, Any], overrides: dict[str, Any], left_out: Any,
                       path: Any) -> None:
    """Before ``cls(**kwargs)``: every argument ``__init__`` needs is there as plain data.

    * An ``nn.Module`` hyperparameter is not in the checkpoint (``left_out``): it must be passed, unless
      ``__init__``'s default is a module of the same class (the weights then come from the state dict).
    * A hyperparameter only code from the file could rebuild (an :class:`~featherlight.io.safe.UnloadedObject`,
      read under ``weights_only=True``) must be passed, or the file trusted with ``weights_only=False``.
    """
    name = cls.__name__
    params = inspect.signature(cls.__init__).parameters
    if isinstance(left_out, Mapping):
        for arg, saved_class in left_out.items():
            if arg in overrides or arg not in params:
                continue
            default = params[arg].default
            if default is not params[arg].empty and \
                    f"{type(default).__module__}.{type(default).__qualname__}" == saved_class:
                continue
            what = "has no default" if default is params[arg].empty else \
                f"defaults to a {type(default).__qualname__}"
            raise TypeError(
                f"`{name}.load_from_checkpoint` needs the argument `{arg}`: it was an `nn.Module` "
                f"({saved_class}), which is not stored with the hyperparameters in {_describe(path)} (its weights "
                f"are in the state dict), and `{name}.__init__` {what}. Pass it: "
                f"`{name}.load_from_checkpoint(path, {arg}=...)`."
            )
    unloaded = {k: unloaded_objects(v) for k, v in kwargs.items() if k not in overrides}
    unloaded = {k: v for k, v in unloaded.items() if v}
    if unloaded:
        listed = ", ".join(f"`{k}` ({', '.join(sorted(set(v)))})" for k, v in unloaded.items())
        example = ", ".join(f"{k}=..." for k in unloaded)
        raise CheckpointError(
            f"Cannot rebuild {name} from the hyperparameters in {_describe(path)}: {listed} can only be restored by "
            f"executing code from the file, which loading does not do. Pass them: `{name}.load_from_checkpoint(path, "
            f"{example})`, or, if you trust the file, opt in with `weights_only=False`. (Resuming with "
            "`trainer.fit(ckpt_path=...)` and `trainer.test(ckpt_path=...)` need neither: the weights and training "
            "state load as they are.)", reason="unsafe",
        )


def _instantiate(cls: type, kwargs: dict[str, Any], hparams: dict[str, Any], path: Any) -> Any:
    try:
        return cls(**kwargs)
    except TypeError as err:
        params = inspect.signature(cls.__init__).parameters
        init_args = [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        missing = [n for n in init_args if params[n].default is params[n].empty and n not in kwargs]
        example = ", ".join(f"{n}=..." for n in missing) or "name=value"
        raise TypeError(
            f"Could not rebuild {cls.__name__} from the hyperparameters saved in {_describe(path)} ({err}). "
            f"Saved hyperparameters: {sorted(hparams)}; {cls.__name__}.__init__ takes {init_args}"
            + (f" and needs {missing}" if missing else "")
            + f". If an argument was renamed or added, pass it: `{cls.__name__}.load_from_checkpoint(path, "
            f"{example})` (keyword arguments override the saved hyperparameters)."
        ) from None


def _describe(path: Any) -> str:
    return repr(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else repr(getattr(path, "name", "<stream>"))


def _default_map_location(storage: Any, location: str) -> Any:
    """Tensors saved on an accelerator this machine lacks load on the CPU; the others where they were saved."""
    device_type = location.split(":")[0]
    if device_type in ("cpu", "meta"):
        return None
    module = getattr(torch, device_type, None)
    available = getattr(module, "is_available", None)
    if callable(available) and available():
        return None
    return storage.cpu()


def rebuild_module(cls: type, path: Any, map_location: Any, hparams_file: Any, weights_only: bool = True,
                   **kwargs: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Read the checkpoint at ``path`` and build ``cls`` from its saved hyperparameters (``kwargs`` override them);
    returns the new module, the checkpoint, whose weights :func:`load_weights` puts in, and the saved
    hyperparameters ``__init__`` did not take (warned about when they look like a renamed argument)."""
    checkpoint = load_checkpoint(path, map_location=map_location or _default_map_location, weights_only=weights_only)
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"{_describe(path)} has no 'state_dict': it is not a model checkpoint.", reason="corrupt")
    model = _rebuild_with_cli(cls, checkpoint.get("hyper_parameters"), hparams_file, kwargs)
    dropped: dict[str, Any] = {}
    if model is None:
        init_kwargs, hparams, dropped = _init_kwargs(cls, checkpoint, "hyper_parameters", "hparams_name",
                                                     hparams_file, kwargs)
        # named in a shape-mismatch error: the ones that look renamed, else all of them
        dropped = _dropped_hparams(cls, dropped, checkpoint, "hyper_parameters", HPARAMS_INIT_KEY, hparams_file,
                                   kwargs, path) or dropped
        rebuilt = _rebuilt_torch_modules(cls, checkpoint.get(HPARAMS_TORCH_MODULES_KEY), kwargs)
        init_kwargs.update(rebuilt)
        _check_rebuildable(cls, init_kwargs, {**kwargs, **rebuilt}, checkpoint.get(HPARAMS_LEFT_OUT_KEY), path)
        model = _instantiate(cls, init_kwargs, hparams, path)
    return model, checkpoint, dropped


def load_weights(model: Any, checkpoint: dict[str, Any], strict: bool, path: Any,
                 dropped: Optional[dict[str, Any]] = None) -> Any:
    """``configure_model``, ``on_load_checkpoint``, then the checkpoint's weights; the model goes where the
    checkpoint's tensors were loaded (``map_location`` decides), as in Lightning. ``dropped``: saved
    hyperparameters ``__init__`` did not take, named in the error if the weights do not fit."""
    if is_overridden("configure_model", model):  # the parent found from the class: LightningModule
        model.configure_model()
    model.on_load_checkpoint(checkpoint)
    state_dict = checkpoint["state_dict"]
    try:
        load_module_state(model, state_dict, strict, path)
    except RuntimeError as err:
        if not dropped:
            raise
        name = type(model).__name__
        listed = ", ".join(f"{k}={v!r}" for k, v in dropped.items())
        raise RuntimeError(
            f"{err}\nThe checkpoint's hyperparameters {listed} were not passed to `{name}.__init__`, which does not "
            f"take them any more, so the model was built with its defaults: that is likely why the weights do not "
            f"fit. If an argument was renamed, pass the saved value under its new name: "
            f"`{name}.load_from_checkpoint(path, <new_name>=...)`."
        ) from None
    if not state_dict:
        rank_zero_warn(f"The state dict in {_describe(path)} contains no parameters.")
        return model
    device = next((t.device for t in state_dict.values() if isinstance(t, torch.Tensor)), None)
    return model.to(device) if device is not None else model


def load_datamodule_from_checkpoint(cls: type, path: Any, map_location: Any, hparams_file: Any,
                                     weights_only: bool = True, **kwargs: Any) -> Any:
    checkpoint = load_checkpoint(path, map_location=map_location or _default_map_location,
                                       weights_only=weights_only)
    dm = _rebuild_with_cli(cls, checkpoint.get("datamodule_hyper_parameters"), hparams_file, kwargs)
    if dm is None:
        init_kwargs, hparams, dropped = _init_kwargs(cls, checkpoint, "datamodule_hyper_parameters",
                                                     "datamodule_hparams_name", hparams_file, kwargs)
        _dropped_hparams(cls, dropped, checkpoint, "datamodule_hyper_parameters", DM_HPARAMS_INIT_KEY, hparams_file,
                         kwargs, path)
        rebuilt = _rebuilt_torch_modules(cls, checkpoint.get(DM_HPARAMS_TORCH_MODULES_KEY), kwargs)
        init_kwargs.update(rebuilt)
        _check_rebuildable(cls, init_kwargs, {**kwargs, **rebuilt}, checkpoint.get(DM_HPARAMS_LEFT_OUT_KEY), path)
        dm = _instantiate(cls, init_kwargs, hparams, path)
    key = cls.__qualname__
    if key in checkpoint:
        dm.load_state_dict(checkpoint[key])
    return dm
