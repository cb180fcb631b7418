import enum
import functools
import os
import stat
import warnings
from argparse import Namespace
from collections import OrderedDict, namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from featherlight import Trainer
from featherlight.core.saving import load_hparams_from_yaml, save_hparams_to_yaml
from featherlight.demos.boring_classes import BoringModel
from featherlight.io.atomic import atomic_write
from featherlight.utilities.exceptions import CheckpointError
from featherlight.utilities.parsing import AttributeDict


class Color(enum.Enum):
    RED = 1


Point = namedtuple("Point", ["x", "y"])


@pytest.mark.parametrize(
    "hparams",
    [
        {"lr": 0.1, "layers": [1, 2], "name": "net", "flag": True, "none": None, "nested": {"a": {"b": 1}}},
        Namespace(lr=0.1, layers=[1, 2]),
        AttributeDict(lr=0.1, layers=[1, 2]),
    ],
)
def test_roundtrip(tmp_path, hparams):
    path = tmp_path / "hparams.yaml"
    save_hparams_to_yaml(path, hparams)
    expected = vars(hparams) if isinstance(hparams, Namespace) else dict(hparams)
    loaded = load_hparams_from_yaml(path)
    assert loaded == expected
    assert type(loaded) is dict


def test_common_non_yaml_values_become_plain(tmp_path):
    path = tmp_path / "hparams.yaml"
    hparams = {
        "tuple": (1, 2),
        "namedtuple": Point(1, 2),
        "ordered": OrderedDict(b=2, a=1),
        "attrdict": AttributeDict(k="v"),
        "enum": Color.RED,
        "path": Path("/data/x"),
        "np_float": np.float32(0.5),
        "np_int": np.int64(3),
    }
    save_hparams_to_yaml(path, hparams)
    assert load_hparams_from_yaml(path) == {
        "tuple": [1, 2],
        "namedtuple": [1, 2],
        "ordered": {"a": 1, "b": 2},
        "attrdict": {"k": "v"},
        "enum": "RED",
        "path": "/data/x",
        "np_float": 0.5,
        "np_int": 3,
    }
    assert "!!python" not in path.read_text()


def test_unrepresentable_values_are_skipped_with_warning(tmp_path):
    path = tmp_path / "hparams.yaml"
    hparams = {"lr": 0.1, "obj": object(), "tensor": torch.ones(2), "fn": lambda x: x}
    with pytest.warns(UserWarning) as record:
        save_hparams_to_yaml(path, hparams)
    messages = [str(w.message) for w in record]
    for key in ("obj", "tensor", "fn"):
        assert sum(f"'{key}'" in m for m in messages) == 1
    assert load_hparams_from_yaml(path) == {"lr": 0.1}
    # each distinct warning fires once
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_hparams_to_yaml(path, hparams)


def test_skipped_values_get_lightnings_warning(tmp_path):
    with pytest.warns(UserWarning, match="Skipping 'torch_type' parameter because it is not possible to safely dump"):
        save_hparams_to_yaml(tmp_path / "hparams.yaml", {"torch_type": torch.float32})


def test_non_string_keys_are_kept_and_unsafe_ones_skipped(tmp_path):
    path = tmp_path / "hparams.yaml"
    with pytest.warns(UserWarning, match=r"Skipping '5j' parameter.*Its key, a complex"):
        save_hparams_to_yaml(path, {"a": 1, 123: 3, 3.5: 4, 5j: 5, True: 6})
    assert load_hparams_from_yaml(path, use_omegaconf=False) == {"a": 1, 123: 3, 3.5: 4, True: 6}


def test_missing_folder(tmp_path):
    with pytest.raises(RuntimeError, match="Missing folder"):
        save_hparams_to_yaml(tmp_path / "nope" / "hparams.yaml", {"a": 1})


def test_relative_path_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_hparams_to_yaml("hparams.yaml", {"a": 1})
    assert load_hparams_from_yaml("hparams.yaml") == {"a": 1}


def test_overwrite_replaces_content(tmp_path):
    path = tmp_path / "hparams.yaml"
    save_hparams_to_yaml(path, {"a": 1, "b": 2})
    save_hparams_to_yaml(path, {"c": 3})
    assert load_hparams_from_yaml(path) == {"c": 3}
    assert sorted(os.listdir(tmp_path)) == ["hparams.yaml"]  # no temp files left behind


