"""The demos Lightning ships, with its names and signatures. Nothing here touches the network: datasets read small
local files, and any download attempt fails the test."""
from __future__ import annotations

import inspect
import urllib.request

import pytest
import torch

import featherlight as fl
from featherlight import demos

_TEXT = "the quick brown fox jumps over the lazy dog\nthe dog sleeps\n" * 200


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a demo tried to download something")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)


@pytest.fixture
def wikitext(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "wikitext-2.txt").write_text(_TEXT)
    return data


def _trainer(tmp_path, **kwargs):
    return fl.Trainer(default_root_dir=tmp_path, max_steps=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)


def _parameters(obj):
    return [(p.name, p.default) for p in inspect.signature(obj).parameters.values()]


def test_names_and_signatures_match_lightning():
    lightning_demos = pytest.importorskip("lightning.pytorch.demos")
    assert sorted(lightning_demos.__all__) == sorted(demos.__all__)
    for name in demos.__all__:
        ours, theirs = getattr(demos, name), getattr(lightning_demos, name)
        assert _parameters(ours) == _parameters(theirs), name
    from lightning.pytorch.demos import mnist_datamodule as their_mnist

    from featherlight.demos import mnist_datamodule as our_mnist

    assert _parameters(our_mnist.MNISTDataModule) == _parameters(their_mnist.MNISTDataModule)
    assert _parameters(our_mnist._MNIST) == _parameters(their_mnist._MNIST)
    from lightning.pytorch.demos import boring_classes as their_boring

    from featherlight.demos import boring_classes as our_boring

    for name in ("IterableBoringDataModule", "DemoModel"):
        assert _parameters(getattr(our_boring, name)) == _parameters(getattr(their_boring, name))


def test_wikitext2_reads_a_local_file_without_downloading(wikitext):
    dataset = demos.WikiText2(data_dir=wikitext, block_size=5)  # download=True, but the file is there
    words = _TEXT.split("\n")[0].split()
    assert dataset.vocab_size == len(set(_TEXT.split())) + 1  # and <eos>
    inputs, target = dataset[0]
    assert inputs.shape == target.shape == (5,)
    assert torch.equal(inputs[1:], target[:-1])  # the target is the input shifted by one word
    assert [dataset.dictionary.idx2word[i] for i in inputs.tolist()] == words[:5]
    assert len(dataset) == len(dataset.data) // 5 - 1


def test_wikitext2_without_download_needs_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="wikitext-2.txt"):
        demos.WikiText2(data_dir=tmp_path, download=False)


def test_wikitext2_download_writes_the_file(tmp_path, monkeypatch):
    class Response:
        def __init__(self, *args):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return _TEXT.encode()

    monkeypatch.setattr(urllib.request, "urlopen", Response)
    dataset = demos.WikiText2(data_dir=tmp_path / "new", block_size=4)
    assert (tmp_path / "new" / "wikitext-2.txt").read_text() == _TEXT
    assert len(dataset) > 0


def test_transformer_shapes_and_causality():
    torch.manual_seed(0)
    model = demos.Transformer(vocab_size=11, ninp=8, nhead=2, nhid=16, nlayers=1, dropout=0.0).eval()
    inputs = torch.randint(0, 11, (3, 6))
    target = torch.randint(0, 11, (3, 6))
    out = model(inputs, target)
    assert out.shape == (3 * 6, 11)
    assert torch.allclose(out.exp().sum(-1), torch.ones(18), atol=1e-5)  # log-probabilities
    changed = target.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 11
    before = model(inputs, target).view(3, 6, 11)
    after = model(inputs, changed).view(3, 6, 11)
    assert torch.allclose(before[:, :-1], after[:, :-1], atol=1e-5)  # a later word does not change earlier outputs
    mask = demos.Transformer.generate_square_subsequent_mask(3)
    assert torch.equal(mask == 0, torch.ones(3, 3).tril().bool())


def test_positional_encoding_adds_each_position_code():
    encoding = demos.transformer.PositionalEncoding(dim=4, dropout=0.0)
    out = encoding(torch.zeros(1, 3, 4))
    assert not torch.equal(out[0, 0], out[0, 1])  # each position gets its own code
    assert torch.allclose(out[0, 0], torch.tensor([0.0, 1.0, 0.0, 1.0]))  # sin(0), cos(0)


