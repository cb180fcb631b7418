"""configure_optimizers in every Lightning form: what is accepted, warned about and refused, with Lightning's words."""
import pytest
import torch
from torch import optim

import featherlight as L
from featherlight.core.optimizer import optimizers_and_schedulers
from featherlight.demos.boring_classes import BoringModel
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.types import LRSchedulerConfig

QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def _opt():
    return optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)


def test_unknown_forms_name_lightnings_forms():
    with pytest.raises(MisconfigurationException, match="Unknown configuration for model optimizers"):
        optimizers_and_schedulers(1)
    opt = _opt()
    with pytest.raises(MisconfigurationException, match="Unknown configuration for model optimizers"):
        optimizers_and_schedulers([{"optimizer": opt}, opt])


def test_scheduler_dict_rules():
    opt = _opt()
    step = optim.lr_scheduler.StepLR(opt, 1)
    with pytest.warns(RuntimeWarning, match=r"Found unsupported keys in the lr scheduler dict: \{.+\}"):
        _, configs = optimizers_and_schedulers({"optimizer": opt, "lr_scheduler": {"scheduler": step, "foo": 1}})
    assert configs == [LRSchedulerConfig(step)]  # the dataclass users import from utilities.types
    with pytest.warns(RuntimeWarning, match="Found unsupported keys in the optimizer configuration"):
        optimizers_and_schedulers({"optimizer": opt, "extra": 1})
    with pytest.raises(MisconfigurationException, match='The lr scheduler dict must have the key "scheduler"'):
        optimizers_and_schedulers({"optimizer": opt, "lr_scheduler": {"interval": "step"}})
    with pytest.raises(MisconfigurationException, match='The "interval" key in lr scheduler dict must be "step" or '
                                                        '"epoch" but is "weekly"'):
        optimizers_and_schedulers({"optimizer": opt, "lr_scheduler": {"scheduler": step, "interval": "weekly"}})
    other = optim.lr_scheduler.StepLR(_opt(), 1)
    with pytest.raises(MisconfigurationException, match="attached with an optimizer that wasn't returned"):
        optimizers_and_schedulers(([opt], [other]))
    with pytest.warns(RuntimeWarning, match="A `OneCycleLR` scheduler is using 'interval': 'epoch'"):
        optimizers_and_schedulers(([opt], [optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=10)]))


def test_plateau_needs_a_monitor_only_in_automatic_optimization():
    opt = _opt()
    plateau = optim.lr_scheduler.ReduceLROnPlateau(opt)
    with pytest.raises(MisconfigurationException, match="must include a monitor when a `ReduceLROnPlateau`"):
        optimizers_and_schedulers(([opt], [plateau]))
    _, configs = optimizers_and_schedulers(([opt], [plateau]), automatic=False)
    assert configs[0].scheduler is plateau
    with pytest.warns(RuntimeWarning, match=r"contains the key\(s\) \['monitor'\], but the keys will be ignored"):
        _, configs = optimizers_and_schedulers(
            ([opt], [{"scheduler": plateau, "monitor": "loss", "interval": "step"}]), automatic=False)
    assert configs[0].interval == "step"


def test_none_warns_and_trains_with_a_no_op_optimizer():
    model = BoringModel()
    model.configure_optimizers = lambda: None
    before = model.layer.weight.detach().clone()
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, **QUIET)
    with pytest.warns(UserWarning, match="`LightningModule.configure_optimizers` returned `None`, this fit will run "
                                         "with no optimizer"):
        trainer.fit(model)
    assert torch.equal(model.layer.weight, before)
    assert repr(trainer.optimizers[0]) == "No Optimizer"


def test_several_optimizers_in_automatic_optimization_is_lightnings_runtime_error():
    class Model(BoringModel):
        def training_step(self, batch, batch_idx, optimizer_idx):
            return super().training_step(batch, batch_idx)

    with pytest.raises(RuntimeError, match="Remove the `optimizer_idx` argument from `training_step`"):
        L.Trainer(max_epochs=1, **QUIET).fit(Model())


@pytest.mark.parametrize("complete_epoch", [True, False])
def test_plateau_strictness_and_epochs_cut_short(complete_epoch):
    model = BoringModel()
    opt = optim.Adam(model.parameters())
    plateau = optim.lr_scheduler.ReduceLROnPlateau(opt)
    model.configure_optimizers = lambda: {"optimizer": opt,
                                          "lr_scheduler": {"scheduler": plateau, "monitor": "giraffe", "strict": True}}
    flags = dict(max_epochs=1, limit_val_batches=0, **QUIET)
    if complete_epoch:
        with pytest.raises(MisconfigurationException, match="ReduceLROnPlateau conditioned on metric giraffe which "
                                                            "is not available. Available metrics are:"):
            L.Trainer(limit_train_batches=2, **flags).fit(model)
    else:  # max_steps ends the epoch early: the epoch-interval plateau scheduler is not stepped (as in Lightning)
        L.Trainer(limit_train_batches=4, max_steps=1, **flags).fit(model)
    model.configure_optimizers = lambda: {"optimizer": opt,
                                          "lr_scheduler": {"scheduler": plateau, "monitor": "giraffe", "strict": False}}
    with pytest.warns(RuntimeWarning, match="which is not available but strict is set to `False`. Skipping learning"):
        L.Trainer(limit_train_batches=2, **flags).fit(model)


def test_toggle_optimizer_leaves_parameters_of_no_optimizer_alone():
    class Model(BoringModel):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.free = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
            self.automatic_optimization = False
            self.checked = False

        def configure_optimizers(self):
            return optim.SGD(self.a.parameters(), lr=0.1), optim.SGD(self.b.parameters(), lr=0.1)

        def training_step(self, batch, batch_idx):
            opt_a, opt_b = self.optimizers()
            with self.toggled_optimizer(opt_a):
                assert all(p.requires_grad for p in self.a.parameters())
                assert not any(p.requires_grad for p in self.b.parameters())
                assert all(p.requires_grad for p in self.free.parameters())  # in no optimizer: untouched
            assert all(p.requires_grad for p in self.b.parameters())
            self.checked = True

    model = Model()
    L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, **QUIET).fit(model)
    assert model.checked


def test_freeze_and_unfreeze_return_the_module():
    model = BoringModel()
    assert model.freeze() is model and not model.training
    assert model.unfreeze() is model and model.training
