"""Freeze parts of a model before training and unfreeze them on a schedule (transfer learning)."""
from __future__ import annotations

import logging
from collections.abc import Generator, Iterable
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from torch.nn import Module, ModuleDict
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from featherlight.callbacks.callback import Callback
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule

log = logging.getLogger(__name__)

_Modules = Union[Module, Iterable[Union[Module, Iterable]]]


def multiplicative(epoch: int) -> float:
    """The default ``lambda_func`` of :class:`BackboneFinetuning`: double the backbone's LR every epoch."""
    return 2.0


class BaseFinetuning(Callback):
    """Base class of finetuning callbacks: freeze modules before training, unfreeze them later.

    Override :meth:`freeze_before_training` (called from ``setup``, before ``configure_optimizers``, so
    the optimizer can be built from the trainable parameters only) and :meth:`finetune_function`
    (called at the start of every training epoch, for every optimizer), typically with
    :meth:`unfreeze_and_add_param_group` to unfreeze modules and hand their parameters to the
    optimizer as a new param group.

    The param groups the callback adds are saved in checkpoints and recreated when training resumes,
    before the optimizer state is loaded.

    Example::

        class FeatureExtractorFreezeUnfreeze(BaseFinetuning):
            def __init__(self, unfreeze_at_epoch=10):
                super().__init__()
                self._unfreeze_at_epoch = unfreeze_at_epoch

            def freeze_before_training(self, pl_module):
                self.freeze(pl_module.feature_extractor)

            def finetune_function(self, pl_module, current_epoch, optimizer):
                if current_epoch == self._unfreeze_at_epoch:
                    self.unfreeze_and_add_param_group(modules=pl_module.feature_extractor, optimizer=optimizer)

    Build the optimizer from the trainable parameters, e.g.
    ``Adam(filter(lambda p: p.requires_grad, self.parameters()))``.
    """

    _groups_restored = False

    def __init__(self) -> None:
        # per optimizer index, its param groups with parameter *names* instead of tensors
        self._internal_optimizer_metadata: dict[int, list[dict[str, Any]]] = {}
        self._restarting = False
        self._groups_restored = False

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"internal_optimizer_metadata": self._internal_optimizer_metadata}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # already applied from `on_load_checkpoint` (the trainer calls it first): nothing left to redo
        self._restarting = not self._groups_restored
        self._groups_restored = False
        if "internal_optimizer_metadata" in state_dict:
            self._internal_optimizer_metadata = state_dict["internal_optimizer_metadata"]
        else:  # the older format: the metadata itself
            self._internal_optimizer_metadata = state_dict  # type: ignore[assignment]

    def on_load_checkpoint(self, trainer: "Trainer", pl_module: "LightningModule", checkpoint: dict[str, Any]) -> None:
        # the trainer loads the optimizer states right after the callbacks' states: the optimizers must
        # have the param groups this callback added before that, so rebuild them now (and not again in
        # `on_fit_start`, which would overwrite the learning rates just loaded)
        if trainer.state.fn != "fit" or not trainer.optimizers:
            return
        state = (checkpoint.get("callbacks") or {}).get(self.state_key)
        if not state:
            return
        self.load_state_dict(state)
        self._restore_param_groups(trainer, pl_module)
        self._groups_restored = True

    def on_fit_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self._restarting:
            self._restore_param_groups(trainer, pl_module)

    def _restore_param_groups(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Give each optimizer its saved param groups; the parameters of the groups the callback added
        were trainable when saved, so they are made trainable again (``freeze_before_training`` froze them)."""
        if self._internal_optimizer_metadata:
            named = dict(pl_module.named_parameters())
            unfrozen: set[int] = set()
            for opt_idx, optimizer in enumerate(trainer.optimizers):
                groups = self._internal_optimizer_metadata.get(opt_idx)
                if groups is None:
                    continue
                own = len(optimizer.param_groups)
                optimizer.param_groups = self._apply_mapping_to_param_groups(groups, named)
                for group in optimizer.param_groups[own:]:
                    for param in group["params"]:
                        param.requires_grad = True
                        unfrozen.add(id(param))
            for module in pl_module.modules():
                if isinstance(module, _BatchNorm) and any(id(p) in unfrozen for p in module.parameters(recurse=False)):
                    module.track_running_stats = True
        self._restarting = False

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def flatten_modules(modules: _Modules) -> list[Module]:
        """The leaf modules of ``modules`` (a module, a ``ModuleDict`` or an iterable of them), plus the
        modules that own parameters directly."""
        if isinstance(modules, ModuleDict):
            modules = modules.values()
        if isinstance(modules, Module):
            candidates: Iterable[Module] = modules.modules()
        else:
            found: list[Module] = []
            for module in modules:
                found.extend(BaseFinetuning.flatten_modules(module))
            candidates = found
        return [m for m in candidates if not list(m.children()) or m._parameters]

    @staticmethod
    def filter_params(modules: _Modules, train_bn: bool = True, requires_grad: bool = True) -> Generator:
        """Yield the parameters of ``modules`` whose ``requires_grad`` equals ``requires_grad``
        (skipping BatchNorm layers when ``train_bn`` is False)."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm) and not train_bn:
                continue
            for param in module.parameters(recurse=False):
                if param.requires_grad == requires_grad:
                    yield param

    @staticmethod
    def make_trainable(modules: _Modules) -> None:
        """Unfreeze the parameters of ``modules`` (BatchNorm layers track running statistics again)."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm):
                module.track_running_stats = True
            for param in module.parameters(recurse=False):
                param.requires_grad = True

    @staticmethod
    def freeze_module(module: Module) -> None:
        """Freeze the parameters owned by ``module`` itself (a BatchNorm also stops tracking statistics)."""
        if isinstance(module, _BatchNorm):
            module.track_running_stats = False
        for param in module.parameters(recurse=False):
            param.requires_grad = False

    @staticmethod
    def freeze(modules: _Modules, train_bn: bool = True) -> None:
        """Freeze ``modules``; with ``train_bn`` their BatchNorm layers stay trainable."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm) and train_bn:
                BaseFinetuning.make_trainable(module)
            else:
                BaseFinetuning.freeze_module(module)

    @staticmethod
    def filter_on_optimizer(optimizer: Optimizer, params: Iterable) -> list:
        """The parameters of ``params`` that are not in any param group of ``optimizer`` yet.

        Membership is by identity (Lightning compares values with ``torch.equal``, which also drops a
        new parameter that merely equals one already in the optimizer, e.g. two zero-initialised biases).
        """
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        kept, skipped = [], 0
        for param in params:
            if id(param) in present:
                skipped += 1
            else:
                kept.append(param)
        if skipped:
            rank_zero_warn(
                "The provided params to be frozen already exist within another group of this optimizer. Those "
                f"parameters will be skipped ({skipped} of them).\nHINT: Did you init your optimizer in "
                "`configure_optimizer` as such:\n "
                f"`{type(optimizer).__name__}(filter(lambda p: p.requires_grad, self.parameters()), ...)`"
            )
        return kept

    @staticmethod
    def unfreeze_and_add_param_group(
        modules: _Modules,
        optimizer: Optimizer,
        lr: Optional[float] = None,
        initial_denom_lr: float = 10.0,
        train_bn: bool = True,
    ) -> None:
        """Unfreeze ``modules`` and add their parameters to ``optimizer`` as a new param group.

        Args:
            modules: the module(s) to unfreeze.
            optimizer: receives the new param group.
            lr: its learning rate; by default the first group's learning rate divided by ``initial_denom_lr``.
            initial_denom_lr: see ``lr``.
            train_bn: whether BatchNorm layers are unfrozen too.
        """
        BaseFinetuning.make_trainable(modules)
        params_lr = optimizer.param_groups[0]["lr"] if lr is None else float(lr)
        denom = initial_denom_lr if lr is None else 1.0
        params = BaseFinetuning.filter_params(modules, train_bn=train_bn, requires_grad=True)
        params = BaseFinetuning.filter_on_optimizer(optimizer, params)
        if params:
            optimizer.add_param_group({"params": params, "lr": params_lr / denom})

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        self.freeze_before_training(pl_module)

    @staticmethod
    def _apply_mapping_to_param_groups(param_groups: list[dict[str, Any]], mapping: dict) -> list[dict[str, Any]]:
        out = []
        for group in param_groups:
            state = {k: v for k, v in group.items() if k != "params"}
            state["params"] = [mapping[p] for p in group["params"]]
            out.append(state)
        return out

    def _store(self, pl_module: "LightningModule", opt_idx: int, num_param_groups: int,
               current_param_groups: list[dict[str, Any]]) -> None:
        mapping = {p: name for name, p in pl_module.named_parameters()}
        if opt_idx not in self._internal_optimizer_metadata:
            self._internal_optimizer_metadata[opt_idx] = self._apply_mapping_to_param_groups(
                current_param_groups, mapping)
        elif num_param_groups != len(current_param_groups):
            self._internal_optimizer_metadata[opt_idx].extend(
                self._apply_mapping_to_param_groups(current_param_groups[num_param_groups:], mapping))

    def on_train_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        for opt_idx, optimizer in enumerate(trainer.optimizers):
            num_param_groups = len(optimizer.param_groups)
            self.finetune_function(pl_module, trainer.current_epoch, optimizer)
            self._store(pl_module, opt_idx, num_param_groups, optimizer.param_groups)

    def finetune_function(self, pl_module: "LightningModule", epoch: int, optimizer: Optimizer) -> None:
        """Override: unfreeze what should train from ``epoch`` on (called at every epoch start)."""
        raise NotImplementedError

    def freeze_before_training(self, pl_module: "LightningModule") -> None:
        """Override: freeze what should not train at first (called before ``configure_optimizers``)."""
        raise NotImplementedError


class BackboneFinetuning(BaseFinetuning):
    """Train ``pl_module.backbone`` from a given epoch on, with its own growing learning rate.

    Until ``unfreeze_backbone_at_epoch`` the backbone is frozen. At that epoch it joins the optimizer
    as a new param group with learning rate ``backbone_initial_lr`` (default: the current LR times
    ``backbone_initial_ratio_lr``). At each later epoch its LR is multiplied by
    ``lambda_func(epoch + 1)``; with ``should_align`` it never exceeds the current LR of the rest of
    the model (the optimizer's first param group).

    Args:
        unfreeze_backbone_at_epoch: epoch at which the backbone starts training.
        lambda_func: ``epoch -> factor`` for the backbone's LR at each later epoch.
        backbone_initial_ratio_lr: initial backbone LR as a fraction of the current LR.
        backbone_initial_lr: initial backbone LR (overrides the ratio).
        should_align: cap the backbone LR at the current LR.
        initial_denom_lr: passed to :meth:`unfreeze_and_add_param_group`.
        train_bn: whether the backbone's BatchNorm layers are trainable.
        verbose: log both learning rates each epoch from the unfreeze on.
        rounding: decimals of the logged learning rates.

    Raises:
        MisconfigurationException: if the module has no ``nn.Module`` attribute ``backbone``.

    Example::

        trainer = Trainer(callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=5)])
    """

    def __init__(
        self,
        unfreeze_backbone_at_epoch: int = 10,
        lambda_func: Callable = multiplicative,
        backbone_initial_ratio_lr: float = 10e-2,
        backbone_initial_lr: Optional[float] = None,
        should_align: bool = True,
        initial_denom_lr: float = 10.0,
        train_bn: bool = True,
        verbose: bool = False,
        rounding: int = 12,
    ) -> None:
        super().__init__()
        self.unfreeze_backbone_at_epoch = unfreeze_backbone_at_epoch
        self.lambda_func = lambda_func
        self.backbone_initial_ratio_lr = backbone_initial_ratio_lr
        self.backbone_initial_lr = backbone_initial_lr
        self.should_align = should_align
        self.initial_denom_lr = initial_denom_lr
        self.train_bn = train_bn
        self.verbose = verbose
        self.rounding = rounding
        self.previous_backbone_lr: Optional[float] = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "internal_optimizer_metadata": self._internal_optimizer_metadata,
            "previous_backbone_lr": self.previous_backbone_lr,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_backbone_lr = state_dict["previous_backbone_lr"]
        super().load_state_dict(state_dict)

    @staticmethod
    def _check_backbone(pl_module: "LightningModule") -> None:
        if not isinstance(getattr(pl_module, "backbone", None), Module):
            raise MisconfigurationException("The LightningModule should have a nn.Module `backbone` attribute")

    def on_fit_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._check_backbone(pl_module)
        super().on_fit_start(trainer, pl_module)

    def freeze_before_training(self, pl_module: "LightningModule") -> None:
        self._check_backbone(pl_module)
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module: "LightningModule", epoch: int, optimizer: Optimizer) -> None:
        current_lr = optimizer.param_groups[0]["lr"]
        if epoch == self.unfreeze_backbone_at_epoch:
            backbone_lr = (self.backbone_initial_lr if self.backbone_initial_lr is not None
                           else current_lr * self.backbone_initial_ratio_lr)
            self.previous_backbone_lr = backbone_lr
            self.unfreeze_and_add_param_group(
                pl_module.backbone,
                optimizer,
                backbone_lr,
                train_bn=self.train_bn,
                initial_denom_lr=self.initial_denom_lr,
            )
        elif epoch > self.unfreeze_backbone_at_epoch and self.previous_backbone_lr is not None:
            backbone_lr = self.lambda_func(epoch + 1) * self.previous_backbone_lr
            if self.should_align and backbone_lr > current_lr:
                backbone_lr = current_lr
            optimizer.param_groups[-1]["lr"] = backbone_lr
            self.previous_backbone_lr = backbone_lr
        else:
            return
        if self.verbose:
            log.info(f"Current lr: {round(current_lr, self.rounding)}, Backbone lr: {round(backbone_lr, self.rounding)}")
