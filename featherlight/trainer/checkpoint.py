"""Checkpoints: what goes in, how it is written (atomically) and read (never executing code).

A checkpoint is a dict of parts that each save and load themselves: the module's weights, the
optimizers, schedulers, precision (GradScaler), callbacks, datamodule, loop counters and RNG
states. The top-level keys are Lightning's, so checkpoints move between the two frameworks.
"""
from __future__ import annotations

import glob
import inspect
import os
import pickle
from typing import IO, TYPE_CHECKING, Any, Optional, Union

import torch

from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from featherlight.trainer.trainer import Trainer

# Lightning reads this key to decide which migrations to run; our layout matches its 2.x format.
LIGHTNING_VERSION_KEY = "pytorch-lightning_version"
LIGHTNING_COMPAT_VERSION = "2.5.0"
VERSION_KEY = "featherlight_version"
LOOP_KEY = "featherlight_loop"
RNG_KEY = "featherlight_rng_states"


class CheckpointError(RuntimeError):
    """A checkpoint could not be read: missing, truncated, corrupt, or needing arbitrary unpickling."""


# ------------------------------------------------------------------------------------------- writing
def _strip_compile_prefix(state_dict: dict[str, Any]) -> dict[str, Any]:
    """torch.compile wraps modules in ``_orig_mod``; checkpoints keep the plain names."""
    if not any("_orig_mod." in k for k in state_dict):
        return state_dict
    return type(state_dict)((k.replace("_orig_mod.", ""), v) for k, v in state_dict.items())


def _dump_checkpoint(trainer: "Trainer", weights_only: bool = False) -> dict[str, Any]:
    """Build the checkpoint dict of the trainer's current state (hooks included)."""
    from featherlight import __version__
    from featherlight.utilities.seed import _collect_rng_states

    module = trainer.lightning_module
    loop = trainer._loop
    checkpoint: dict[str, Any] = {
        "epoch": loop.epoch,
        "global_step": loop.global_step,
        LIGHTNING_VERSION_KEY: LIGHTNING_COMPAT_VERSION,
        VERSION_KEY: __version__,
        "state_dict": _strip_compile_prefix(trainer.strategy.model_state_dict()),
        "loops": {},
        LOOP_KEY: loop._checkpoint_state(trainer),
    }
    if not weights_only:
        checkpoint["callbacks"] = {}
        for cb in trainer.callbacks:
            state = cb.state_dict()
            if state:
                checkpoint["callbacks"][cb.state_key] = state
        checkpoint["optimizer_states"] = [opt.state_dict() for opt in trainer.optimizers]
        checkpoint["lr_schedulers"] = [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs]
        precision = trainer.precision_plugin
        prec_state = precision.state_dict()
        if prec_state:
            checkpoint[type(precision).__qualname__] = prec_state
        checkpoint[RNG_KEY] = _rng_to_tensors(_collect_rng_states())
    if getattr(module, "_hparams_name", None) is not None or getattr(module, "_hparams", None):
        checkpoint["hparams_name"] = getattr(module, "_hparams_name", None)
        checkpoint["hyper_parameters"] = _plain(module.hparams)
    dm = trainer.datamodule
    if dm is not None:
        if getattr(dm, "_hparams", None):
            checkpoint["datamodule_hparams_name"] = getattr(dm, "_hparams_name", None)
            checkpoint["datamodule_hyper_parameters"] = _plain(dm.hparams)
        dm_state = dm.state_dict()
        if dm_state:
            checkpoint[type(dm).__qualname__] = dm_state
    if not weights_only:
        trainer._dispatch.call_callbacks("on_save_checkpoint", checkpoint)
    trainer._call_module("on_save_checkpoint", checkpoint)
    if dm is not None:
        dm.on_save_checkpoint(checkpoint)
    return checkpoint


def _plain(hparams: Any) -> Any:
    """hparams as a plain dict (AttributeDict is a dict subclass; plain dicts load with weights_only)."""
    if isinstance(hparams, dict):
        return {k: _plain(v) for k, v in hparams.items()}
    if hasattr(hparams, "items") and not isinstance(hparams, torch.Tensor):
        return {k: _plain(v) for k, v in hparams.items()}
    return hparams


