"""Weights export: safetensors (optional package) and ONNX."""
from __future__ import annotations

import builtins
import errno
import os

import pytest
import torch
from torch import nn

import featherlight as fl
from featherlight.demos.boring_classes import BoringModel
from featherlight.utilities.exceptions import CheckpointError
from featherlight.io.export import load_weights_safetensors, save_weights_safetensors


def test_missing_safetensors_names_the_install(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_safetensors(name, *args, **kwargs):
        if name == "safetensors" or name.startswith("safetensors."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_safetensors)
    with pytest.raises(ModuleNotFoundError, match="pip install safetensors"):
        save_weights_safetensors(BoringModel(), tmp_path / "w.safetensors")
    with pytest.raises(ModuleNotFoundError, match="pip install safetensors"):
        load_weights_safetensors(BoringModel(), tmp_path / "w.safetensors")


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("table", torch.arange(12.0).reshape(3, 4))
        self.register_buffer("row", self.table[1])  # a view sharing the table's memory
        self.register_buffer("column", self.table[:, 2])  # a non-contiguous view


def test_round_trip(tmp_path):
    pytest.importorskip("safetensors")
    model = BoringModel()
    path = tmp_path / "sub" / "weights.safetensors"
    save_weights_safetensors(model, path, metadata={"epoch": 3})
    assert os.listdir(path.parent) == ["weights.safetensors"]
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format"] == "pt" and f.metadata()["epoch"] == "3"
        assert set(f.keys()) == {"layer.weight", "layer.bias"}
    other = load_weights_safetensors(BoringModel(), path)
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_tied_and_shared_tensors(tmp_path):
    pytest.importorskip("safetensors")
    model = Tied()
    with torch.no_grad():
        model.embed.weight.normal_()
    path = tmp_path / "tied.safetensors"
    save_weights_safetensors(model, path)
    loaded = load_weights_safetensors(Tied(), path)
    assert loaded.head.weight is loaded.embed.weight
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, msg=name)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own imports
def test_compiled_module_names_are_plain(tmp_path):
    pytest.importorskip("safetensors")
    model = BoringModel()
    model.layer = torch.compile(model.layer)
    path = tmp_path / "c.safetensors"
    save_weights_safetensors(model, path)
    from safetensors.torch import load_file

    assert set(load_file(str(path))) == {"layer.weight", "layer.bias"}
    plain = load_weights_safetensors(BoringModel(), path)
    torch.testing.assert_close(plain.layer.weight, model.layer.weight)
    compiled = BoringModel()
    compiled.layer = torch.compile(compiled.layer)
    load_weights_safetensors(compiled, path)
    torch.testing.assert_close(compiled.layer.weight, model.layer.weight)


def test_strict(tmp_path):
    pytest.importorskip("safetensors")
    path = tmp_path / "w.safetensors"
    save_weights_safetensors(BoringModel(), path)

    class Bigger(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.extra = nn.Linear(2, 2)

    with pytest.raises(RuntimeError, match="extra.weight") as info:
        load_weights_safetensors(Bigger(), path)
    assert "strict=False" in str(info.value)
    with pytest.warns(UserWarning, match="extra.weight"):
        load_weights_safetensors(Bigger(), path, strict=False)


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    pytest.importorskip("safetensors.torch")
    import featherlight.io.atomic as io_module

    path = tmp_path / "w.safetensors"
    save_weights_safetensors(BoringModel(), path)
    before = path.read_bytes()

    def full_disk(fd):  # the data was written to the temporary file; flushing it to disk fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_module.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_weights_safetensors(BoringModel(), path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["w.safetensors"]


def test_damaged_or_missing_file(tmp_path):
    pytest.importorskip("safetensors")
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        load_weights_safetensors(BoringModel(), tmp_path / "nothing.safetensors")
    path = tmp_path / "w.safetensors"
    save_weights_safetensors(BoringModel(), path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="w.safetensors"):
        load_weights_safetensors(BoringModel(), path)


def test_from_a_checkpoint_to_safetensors(tmp_path):
    """The usual flow: train, then hand the weights of the best checkpoint to another tool."""
    pytest.importorskip("safetensors")
    trainer = fl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    model = BoringModel()
    trainer.fit(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    save_weights_safetensors(BoringModel.load_from_checkpoint(tmp_path / "m.ckpt"), tmp_path / "m.safetensors")
    loaded = load_weights_safetensors(BoringModel(), tmp_path / "m.safetensors")
    torch.testing.assert_close(loaded.layer.weight, model.layer.weight)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_to_onnx(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")  # torch's exporter (dynamo=True by default) needs it
    model = BoringModel()
    model.example_input_array = torch.randn(3, 32)
    path = tmp_path / "model.onnx"
    model.to_onnx(path)
    onnx.checker.check_model(onnx.load(str(path)))
    assert model.training  # the export puts the model back in the mode it was in
    model.to_onnx(tmp_path / "model2.onnx", torch.randn(1, 32))
    assert os.path.isfile(tmp_path / "model2.onnx")