def test_non_mapping_hparams_rejected(tmp_path):
    with pytest.raises(TypeError, match="dict or an argparse.Namespace"):
        save_hparams_to_yaml(tmp_path / "h.yaml", [1, 2])


def test_load_missing_file_warns(tmp_path):
    with pytest.warns(RuntimeWarning, match="not found"):
        assert load_hparams_from_yaml(tmp_path / "absent.yaml") == {}


def test_load_empty_and_non_mapping(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_hparams_from_yaml(empty) == {}
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_hparams_from_yaml(listing)


def test_load_never_constructs_objects(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"x: !!python/object/apply:os.makedirs ['{marker}']\n")
    with pytest.raises(ValueError, match="Refusing to load"):
        load_hparams_from_yaml(path)
    assert not marker.exists()


def test_load_python_tuple_tag(tmp_path):
    path = tmp_path / "tuple.yaml"
    path.write_text("betas: !!python/tuple\n- 0.9\n- 0.999\n")
    assert load_hparams_from_yaml(path) == {"betas": (0.9, 0.999)}


def test_atomic_write_failure_keeps_old_file(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")

    def failing(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]


def test_atomic_write_creates_file_with_umask_permissions(tmp_path):
    path = tmp_path / "new.bin"
    old_umask = os.umask(0o022)
    try:
        atomic_write(path, lambda f: f.write(b"data"))
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"data"
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_yaml_skip_warning_starts_with_lightnings_sentence(tmp_path):
    with pytest.warns(UserWarning, match="Skipping 'dtype' parameter because it is not possible to safely dump to YAML"):
        save_hparams_to_yaml(tmp_path / "hparams.yaml", {"dtype": torch.float32})


def test_tags_csv_roundtrip_parses_literals_without_running_code(tmp_path):
    from featherlight.core.saving import load_hparams_from_tags_csv, save_hparams_to_tags_csv

    path = tmp_path / "meta_tags.csv"
    hparams = {"batch_size": 32, "lr": 0.008, "name": "adam", "flag": True, "layers": [1, 2], "code": "__import__('os')"}
    save_hparams_to_tags_csv(path, Namespace(**hparams))
    assert load_hparams_from_tags_csv(path) == hparams  # the "code" string stays a string
    with pytest.raises(RuntimeError, match="Missing folder"):
        save_hparams_to_tags_csv(tmp_path / "nope" / "t.csv", hparams)
    with pytest.warns(RuntimeWarning, match="Missing Tags"):
        assert load_hparams_from_tags_csv(tmp_path / "absent.csv") == {}


# ------------------------------------------------------------------ hyperparameters a checkpoint cannot hold as data


def _fit_and_save(tmp_path, model):
    trainer = Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


class WithEncoder(BoringModel):
    def __init__(self, encoder: torch.nn.Module, lr: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.save_hyperparameters()


class WithDefaultEncoder(BoringModel):
    def __init__(self, encoder: torch.nn.Module = torch.nn.Linear(4, 4), lr: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.save_hyperparameters()


def test_module_hparam_is_left_out_of_the_checkpoint_and_asked_for_by_name(tmp_path):
    with pytest.warns(UserWarning, match="Attribute 'encoder' is an instance of `nn.Module`"):
        model = WithEncoder(torch.nn.Linear(4, 4), lr=0.5)
    path = _fit_and_save(tmp_path, model)
    raw = torch.load(path, weights_only=True)  # plain data: no module pickled into the hparams
    assert raw["hyper_parameters"] == {"lr": 0.5}
    assert raw["featherlight_hparams_left_out"] == {"encoder": "torch.nn.modules.linear.Linear"}
    with pytest.raises(TypeError, match=r"needs the argument `encoder`.*has no default.*encoder=\.\.\."):
        WithEncoder.load_from_checkpoint(path)
    with pytest.warns(UserWarning, match="Attribute 'encoder'"):
        loaded = WithEncoder.load_from_checkpoint(path, encoder=torch.nn.Linear(4, 4))
    assert loaded.hparams.lr == 0.5
    torch.testing.assert_close(loaded.encoder.weight, model.encoder.weight)  # the weights come from the state dict


def test_module_hparam_with_a_default_of_the_same_class_loads(tmp_path):
    with pytest.warns(UserWarning, match="Attribute 'encoder'"):
        model = WithDefaultEncoder(torch.nn.Linear(4, 4))
    path = _fit_and_save(tmp_path, model)
    with pytest.warns(UserWarning, match="Attribute 'encoder'"):
        loaded = WithDefaultEncoder.load_from_checkpoint(path)
    torch.testing.assert_close(loaded.encoder.weight, model.encoder.weight)
    # another class than the default (and not one of torch's stateless layers): it cannot be guessed
    with pytest.warns(UserWarning, match="Attribute 'encoder'"):
        other = WithDefaultEncoder(Doubler())
    path = _fit_and_save(tmp_path / "other", other)
    with pytest.raises(TypeError, match=r"`encoder`.*test_saving.Doubler.*defaults to a Linear"):
        WithDefaultEncoder.load_from_checkpoint(path)


class Doubler(torch.nn.Module):
    def forward(self, x):
        return 2 * x


class WithActivation(BoringModel):
    def __init__(self, activation: torch.nn.Module, head: torch.nn.Module = None):
        super().__init__()
        self.activation, self.head = activation, head
        self.save_hyperparameters()


def test_torchs_stateless_layers_as_hparams_are_rebuilt_without_asking(tmp_path):
    """pytorch-forecasting's NBeatsKAN passes `base_fun=nn.SiLU()`; Lightning pickles it, featherlight stores its
    class and plain attributes (torch.nn classes only, nothing imported from the checkpoint) and rebuilds it."""
    with pytest.warns(UserWarning, match="Attribute 'activation'"):
        model = WithActivation(torch.nn.LeakyReLU(0.2, inplace=True))
    path = _fit_and_save(tmp_path, model)
    raw = torch.load(path, weights_only=True)
    assert raw["featherlight_hparams_torch_modules"]["activation"] == {
        "class": "torch.nn.modules.activation.LeakyReLU", "attributes": {"training": True, "negative_slope": 0.2,
                                                                         "inplace": True}}
    with pytest.warns(UserWarning, match="Attribute 'activation'"):
        loaded = WithActivation.load_from_checkpoint(path)
    assert type(loaded.activation) is torch.nn.LeakyReLU and loaded.activation.negative_slope == 0.2
    assert loaded.activation.inplace and repr(loaded.activation) == repr(model.activation)
    x = torch.randn(5)
    assert torch.equal(loaded.activation(x.clone()), model.activation(x.clone()))
    # a layer with weights, or a class of the user's, is still asked for by name
    with pytest.warns(UserWarning, match="Attribute"):
        path = _fit_and_save(tmp_path / "head", WithActivation(torch.nn.SiLU(), head=torch.nn.Linear(2, 2)))
    with pytest.raises(TypeError, match=r"needs the argument `head`"):
        WithActivation.load_from_checkpoint(path)
    with pytest.warns(UserWarning, match="Attribute"):
        assert type(WithActivation.load_from_checkpoint(path, head=torch.nn.Linear(2, 2)).activation) is \
            torch.nn.SiLU


def test_a_torch_module_record_names_nothing_outside_torch_nn():
    from featherlight.core.saving import rebuild_torch_module

    assert rebuild_torch_module({"class": "os.system", "attributes": {}}) is None
    assert rebuild_torch_module({"class": "torch.nn.modules.activation.os", "attributes": {}}) is None
    assert rebuild_torch_module({"class": "torch.nn.modules.linear.Linear.__init__", "attributes": {}}) is None


class WithPartial(BoringModel):
    def __init__(self, optimizer=functools.partial(torch.optim.SGD, lr=0.1), width: int = 32):
        super().__init__()
        self.optimizer_factory = optimizer
        self.save_hyperparameters()

    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())


def test_non_data_hparams_do_not_block_resume_or_test(tmp_path):
    model = WithPartial(functools.partial(torch.optim.SGD, lr=0.2))
    path = _fit_and_save(tmp_path, model)
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        torch.load(path, weights_only=True)  # torch alone refuses the whole file
    flags = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                 default_root_dir=tmp_path, limit_train_batches=2, limit_val_batches=0, limit_test_batches=1)
    resumed = Trainer(max_epochs=2, **flags)
    seen = {}
    fresh = WithPartial(functools.partial(torch.optim.SGD, lr=0.2))
    fresh.on_load_checkpoint = lambda checkpoint: seen.update(checkpoint["hyper_parameters"])
    resumed.fit(fresh, ckpt_path=path)  # weights and training state load; no code from the file runs
    assert resumed.global_step == 4
    assert repr(seen["optimizer"]) == "<unloaded functools.partial>" and seen["width"] == 32
    trainer = Trainer(**flags)
    trainer.test(WithPartial(), ckpt_path=path, verbose=False)


def test_rebuilding_from_non_data_hparams_needs_the_argument_or_the_opt_in(tmp_path):
    model = WithPartial(functools.partial(torch.optim.SGD, lr=0.2))
    path = _fit_and_save(tmp_path, model)
    with pytest.raises(CheckpointError, match=r"`optimizer` \(functools.partial\).*optimizer=\.\.\..*weights_only=False"):
        WithPartial.load_from_checkpoint(path)
    loaded = WithPartial.load_from_checkpoint(path, optimizer=functools.partial(torch.optim.Adam))
    assert loaded.optimizer_factory.func is torch.optim.Adam
    torch.testing.assert_close(loaded.layer.weight, model.layer.weight)
    trusted = WithPartial.load_from_checkpoint(path, weights_only=False)
    assert trusted.optimizer_factory.keywords == {"lr": 0.2}


def test_unknown_objects_outside_the_hparams_are_still_refused(tmp_path):
    checkpoint = {"state_dict": BoringModel().state_dict(), "callbacks": {"x": functools.partial(print)}}
    path = tmp_path / "odd.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="Refusing to load"):
        BoringModel.load_from_checkpoint(path)


class WithBatchSize(BoringModel):
    def __init__(self, batch_size: int = 64):
        super().__init__()
        self.save_hyperparameters()


def test_legacy_hparams_keys_and_csv_hparams_file(tmp_path):
    from featherlight.core.saving import save_hparams_to_tags_csv

    path = _fit_and_save(tmp_path, WithBatchSize(8))
    raw = torch.load(path, weights_only=True)
    raw["module_arguments"] = raw.pop("hyper_parameters")  # where Lightning 0.7 kept them
    raw["module_arguments"]["batch_size"] = -17
    torch.save(raw, path)
    assert WithBatchSize.load_from_checkpoint(path).hparams.batch_size == -17
    save_hparams_to_tags_csv(tmp_path / "tags.csv", {"batch_size": 5})
    assert WithBatchSize.load_from_checkpoint(path, hparams_file=tmp_path / "tags.csv").hparams.batch_size == 5
    with pytest.raises(ValueError, match=r"\.csv, \.yml or \.yaml is required for `hparams_file`"):
        WithBatchSize.load_from_checkpoint(path, hparams_file=tmp_path / "tags.txt")


@pytest.mark.parametrize(("strict", "strict_loading", "expected"), [(None, None, True), (None, False, False),
                                                                    (False, None, False), (True, False, "error")])
def test_load_from_checkpoint_calls_the_modules_load_state_dict_with_strict(tmp_path, strict, strict_loading, expected):
    from unittest import mock

    path = _fit_and_save(tmp_path, BoringModel())

    class Loading(BoringModel):
        def __init__(self):
            super().__init__()
            self.strict_loading = strict_loading

    with mock.patch.object(Loading, "load_state_dict") as load_state_dict:
        if expected == "error":
            with pytest.raises(ValueError, match="in conflict with `Loading.strict_loading=False"):
                Loading.load_from_checkpoint(path, strict=strict)
        else:
            Loading.load_from_checkpoint(path, strict=strict)
            load_state_dict.assert_called_once_with(mock.ANY, strict=expected)


def test_non_strict_load_warns_with_lightnings_sentences(tmp_path):
    path = _fit_and_save(tmp_path, BoringModel())

    class Bigger(BoringModel):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Linear(2, 2)

    with pytest.warns(UserWarning, match=r"Found keys that are in the model state dict but not in the checkpoint: "
                                         r"\['extra.weight', 'extra.bias'\]"):
        Bigger.load_from_checkpoint(path, strict=False)