def test_lightning_transformer_trains(wikitext, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its dataloader reads ./data/wikitext-2.txt, as Lightning's does
    vocab = demos.WikiText2(data_dir=wikitext).vocab_size
    model = demos.LightningTransformer(vocab_size=vocab)
    _trainer(tmp_path).fit(model)


def test_lstm_demo(wikitext, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dataset = demos.WikiText2(data_dir=wikitext, block_size=4)
    sampler = demos.SequenceSampler(dataset, batch_size=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(dataset) // 3
    assert batches[0] == [0, sampler.chunk_size, 2 * sampler.chunk_size]  # one contiguous chunk per row
    assert batches[1] == [1, sampler.chunk_size + 1, 2 * sampler.chunk_size + 1]
    model = demos.LightningLSTM(vocab_size=dataset.vocab_size)
    model.model = demos.SimpleLSTM(vocab_size=dataset.vocab_size, ninp=8, nhid=8, nlayers=1, dropout=0.0)
    carried = []

    class Spy(fl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            carried.append(tuple(pl_module.hidden[0].shape))  # the state carried to the next batch

    _trainer(tmp_path, callbacks=[Spy()]).fit(model)
    assert carried == [(1, 20, 8), (1, 20, 8)]
    assert model.hidden is None  # reset at the epoch's end


def test_demo_model_trains(tmp_path):
    from torch.utils.data import DataLoader

    from featherlight.demos.boring_classes import RandomDataset

    _trainer(tmp_path).fit(demos.DemoModel(), DataLoader(RandomDataset(32, 8), batch_size=4))


def test_iterable_boring_datamodule(tmp_path):
    from featherlight.demos.boring_classes import BoringModel, IterableBoringDataModule

    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch[0], batch_idx)  # one batch from each of the two loaders

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            return super().validation_step(batch, batch_idx)

        def test_step(self, batch, batch_idx, dataloader_idx=0):
            return super().test_step(batch, batch_idx)

        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return batch

    model = Model()
    model.layer = torch.nn.Linear(4, 2)
    dm = IterableBoringDataModule()
    dm.setup("fit")
    loaders = dm.train_dataloader()
    assert len(loaders) == 2 and len(loaders[0].dataset) == 16 and sum(1 for _ in loaders[1]) == 16
    trainer = _trainer(tmp_path)
    results = trainer.validate(model, datamodule=dm)
    assert len(results) == 2  # one result dict per loader
    predictions = trainer.predict(model, datamodule=dm)
    assert [len(p) for p in predictions] == [128, 128]


def _fake_mnist(root, n_train=60, n_test=20):
    folder = root / "MNIST" / "complete"
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for name, n in (("training.pt", n_train), ("test.pt", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=generator)
        torch.save((images, torch.arange(n) % 10), folder / name)


def test_mnist_reads_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("PL_USE_MOCKED_MNIST", "1")
    from featherlight.demos.mnist_datamodule import MNIST

    _fake_mnist(tmp_path)
    train = MNIST(str(tmp_path), train=True)  # download=True, but the files are there
    image, label = train[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label == 3
    assert len(train) == 60 and len(MNIST(str(tmp_path), train=False)) == 20
    raw = MNIST(str(tmp_path), train=True, normalize=None)[3][0]
    assert raw.max() > 1  # not normalised


def test_mnist_missing_files_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("PL_USE_MOCKED_MNIST", "1")
    from featherlight.demos.mnist_datamodule import MNIST

    with pytest.raises(RuntimeError, match="Dataset not found"):
        MNIST(str(tmp_path), download=False)


def test_mnist_datamodule(tmp_path, monkeypatch):
    monkeypatch.setenv("PL_USE_MOCKED_MNIST", "1")
    from featherlight.demos.mnist_datamodule import MNISTDataModule

    _fake_mnist(tmp_path)
    dm = MNISTDataModule(data_dir=str(tmp_path), val_split=10, num_workers=0, batch_size=5)
    dm.prepare_data()  # nothing to download
    dm.setup("fit")
    assert len(dm.dataset_train) == 50 and len(dm.dataset_val) == 10
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (5, 1, 28, 28) and labels.shape == (5,)
    assert len(dm.val_dataloader()) == 2 and len(dm.test_dataloader()) == 4
    assert dm.num_classes == 10 and dm.default_transforms is None