def _rng_to_tensors(states: dict[str, Any]) -> dict[str, Any]:
    """RNG states in a form ``torch.load(weights_only=True)`` reads without any allow-list."""
    out = dict(states)
    if "numpy" in out:
        name, keys, pos, has_gauss, cached = out["numpy"]
        out["numpy"] = [name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
    if "python" in out:
        version, internal, gauss = out["python"]
        out["python"] = [version, torch.tensor(internal, dtype=torch.int64), gauss]
    return out


def _rng_from_tensors(states: dict[str, Any]) -> dict[str, Any]:
    out = dict(states)
    if "numpy" in out and isinstance(out["numpy"], (list, tuple)) and isinstance(out["numpy"][1], torch.Tensor):
        import numpy as np

        name, keys, pos, has_gauss, cached = out["numpy"]
        out["numpy"] = (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    if "python" in out and isinstance(out["python"][1], torch.Tensor):
        version, internal, gauss = out["python"]
        out["python"] = (version, tuple(int(x) for x in internal.tolist()), gauss)
    return out


def _save_checkpoint(trainer: "Trainer", filepath: Union[str, os.PathLike], weights_only: bool = False) -> None:
    """Dump the state and write it atomically on global rank zero; every rank waits for the write."""
    checkpoint = _dump_checkpoint(trainer, weights_only)
    if trainer.is_global_zero:
        _atomic_torch_save(checkpoint, filepath)
    trainer.strategy.barrier("save_checkpoint")


def _atomic_torch_save(obj: Any, filepath: Union[str, os.PathLike]) -> None:
    from featherlight.utilities.io import atomic_write

    filepath = os.fspath(filepath)
    directory = os.path.dirname(os.path.abspath(filepath))
    os.makedirs(directory, exist_ok=True)
    atomic_write(filepath, lambda f: torch.save(obj, f))


# ------------------------------------------------------------------------------------------- reading
def _safe_globals() -> list:
    """Types our own and common user checkpoints hold beyond tensors: NumPy arrays (RNG states)."""
    out: list = []
    try:
        import numpy as np

        out += [np.ndarray, np.dtype, type(np.dtype("uint32")), type(np.dtype("float64")),
                type(np.dtype("int64")), type(np.dtype("float32"))]
        try:
            from numpy._core import multiarray  # numpy >= 2
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core import multiarray  # type: ignore[no-redef]
        out += [multiarray._reconstruct, multiarray.scalar]
    except ImportError:
        pass
    from argparse import Namespace

    from featherlight.utilities.parsing import AttributeDict

    out += [AttributeDict, Namespace]
    return out


def _load_checkpoint_file(path: Union[str, os.PathLike, IO[bytes]], map_location: Any = None,
                          weights_only: bool = True) -> dict[str, Any]:
    """Read a checkpoint. With ``weights_only=True`` (default) no code from the file can run.

    Raises ``FileNotFoundError`` for a missing path and :class:`CheckpointError` for a truncated or
    corrupt file, or one that needs arbitrary unpickling (naming ``weights_only=False`` as the opt-in).
    """
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "<stream>")
    if isinstance(path, (str, os.PathLike)) and not os.path.exists(path):
        raise FileNotFoundError(f"Checkpoint file not found: {name!r}. Check the path (or use ckpt_path='last').")
    try:
        if weights_only:
            with torch.serialization.safe_globals(_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)
        return torch.load(path, map_location=map_location, weights_only=False)
    except pickle.UnpicklingError as err:
        message = str(err)
        if "weights_only" in message or "Unsupported global" in message:
            detail = message.split("\n")[0][:300]
            raise CheckpointError(
                f"Refusing to load {name!r}: it holds Python objects that can only be restored by executing code "
                f"from the file ({detail}). If you trust where it came from, opt in explicitly with "
                "`weights_only=False` (e.g. `Model.load_from_checkpoint(path, weights_only=False)` or "
                "`trainer.fit(..., ckpt_path=path, weights_only=False)`)."
            ) from None
        raise CheckpointError(f"Checkpoint {name!r} is corrupt or truncated: {message[:200]}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise CheckpointError(
            f"Checkpoint {name!r} is corrupt or truncated and cannot be read ({type(err).__name__}: "
            f"{str(err)[:200]}). Use an earlier checkpoint."
        ) from None


def _resolve_ckpt_path(trainer: "Trainer", ckpt_path: Any, fn: Any) -> Optional[str]:
    """``"last"``, ``"best"`` or a path, resolved to an existing file (or None with a warning for "last")."""
    if ckpt_path == "best":
        cb = trainer.checkpoint_callback
        if cb is None or not getattr(cb, "best_model_path", ""):
            raise ValueError(
                f'`.{fn.value}(ckpt_path="best")` is set but there is no best checkpoint: no `ModelCheckpoint` '
                "has saved one yet (set `monitor=` to track the best model, or pass a path)."
            )
        return cb.best_model_path
    if ckpt_path == "last":
        candidates = []
        for cb in trainer.checkpoint_callbacks:
            if getattr(cb, "last_model_path", ""):
                candidates.append(cb.last_model_path)
            dirpath = getattr(cb, "dirpath", None)
            if dirpath and os.path.isdir(dirpath):
                candidates += glob.glob(os.path.join(dirpath, "*.ckpt"))
        from featherlight.trainer.interrupt import _checkpoint_path

        candidates.append(_checkpoint_path(trainer))  # where a signal-interrupted run saved itself
        candidates = sorted({c for c in candidates if os.path.isfile(c)}, key=os.path.getmtime, reverse=True)
        for candidate in candidates:
            try:
                _load_checkpoint_file(candidate, map_location="cpu")
            except CheckpointError as err:
                rank_zero_warn(f"Skipping unreadable checkpoint while resolving ckpt_path='last': {err}")
                continue
            if candidate != candidates[0]:
                rank_zero_warn(f"ckpt_path='last': the newest checkpoint is unreadable; resuming from {candidate!r}.")
            return candidate
        rank_zero_warn(f'`.{fn.value}(ckpt_path="last")` is set, but there is no last checkpoint available. '
                       "No checkpoint will be loaded.")
        return None
    path = os.fspath(ckpt_path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path!r}. Check `ckpt_path`.")
    return path


def _restore_module_and_callbacks(trainer: "Trainer", path: str) -> dict[str, Any]:
    """Load ``path`` and restore the module's weights, the datamodule and the callbacks (before
    ``configure_optimizers``, as Lightning does); returns the checkpoint for the training state."""
    checkpoint = _load_checkpoint_file(path, map_location="cpu", weights_only=getattr(trainer, "_weights_only", True))
    module = trainer.lightning_module
    trainer._call_module("on_load_checkpoint", checkpoint)
    _load_module_state(module, checkpoint["state_dict"], module.strict_loading, path)
    dm = trainer.datamodule
    if dm is not None:
        key = type(dm).__qualname__
        if key in checkpoint:
            dm.load_state_dict(checkpoint[key])
        dm.on_load_checkpoint(checkpoint)
    trainer._dispatch.call_callbacks("on_load_checkpoint", checkpoint)
    states = checkpoint.get("callbacks", {})
    for cb in trainer.callbacks:
        state = states.get(cb.state_key, states.get(getattr(cb, "_legacy_state_key", None)))
        if state:
            cb.load_state_dict(state)
    return checkpoint


def _restore_training_state(trainer: "Trainer", checkpoint: dict[str, Any], path: str) -> None:
    """Optimizers, schedulers, precision, loop position and RNG states (after ``on_fit_start``)."""
    optimizer_states = checkpoint.get("optimizer_states")
    if optimizer_states is None:
        raise KeyError(
            f"Trying to restore optimizer state but checkpoint {path!r} contains only the model (saved with "
            "`weights_only=True`). Load the weights with `Model.load_from_checkpoint` and fit without `ckpt_path`."
        )
    for opt, state in zip(trainer.optimizers, optimizer_states):
        opt.load_state_dict(state)
        _optimizer_state_to_device(opt, trainer.strategy.root_device)
    for cfg, state in zip(trainer.lr_scheduler_configs, checkpoint.get("lr_schedulers", [])):
        cfg.scheduler.load_state_dict(state)
    precision = trainer.precision_plugin
    if type(precision).__qualname__ in checkpoint:
        precision.load_state_dict(checkpoint[type(precision).__qualname__])
    trainer._loop._restore_checkpoint_state(checkpoint, trainer)
    if RNG_KEY in checkpoint:
        from featherlight.utilities.seed import _set_rng_states

        _set_rng_states(_rng_from_tensors(checkpoint[RNG_KEY]))
    rank_zero_info(f"Restored all states from the checkpoint at {path}")


def _optimizer_state_to_device(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for k, v in state.items():
            # `step` stays on CPU for optimizers that keep it there (Adam's capturable=False)
            if isinstance(v, torch.Tensor) and k != "step":
                state[k] = v.to(device)


def _match_compiled_keys(module: torch.nn.Module, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints hold plain names; a module with ``torch.compile``d parts expects ``_orig_mod.`` in them."""
    own = [k for k in module.state_dict() if "_orig_mod." in k]
    if not own:
        return state_dict
    plain_to_own = {k.replace("_orig_mod.", ""): k for k in own}
    return type(state_dict)((plain_to_own.get(k, k), v) for k, v in state_dict.items())


def _load_module_state(module: torch.nn.Module, state_dict: dict[str, Any], strict: bool, path: Any) -> None:
    keys = module.load_state_dict(_match_compiled_keys(module, state_dict), strict=False)
    missing, unexpected = list(keys.missing_keys), list(keys.unexpected_keys)
    if not (missing or unexpected):
        return
    detail = ""
    if missing:
        detail += f"\n  missing keys (in the model, not in the checkpoint): {missing[:10]}{' ...' if len(missing) > 10 else ''}"
    if unexpected:
        detail += f"\n  unexpected keys (in the checkpoint, not in the model): {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
    if strict:
        raise RuntimeError(
            f"The checkpoint {path!r} does not match {type(module).__name__}:{detail}\nFix the model definition, or "
            "load with `strict=False` (module attribute `strict_loading = False` for trainer resumes)."
        )
    rank_zero_warn(f"Loaded {path!r} with strict=False; keys that did not match:{detail}")


# ------------------------------------------------------------------------------------------- load_from_checkpoint
def _instantiate(cls: type, hparams: dict[str, Any], path: Any) -> Any:
    params = inspect.signature(cls.__init__).parameters
    accepts_kwargs = any(p.kind == p.VAR_KEYWORD for p in params.values())
    kwargs = hparams if accepts_kwargs else {k: v for k, v in hparams.items() if k in params}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(
            f"Could not rebuild {cls.__name__} from the hyperparameters saved in {path!r} ({err}). Saved: "
            f"{sorted(hparams)}; {cls.__name__}.__init__ takes {[p for p in params if p != 'self']}. Pass the "
            f"missing or renamed arguments to `{cls.__name__}.load_from_checkpoint(path, name=value)`."
        ) from None


def _read_hparams(checkpoint: dict[str, Any], key: str, hparams_file: Any, overrides: dict[str, Any]) -> dict:
    hparams = dict(checkpoint.get(key) or {})
    if hparams_file is not None:
        from featherlight.core.saving import load_hparams_from_yaml

        ext = os.fspath(hparams_file).rsplit(".", 1)[-1].lower()
        if ext not in ("yaml", "yml", "csv"):
            raise ValueError(f"`hparams_file` must be a .yaml file, got {hparams_file!r}.")
        hparams.update(load_hparams_from_yaml(hparams_file))
    hparams.update(overrides)
    return hparams


def _load_module_from_checkpoint(cls: type, path: Any, map_location: Any, hparams_file: Any,
                                 strict: Optional[bool], weights_only: bool = True, **kwargs: Any) -> Any:
    checkpoint = _load_checkpoint_file(path, map_location=map_location or "cpu", weights_only=weights_only)
    hparams = _read_hparams(checkpoint, "hyper_parameters", hparams_file, kwargs)
    model = _instantiate(cls, hparams, path)
    model.on_load_checkpoint(checkpoint)
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"{path!r} has no 'state_dict': it is not a model checkpoint.")
    strict = model.strict_loading if strict is None else strict
    _load_module_state(model, checkpoint["state_dict"], strict, path)
    device = _device_of(map_location)
    if device is not None:
        model.to(device)
    return model


def _device_of(map_location: Any) -> Optional[torch.device]:
    if isinstance(map_location, (str, torch.device)):
        return torch.device(map_location)
    if isinstance(map_location, dict) and len(set(map_location.values())) == 1:
        return torch.device(next(iter(map_location.values())))
    return None


def _load_datamodule_from_checkpoint(cls: type, path: Any, map_location: Any, hparams_file: Any,
                                     weights_only: bool = True, **kwargs: Any) -> Any:
    checkpoint = _load_checkpoint_file(path, map_location=map_location or "cpu", weights_only=weights_only)
    hparams = _read_hparams(checkpoint, "datamodule_hyper_parameters", hparams_file, kwargs)
    dm = _instantiate(cls, hparams, path)
    key = cls.__qualname__
    if key in checkpoint:
        dm.load_state_dict(checkpoint[key])
    return dm
