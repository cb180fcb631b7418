import enum
import os
import stat
import warnings
from argparse import Namespace
from collections import OrderedDict, namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from featherlight.core.saving import load_hparams_from_yaml, save_hparams_to_yaml
from featherlight.io.atomic import atomic_write
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
