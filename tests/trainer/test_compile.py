"""A LightningModule with torch.compile'd parts trains and checkpoints with plain state-dict keys."""
import pytest
import torch

import featherlight as L
from featherlight.demos.boring_classes import BoringModel


class Compiled(BoringModel):
    def __init__(self):
        super().__init__()
        # eager backend: the compile wrapper (and its `_orig_mod.` keys) without a C++ toolchain
        self.layer = torch.compile(torch.nn.Linear(32, 2), backend="eager")


def test_compiled_submodule_trains_and_checkpoints_without_orig_mod_prefix(tmp_path):
    model = Compiled()
    assert any("_orig_mod." in k for k in model.state_dict())
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model)
    path = tmp_path / "c.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert not any("_orig_mod." in k for k in ckpt["state_dict"])
    loaded = Compiled.load_from_checkpoint(path)  # plain keys go back into the compiled module
    assert torch.equal(loaded.layer.weight, model.layer.weight)
    plain = BoringModel.load_from_checkpoint(path)  # and into an uncompiled one
    assert torch.equal(plain.layer.weight, model.layer.weight)
    resumed = L.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    resumed.fit(Compiled(), ckpt_path=path)
    assert resumed.global_step == 4
