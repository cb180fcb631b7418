import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import featherlight as L
from featherlight.callbacks.checkpoint import Checkpoint
from featherlight.callbacks.on_exception_checkpoint import OnExceptionCheckpoint


class FailingModule(L.LightningModule):
    def __init__(self, fail_at_step=None):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.fail_at_step = fail_at_step

    def training_step(self, batch, batch_idx):
        if self.fail_at_step is not None and self.global_step == self.fail_at_step:
            raise RuntimeError("failure inside training_step")
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)


def _trainer(tmp_path, callbacks, **kwargs):
    opts = dict(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, default_root_dir=tmp_path)
    opts.update(kwargs)
    return L.Trainer(callbacks=callbacks, **opts)


def test_saves_on_exception(tmp_path):
    cb = OnExceptionCheckpoint(tmp_path / "exc")
    assert cb.ckpt_path == os.path.join(str(tmp_path / "exc"), "on_exception.ckpt")
    model = FailingModule(fail_at_step=5)
    trainer = _trainer(tmp_path, [cb])
    with pytest.raises(RuntimeError, match="failure inside training_step"):
        trainer.fit(model, _loader())
    assert os.listdir(tmp_path / "exc") == ["on_exception.ckpt"]
    ckpt = torch.load(cb.ckpt_path, weights_only=True)
    assert ckpt["global_step"] == 5 and ckpt["epoch"] == 1
    assert "optimizer_states" in ckpt
    # the weights are the ones at the moment of the failure
    for name, value in model.state_dict().items():
        assert torch.equal(ckpt["state_dict"][name], value)


def test_custom_filename_and_overwrite(tmp_path):
    cb = OnExceptionCheckpoint(str(tmp_path), filename="crash")
    for step in (2, 6):
        with pytest.raises(RuntimeError):
            _trainer(tmp_path, [cb]).fit(FailingModule(fail_at_step=step), _loader())
        assert torch.load(tmp_path / "crash.ckpt", weights_only=True)["global_step"] == step
    assert sorted(os.listdir(tmp_path)) == ["crash.ckpt"]


def test_resume_from_exception_checkpoint(tmp_path):
    cb = OnExceptionCheckpoint(tmp_path)
    with pytest.raises(RuntimeError):
        _trainer(tmp_path, [cb]).fit(FailingModule(fail_at_step=3), _loader())
    trainer = _trainer(tmp_path, [], max_epochs=2)
    trainer.fit(FailingModule(), _loader(), ckpt_path=cb.ckpt_path)
    assert trainer.global_step == 8


def test_nothing_written_without_exception_and_stale_file_removed(tmp_path):
    cb = OnExceptionCheckpoint(tmp_path / "exc")
    _trainer(tmp_path, [cb]).fit(FailingModule(), _loader())
    assert not os.path.exists(cb.ckpt_path)

    with pytest.raises(RuntimeError):
        _trainer(tmp_path, [cb]).fit(FailingModule(fail_at_step=1), _loader())
    assert os.path.exists(cb.ckpt_path)
    # a later run that ends normally removes the leftover of the failed one
    _trainer(tmp_path, [cb]).fit(FailingModule(), _loader())
    assert not os.path.exists(cb.ckpt_path)


def test_empty_filename_rejected(tmp_path):
    with pytest.raises(ValueError, match="must not be empty"):
        OnExceptionCheckpoint(tmp_path, filename="")


def test_is_a_checkpoint_callback(tmp_path):
    assert isinstance(OnExceptionCheckpoint(tmp_path), Checkpoint)
