"""Hyperparameters in checkpoints and ``load_from_checkpoint``: rebuilding, overrides, strictness, devices."""
from __future__ import annotations

from argparse import Namespace

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

import featherlight as fl
from featherlight.demos.boring_classes import BoringModel, RandomDataset
from featherlight.loggers import CSVLogger, TensorBoardLogger
from featherlight.utilities.parsing import AttributeDict


def _fit(tmp_path, model, datamodule=None, **kwargs):
    base = dict(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False, enable_progress_bar=False,
                enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    base.update(kwargs)
    trainer = fl.Trainer(**base)
    trainer.fit(model, datamodule=datamodule)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


class Net(BoringModel):
    def __init__(self, hidden: int = 4, lr: float = 0.1, tags=("a",)) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Sequential(nn.Linear(32, hidden), nn.Linear(hidden, 2))


# ------------------------------------------------------------------------------------------- rebuilding
def test_round_trip_and_plain_dict_hparams(tmp_path):
    path = _fit(tmp_path, Net(hidden=6, lr=0.5, tags=("x", "y")))
    ckpt = torch.load(path, weights_only=True)  # no allow-list needed: plain containers only
    assert type(ckpt["hyper_parameters"]) is dict
    assert ckpt["hyper_parameters"] == {"hidden": 6, "lr": 0.5, "tags": ("x", "y")}
    assert ckpt["hparams_name"] == "kwargs"
    model = Net.load_from_checkpoint(path)
    assert model.hparams == {"hidden": 6, "lr": 0.5, "tags": ("x", "y")}
    assert model.layer[0].out_features == 6


def test_nested_hparams_are_plain_dicts(tmp_path):
    class Nested(BoringModel):
        def __init__(self, optim: dict = None) -> None:
            super().__init__()
            self.save_hyperparameters()

    path = _fit(tmp_path, Nested(optim=AttributeDict(lr=0.1, betas=AttributeDict(a=1))))
    hp = torch.load(path, weights_only=True)["hyper_parameters"]
    assert type(hp["optim"]) is dict and type(hp["optim"]["betas"]) is dict
    assert Nested.load_from_checkpoint(path).hparams.optim["betas"]["a"] == 1


def test_kwargs_override_saved_hparams(tmp_path):
    path = _fit(tmp_path, Net(hidden=6, lr=0.5))
    model = Net.load_from_checkpoint(path, lr=0.01)
    assert model.hparams.lr == 0.01 and model.hparams.hidden == 6


def test_renamed_init_argument_names_saved_keys_init_args_and_override(tmp_path):
    path = _fit(tmp_path, Net(hidden=6))

    class Renamed(BoringModel):
        def __init__(self, hidden_size: int, lr: float = 0.1, tags=("a",)) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = nn.Sequential(nn.Linear(32, hidden_size), nn.Linear(hidden_size, 2))

    with pytest.raises(TypeError) as info:
        Renamed.load_from_checkpoint(path)
    message = str(info.value)
    assert "['hidden', 'lr', 'tags']" in message  # what the checkpoint holds
    assert "['hidden_size', 'lr', 'tags']" in message  # what __init__ takes
    assert "Renamed.load_from_checkpoint(path, hidden_size=...)" in message
    assert str(path) in message
    model = Renamed.load_from_checkpoint(path, hidden_size=6)
    assert model.layer[0].out_features == 6


def test_new_required_argument(tmp_path):
    path = _fit(tmp_path, Net(hidden=6))

    class Grown(Net):
        def __init__(self, dropout: float, hidden: int = 4, lr: float = 0.1, tags=("a",)) -> None:
            super().__init__(hidden, lr, tags)
            self.save_hyperparameters()

    with pytest.raises(TypeError, match=r"needs \['dropout'\]"):
        Grown.load_from_checkpoint(path)
    assert Grown.load_from_checkpoint(path, dropout=0.5).hparams.dropout == 0.5


def test_saved_keys_init_no_longer_takes_are_dropped(tmp_path):
    path = _fit(tmp_path, Net(hidden=6, lr=0.5))

    class Fewer(BoringModel):
        def __init__(self, hidden: int = 4) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = nn.Sequential(nn.Linear(32, hidden), nn.Linear(hidden, 2))

    assert Fewer.load_from_checkpoint(path).hparams == {"hidden": 6}

    class TakesAll(BoringModel):
        def __init__(self, hidden: int = 4, **kwargs) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = nn.Sequential(nn.Linear(32, hidden), nn.Linear(hidden, 2))

    assert TakesAll.load_from_checkpoint(path).hparams == {"hidden": 6, "lr": 0.5, "tags": ("a",)}


def test_shape_mismatch_names_the_file_and_hparams(tmp_path):
    path = _fit(tmp_path, Net(hidden=6))
    with pytest.raises(RuntimeError, match="size mismatch") as info:
        Net.load_from_checkpoint(path, hidden=3)
    assert str(path) in str(info.value) and "hyperparameters" in str(info.value)


# ------------------------------------------------------------------------------------------- config objects
class DictConfigModel(BoringModel):
    def __init__(self, config: dict, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters(config)
        self.layer = nn.Sequential(nn.Linear(32, config["hidden"]), nn.Linear(config["hidden"], 2))


class NamespaceModel(BoringModel):
    def __init__(self, args: Namespace) -> None:
        super().__init__()
        self.save_hyperparameters(args)
        self.layer = nn.Sequential(nn.Linear(32, args.hidden), nn.Linear(args.hidden, 2))


def test_positional_dict_config_round_trips(tmp_path):
    path = _fit(tmp_path, DictConfigModel({"hidden": 5, "lr": 0.2}))
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hparams_name"] == "config"
    assert ckpt["hyper_parameters"] == {"hidden": 5, "lr": 0.2}
    model = DictConfigModel.load_from_checkpoint(path)
    assert model.layer[0].out_features == 5 and model.hparams == {"hidden": 5, "lr": 0.2}
    # an override of a config entry goes into the config, one of an __init__ argument to __init__
    model = DictConfigModel.load_from_checkpoint(path, lr=0.3, seed=7)
    assert model.hparams.lr == 0.3 and model.layer[0].out_features == 5


def test_positional_namespace_config_round_trips(tmp_path):
    path = _fit(tmp_path, NamespaceModel(Namespace(hidden=3, lr=0.1)))
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hparams_name"] == "args" and ckpt["hyper_parameters"] == {"hidden": 3, "lr": 0.1}
    model = NamespaceModel.load_from_checkpoint(path)  # attribute access works on what __init__ gets back
    assert model.layer[0].out_features == 3 and model.hparams.lr == 0.1


# ------------------------------------------------------------------------------------------- hparams files
def test_hparams_file_replaces_saved_hparams(tmp_path):
    path = _fit(tmp_path, Net(hidden=6, lr=0.5))
    hparams_file = tmp_path / "hp.yaml"
    hparams_file.write_text("hidden: 6\nlr: 0.05\n")
    model = Net.load_from_checkpoint(path, hparams_file=hparams_file)
    assert model.hparams == {"hidden": 6, "lr": 0.05, "tags": ("a",)}  # "tags" not in the file: the default
    model = Net.load_from_checkpoint(path, hparams_file=hparams_file, lr=1.0)
    assert model.hparams.lr == 1.0
    with pytest.raises(ValueError, match=r"\.yaml"):
        Net.load_from_checkpoint(path, hparams_file=tmp_path / "hp.json")


@pytest.mark.parametrize("logger_cls", [CSVLogger, TensorBoardLogger])
def test_logger_writes_hparams_yaml_that_loads_back(tmp_path, logger_cls):
    logger = logger_cls(tmp_path / "logs")
    path = _fit(tmp_path, Net(hidden=6, lr=0.5, tags=("x",)), logger=logger)
    hparams_file = tmp_path / "logs" / logger.name / f"version_{logger.version}" / "hparams.yaml"
    assert yaml.safe_load(hparams_file.read_text()) == {"hidden": 6, "lr": 0.5, "tags": ["x"]}
    model = Net.load_from_checkpoint(path, hparams_file=hparams_file)
    assert model.hparams.hidden == 6 and model.hparams.lr == 0.5


# ------------------------------------------------------------------------------------------- strict
class Extra(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(2, 2)


def test_strict_lists_missing_and_unexpected_keys(tmp_path):
    path = _fit(tmp_path, BoringModel())
    with pytest.raises(RuntimeError) as info:
        Extra.load_from_checkpoint(path)
    message = str(info.value)
    # torch's (and Lightning's) sentence first, featherlight's fix after it
    assert "head.weight" in message and "Missing key(s) in state_dict" in message and "strict=False" in message
    path_extra = _fit(tmp_path / "extra", Extra())
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict") as info:
        BoringModel.load_from_checkpoint(path_extra, strict=True)
    assert "head.bias" in str(info.value)


def test_strict_false_warns_and_loads(tmp_path):
    path = _fit(tmp_path, BoringModel())
    weights = torch.load(path, weights_only=True)["state_dict"]["layer.weight"]
    with pytest.warns(UserWarning, match="head.weight"):
        model = Extra.load_from_checkpoint(path, strict=False)
    torch.testing.assert_close(model.layer.weight, weights)


def test_strict_conflicting_with_strict_loading(tmp_path):
    class Lenient(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.strict_loading = False

    path = _fit(tmp_path, BoringModel())
    with pytest.raises(ValueError, match="strict_loading"):
        Lenient.load_from_checkpoint(path, strict=True)
    Lenient.load_from_checkpoint(path)  # its own setting applies


# ------------------------------------------------------------------------------------------- devices, hooks
@pytest.mark.parametrize("map_location", ["cpu", torch.device("cpu"), {"cpu": "cpu"}, lambda storage, loc: storage])
def test_map_location(tmp_path, map_location):
    path = _fit(tmp_path, Net())
    model = Net.load_from_checkpoint(path, map_location=map_location)
    assert model.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_map_location_to_cuda_moves_the_model(tmp_path):
    path = _fit(tmp_path, Net())
    model = Net.load_from_checkpoint(path, map_location="cuda")
    assert model.device.type == "cuda" and next(model.parameters()).is_cuda
    path_cuda = _fit(tmp_path / "gpu", Net(), accelerator="gpu", devices=1)
    assert next(Net.load_from_checkpoint(path_cuda).parameters()).is_cuda  # saved on CUDA: back on CUDA
    assert not next(Net.load_from_checkpoint(path_cuda, map_location="cpu").parameters()).is_cuda


def test_configure_model_runs_before_weights_load(tmp_path):
    class Lazy(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.layer = None

        def configure_model(self) -> None:
            if self.layer is None:
                self.layer = nn.Linear(32, 2)

    path = _fit(tmp_path, Lazy())
    saved = torch.load(path, weights_only=True)["state_dict"]["layer.weight"]
    torch.testing.assert_close(Lazy.load_from_checkpoint(path).layer.weight, saved)


def test_on_load_checkpoint_sees_the_checkpoint(tmp_path):
    class Hooked(BoringModel):
        def on_save_checkpoint(self, checkpoint):
            checkpoint["extra"] = {"value": torch.tensor(3)}

        def on_load_checkpoint(self, checkpoint):
            self.extra = checkpoint["extra"]["value"].item()

    assert Hooked.load_from_checkpoint(_fit(tmp_path, Hooked())).extra == 3


# ------------------------------------------------------------------------------------------- datamodules
class DM(fl.LightningDataModule):
    def __init__(self, batch_size: int = 4, size: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.counter = 0

    def train_dataloader(self):
        return DataLoader(RandomDataset(self.hparams.size, 16), batch_size=self.hparams.batch_size)

    def state_dict(self):
        return {"counter": 7}

    def load_state_dict(self, state):
        self.counter = state["counter"]


def test_datamodule_rebuilds_from_checkpoint(tmp_path):
    path = _fit(tmp_path, BoringModel(), datamodule=DM(batch_size=8))
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["datamodule_hyper_parameters"] == {"batch_size": 8, "size": 32}
    assert ckpt["datamodule_hparams_name"] == "kwargs"
    dm = DM.load_from_checkpoint(path)
    assert dm.hparams == {"batch_size": 8, "size": 32} and dm.counter == 7
    assert DM.load_from_checkpoint(path, batch_size=2).hparams.batch_size == 2
