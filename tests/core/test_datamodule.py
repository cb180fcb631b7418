"""LightningDataModule: from_datasets, its string form, and how it takes part in checkpoints."""
import os

import pytest
import torch
from torch.utils.data import DataLoader

from featherlight import LightningDataModule, Trainer
from featherlight.demos.boring_classes import (
    BoringDataModule,
    BoringDataModuleNoLen,
    BoringModel,
    IterableBoringDataModule,
    RandomDataset,
)


def test_from_datasets_passes_batch_size_and_num_workers_to_an_init_that_takes_them():
    class Takes(LightningDataModule):
        def __init__(self, batch_size=1, num_workers=0):
            super().__init__()
            self.batch_size, self.num_workers = batch_size, num_workers

    dm = Takes.from_datasets(RandomDataset(4, 8), batch_size=4, num_workers=0)
    assert dm.batch_size == 4
    assert dm.train_dataloader().batch_size == 4

    class TakesOther(LightningDataModule):
        def __init__(self, other, batch_size=1):
            super().__init__()
            self.other, self.batch_size = other, batch_size

    dm = TakesOther.from_datasets(RandomDataset(4, 8), batch_size=2, num_workers=3, other=5)
    assert (dm.other, dm.batch_size) == (5, 2)
    with pytest.raises(TypeError, match="other"):
        TakesOther.from_datasets(RandomDataset(4, 8), batch_size=2)

    class Anything(LightningDataModule):
        def __init__(self, **kwargs):
            super().__init__()
            self.kwargs = kwargs

    assert Anything.from_datasets(RandomDataset(4, 8), batch_size=3, num_workers=0).kwargs == {
        "batch_size": 3, "num_workers": 0}
    LightningDataModule.from_datasets(RandomDataset(4, 8), batch_size=3)  # an __init__ taking neither


def test_string_lists_the_dataset_sizes_each_hook_serves():
    dm = BoringDataModule()
    assert str(dm) == os.linesep.join(["{Train dataloader: None}", "{Validation dataloader: None}",
                                       "{Test dataloader: None}", "{Predict dataloader: None}"])
    dm.setup("fit")
    assert str(dm).splitlines()[:2] == ["{Train dataloader: size=64}", "{Validation dataloader: size=64}"]
    nolen = BoringDataModuleNoLen()
    nolen.setup("fit")
    assert str(nolen).splitlines()[0] == "{Train dataloader: size=NA}"
    several = IterableBoringDataModule()
    several.setup("fit")
    assert str(several).splitlines()[0] == "{Train dataloader: 1. size=16 ; 2. size=NA}"


def test_datamodule_checkpoints_through_state_dict_only(tmp_path):
    calls = []

    class DM(BoringDataModule):
        def state_dict(self):
            return {"my": "state"}

        def load_state_dict(self, state_dict):
            calls.append(("load_state_dict", state_dict))

        def on_save_checkpoint(self, checkpoint):  # Lightning 2.x no longer calls these on a datamodule
            calls.append("on_save_checkpoint")

        def on_load_checkpoint(self, checkpoint):
            calls.append("on_load_checkpoint")

    flags = dict(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
                 enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer = Trainer(**flags)
    trainer.fit(BoringModel(), datamodule=DM())
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    assert torch.load(tmp_path / "c.ckpt", weights_only=True)[DM.__qualname__] == {"my": "state"}
    Trainer(**dict(flags, max_epochs=2)).fit(BoringModel(), datamodule=DM(), ckpt_path=tmp_path / "c.ckpt")
    assert calls == [("load_state_dict", {"my": "state"})]


def test_loader_of_a_plain_datamodule_is_a_dataloader():
    assert isinstance(LightningDataModule.from_datasets(RandomDataset(4, 8)).train_dataloader(), DataLoader)
