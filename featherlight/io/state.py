"""State dicts in and out of checkpoints.

A module's: loaded with errors that list the keys that did not match (``load_module_state``), with the names
``torch.compile`` adds (``_orig_mod.``) removed on the way out and put back on the way in. An optimizer's, in the
two layouts checkpoints use: keyed by position (``Optimizer.state_dict``) or by parameter name
(``torch.distributed.checkpoint.state_dict``, i.e. FSDP checkpoints), and moved to a device.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from featherlight.utilities.exceptions import CheckpointError
from featherlight.utilities.rank_zero import rank_zero_warn


def _param_names(module: torch.nn.Module) -> dict[int, list[str]]:
    """Every name of each parameter of ``module`` (shared parameters have several), ``_orig_mod.`` removed."""
    names: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name.replace("_orig_mod.", ""))
    return names


def _keyed_by_name(state: Any) -> bool:
    groups = state.get("param_groups") if isinstance(state, Mapping) else None
    return bool(groups) and any(isinstance(p, str) for g in groups for p in g.get("params", ()))


def optimizer_state_by_index(module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                              path: Any = None) -> dict[str, Any]:
    """An optimizer state keyed by parameter name (what ``torch.distributed.checkpoint.state_dict``'s
    ``get_optimizer_state_dict`` gives, i.e. FSDP checkpoints) keyed by position, as
    ``Optimizer.load_state_dict`` wants it. A state keyed by position is returned as it is."""
    if not _keyed_by_name(state):
        return state
    names = _param_names(module)
    saved_names = {p for g in state["param_groups"] for p in g["params"]}
    position: dict[str, int] = {}
    index = 0
    for group in optimizer.param_groups:
        for param in group["params"]:
            name = next((n for n in names.get(id(param), ()) if n in saved_names), None)
            if name is None:
                raise CheckpointError(
                    f"The optimizer state in {path!r} is keyed by parameter name and has no entry for the "
                    f"optimizer's parameter {names.get(id(param), ['<not in the module>'])[0]!r}: the model or "
                    "`configure_optimizers` differs from the run that saved it."
                )
            position[name] = index
            index += 1
    extra = sorted(saved_names - set(position))
    if extra:
        raise CheckpointError(
            f"The optimizer state in {path!r} has entries for parameters this optimizer does not have ({extra[:5]}): "
            "the model or `configure_optimizers` differs from the run that saved it."
        )
    by_index: dict[str, Any] = {
        "state": {position[n]: v for n, v in state.get("state", {}).items() if n in position},
        "param_groups": [dict(g, params=[position[p] for p in g["params"]]) for g in state["param_groups"]],
    }
    return by_index


def optimizer_state_by_name(module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             state: dict[str, Any]) -> dict[str, Any]:
    """The reverse of :func:`optimizer_state_by_index`: a state keyed by position (``Optimizer.state_dict``, e.g.
    a single-process checkpoint) keyed by parameter name, for ``set_optimizer_state_dict``."""
    if _keyed_by_name(state) or not state.get("param_groups"):
        return state
    names = _param_names(module)
    by_position = [names[id(p)][0] for g in optimizer.param_groups for p in g["params"]]
    saved = [int(i) for g in state["param_groups"] for i in g["params"]]
    if len(saved) != len(by_position) or (saved and max(saved) >= len(by_position)):
        raise CheckpointError(
            f"The saved optimizer state covers {len(saved)} parameters, the optimizer has {len(by_position)}: the "
            "model or `configure_optimizers` differs from the run that saved it."
        )
    return {
        "state": {by_position[int(i)]: v for i, v in state.get("state", {}).items()},
        "param_groups": [dict(g, params=[by_position[int(i)] for i in g["params"]]) for g in state["param_groups"]],
    }


def optimizer_state_to_device(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for k, v in state.items():
            # `step` stays on CPU for optimizers that keep it there (Adam's capturable=False)
            if isinstance(v, torch.Tensor) and k != "step":
                state[k] = v.to(device)


def strip_compile_prefix(state_dict: dict[str, Any]) -> dict[str, Any]:
    """torch.compile wraps modules in ``_orig_mod``; checkpoints keep the plain names."""
    if not any("_orig_mod." in k for k in state_dict):
        return state_dict
    return type(state_dict)((k.replace("_orig_mod.", ""), v) for k, v in state_dict.items())


def match_compiled_keys(module: torch.nn.Module, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints hold plain names; a module with ``torch.compile``d parts expects ``_orig_mod.`` in them."""
    own = [k for k in module.state_dict() if "_orig_mod." in k]
    if not own:
        return state_dict
    plain_to_own = {k.replace("_orig_mod.", ""): k for k in own}
    return type(state_dict)((plain_to_own.get(k, k), v) for k, v in state_dict.items())


def load_module_state(module: torch.nn.Module, state_dict: dict[str, Any], strict: bool, path: Any) -> None:
    """``module.load_state_dict(state_dict, strict=strict)`` (the module's own method, so an override sees it), with
    torch's error first and what to do after it; keys that did not match a non-strict load are warned about."""
    try:
        keys = module.load_state_dict(match_compiled_keys(module, state_dict), strict=strict)
    except RuntimeError as err:  # torch's message lists the missing/unexpected keys and the shapes that differ
        raise RuntimeError(
            f"{err}\nWhile loading {path!r}: fix the model definition, or load with `strict=False` (module attribute "
            "`strict_loading = False` for trainer resumes). If the model was built with other hyperparameters than "
            "the checkpoint's, keyword arguments to `load_from_checkpoint` override the saved ones."
        ) from None
    missing, unexpected = getattr(keys, "missing_keys", None), getattr(keys, "unexpected_keys", None)
    if isinstance(missing, list) and missing:
        rank_zero_warn(f"Found keys that are in the model state dict but not in the checkpoint: {missing}")
    if isinstance(unexpected, list) and unexpected:
        rank_zero_warn(f"Found keys that are not in the model state dict but in the checkpoint: {unexpected}")
