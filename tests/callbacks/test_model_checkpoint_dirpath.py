"""A checkpoint directory that cannot hold checkpoints is refused when the fit starts, not when the first save fails
after an epoch of training."""
import os

import pytest

import featherlight as L
from featherlight.callbacks import ModelCheckpoint
from featherlight.demos.boring_classes import BoringModel


class Recorder(BoringModel):
    trained = False

    def on_train_start(self):
        type(self).trained = True


def _fit(callback, model=None, **kwargs):
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback], **kwargs)
    model = model or Recorder()
    Recorder.trained = False
    trainer.fit(model)
    return trainer


def test_dirpath_that_is_a_file_is_refused_before_training(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match=r"is an existing file, not a directory.*ModelCheckpoint\(dirpath"):
        _fit(ModelCheckpoint(dirpath=afile))
    assert not Recorder.trained
    assert afile.read_text() == "not a directory"


def test_dirpath_below_a_file_is_refused_before_training(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(NotADirectoryError, match=r"afile' is an existing file"):
        _fit(ModelCheckpoint(dirpath=afile / "checkpoints"))
    assert not Recorder.trained


def test_default_root_dir_that_is_a_file_is_refused_before_training(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(NotADirectoryError, match=r"default_root_dir"):
        _fit(ModelCheckpoint(), default_root_dir=afile)
    assert not Recorder.trained


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_dirpath_in_a_read_only_directory_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match=r"not writable"):
            _fit(ModelCheckpoint(dirpath=locked / "checkpoints"))
    finally:
        locked.chmod(0o700)


def test_new_nested_dirpath_is_accepted_and_created_at_the_first_save(tmp_path):
    dirpath = tmp_path / "a" / "b" / "checkpoints"
    _fit(ModelCheckpoint(dirpath=dirpath))
    assert Recorder.trained and (dirpath / "epoch=0-step=2.ckpt").is_file()


def test_a_callback_that_never_saves_is_not_checked(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    _fit(ModelCheckpoint(dirpath=afile, save_top_k=0))
    assert Recorder.trained


def test_validate_does_not_check_the_dirpath(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ModelCheckpoint(dirpath=afile)])
    trainer.validate(BoringModel(), verbose=False)


def test_remote_dirpath_is_left_to_the_filesystem(tmp_path):
    pytest.importorskip("fsspec")
    callback = ModelCheckpoint(dirpath="memory://featherlight-dirpath-check/checkpoints")
    _fit(callback)
    assert Recorder.trained
    assert callback.best_model_path.startswith("memory://")
