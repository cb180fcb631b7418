import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import featherlight as L
from featherlight.callbacks import BasePredictionWriter
from featherlight.utilities.exceptions import MisconfigurationException


class IndexDataset(Dataset):
    """Sample ``i`` is the float tensor ``[i]``: a batch's content reveals its dataset indices."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i)])


def make_module(base):
    class Doubler(base):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def forward(self, x):
            return self.layer(x)

        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return batch * 2

    return Doubler


def make_writer(base, interval):
    class Recorder(base):
        def __init__(self):
            super().__init__(interval)
            self.batches = []
            self.epochs = []

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
            self.batches.append((prediction.flatten().tolist(), list(batch_indices), batch.flatten().tolist(),
                                 batch_idx, dataloader_idx))

        def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
            self.epochs.append((predictions, batch_indices))

    return Recorder()


def predict(writer, loaders, **kwargs):
    trainer = L.Trainer(callbacks=[writer], logger=False, enable_progress_bar=False, enable_model_summary=False)
    return trainer.predict(make_module(L.LightningModule)(), loaders, **kwargs)


def test_batch_interval_with_true_indices():
    writer = make_writer(BasePredictionWriter, "batch")
    loader = DataLoader(IndexDataset(10), batch_size=3, shuffle=True)
    original_sampler = loader.batch_sampler.sampler
    predict(writer, loader)
    assert len(writer.batches) == 4 and writer.epochs == []
    for prediction, indices, batch, batch_idx, dataloader_idx in writer.batches:
        assert indices == [int(v) for v in batch]  # the recorded indices are the samples of this batch
        assert prediction == [2 * v for v in batch]
        assert dataloader_idx == 0
    assert sorted(i for b in writer.batches for i in b[1]) == list(range(10))
    assert loader.batch_sampler.sampler is original_sampler  # restored after predict


def test_an_iterable_dataset_has_no_indices():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(torch.arange(6.0).reshape(6, 1))

    writer = make_writer(BasePredictionWriter, "batch")
    predict(writer, DataLoader(Stream(), batch_size=2))
    assert [b[1] for b in writer.batches] == [[], [], []]  # no sampler position passed off as a dataset index


def test_indices_exact_with_worker_processes():
    writer = make_writer(BasePredictionWriter, "batch")
    loader = DataLoader(IndexDataset(23), batch_size=4, shuffle=True, num_workers=2)
    predict(writer, loader)
    for _, indices, batch, _, _ in writer.batches:
        assert indices == [int(v) for v in batch]


def test_epoch_interval_with_two_dataloaders():
    writer = make_writer(BasePredictionWriter, "epoch")
    loaders = [DataLoader(IndexDataset(5), batch_size=2), DataLoader(IndexDataset(3), batch_size=2)]
    predict(writer, loaders)
    assert writer.batches == []
    (predictions, indices), = writer.epochs
    assert len(predictions) == 2 and [len(p) for p in predictions] == [3, 2]
    assert indices == [[[0, 1], [2, 3], [4]], [[0, 1], [2]]]
    assert torch.equal(predictions[1][1], torch.tensor([[4.0]]))


def test_single_dataloader_predictions_are_flat_and_both_intervals():
    writer = make_writer(BasePredictionWriter, "batch_and_epoch")
    predict(writer, DataLoader(IndexDataset(4), batch_size=2))
    assert len(writer.batches) == 2
    (predictions, indices), = writer.epochs
    assert len(predictions) == 2 and torch.equal(predictions[0], torch.tensor([[0.0], [2.0]]))
    assert indices == [[[0, 1], [2, 3]]]


def test_return_predictions_false_gives_no_predictions():
    writer = make_writer(BasePredictionWriter, "epoch")
    out = predict(writer, DataLoader(IndexDataset(4), batch_size=2), return_predictions=False)
    assert out is None
    (predictions, indices), = writer.epochs
    assert list(predictions) == [] and indices == [[[0, 1], [2, 3]]]


def test_unknown_indices_without_a_batch_sampler():
    writer = make_writer(BasePredictionWriter, "batch_and_epoch")
    predict(writer, DataLoader(IndexDataset(3), batch_size=None))
    assert [b[1] for b in writer.batches] == [[], [], []]
    assert writer.epochs[0][1] == [[]]


def test_invalid_interval_and_abstract_methods():
    with pytest.raises(MisconfigurationException, match="write_interval"):
        BasePredictionWriter("step")
    writer = BasePredictionWriter("batch")
    with pytest.raises(NotImplementedError):
        predict(writer, DataLoader(IndexDataset(2), batch_size=1))


@pytest.mark.parametrize("interval", ["batch", "epoch", "batch_and_epoch"])
def test_matches_lightning(interval):
    pl = pytest.importorskip("lightning.pytorch")
    loaders = lambda: [DataLoader(IndexDataset(7), batch_size=3), DataLoader(IndexDataset(4), batch_size=2)]  # noqa

    ours = make_writer(BasePredictionWriter, interval)
    predict(ours, loaders())

    theirs = make_writer(pl.callbacks.BasePredictionWriter, interval)
    trainer = pl.Trainer(callbacks=[theirs], logger=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1)
    trainer.predict(make_module(pl.LightningModule)(), loaders())

    assert ours.batches == theirs.batches
    assert len(ours.epochs) == len(theirs.epochs)
    for (p1, i1), (p2, i2) in zip(ours.epochs, theirs.epochs):
        assert i1 == i2
        assert [[t.tolist() for t in dl] for dl in p1] == [[t.tolist() for t in dl] for dl in p2]
