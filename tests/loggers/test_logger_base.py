import enum
import os
import pickle
import subprocess
import sys
from argparse import Namespace
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from featherlight.loggers import CSVLogger, DummyLogger, Logger, TensorBoardLogger
from featherlight.loggers.logger import (
    _add_prefix,
    _convert_params,
    _DummyExperiment,
    _flatten_dict,
    _next_version,
    _sanitize_params,
    _version_dir,
    rank_zero_experiment,
)
from featherlight.utilities.rank_zero import rank_zero_only

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Minimal(Logger):
    def __init__(self):
        self.logged = []

    @property
    def name(self):
        return "minimal"

    @property
    def version(self):
        return 3

    def log_metrics(self, metrics, step=None):
        self.logged.append((metrics, step))

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def save(self):
        self.saved = True


def test_logger_is_abstract():
    with pytest.raises(TypeError):
        Logger()


def test_logger_defaults():
    logger = _Minimal()
    assert logger.root_dir is None
    assert logger.log_dir is None
    assert logger.save_dir is None
    assert logger.group_separator == "/"
    assert logger.log_graph(torch.nn.Linear(1, 1)) is None
    assert logger.after_save_checkpoint(object()) is None
    logger.finalize("success")
    assert logger.saved  # finalize falls back to save()


def test_dummy_logger_swallows_everything():
    logger = DummyLogger()
    assert logger.name == ""
    assert logger.version == ""
    logger.log_metrics({"a": 1.0}, step=0)
    logger.log_hyperparams({"lr": 1})
    assert logger.some_backend_specific_method(1, x=2) is None
    assert logger[0] is logger
    experiment = logger.experiment
    assert isinstance(experiment, _DummyExperiment)
    assert experiment.add_image("x", 1) is None
    assert experiment["anything"] is experiment
    experiment["key"] = 3  # no error


def test_dummy_logger_is_copyable_and_picklable():
    import copy

    logger = DummyLogger()
    # dunder lookups must not be answered by the catch-all __getattr__, or copy() would return None
    assert isinstance(copy.deepcopy(logger), DummyLogger)
    assert isinstance(pickle.loads(pickle.dumps(logger)), DummyLogger)


def test_rank_zero_experiment_returns_dummy_on_other_ranks(monkeypatch):
    class _WithExperiment:
        created = 0

        @property
        @rank_zero_experiment
        def experiment(self):
            type(self).created += 1
            return "real"

    obj = _WithExperiment()
    assert obj.experiment == "real"
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert isinstance(obj.experiment, _DummyExperiment)
    assert _WithExperiment.created == 1


def test_next_version_and_version_dir(tmp_path):
    assert _next_version(str(tmp_path / "missing")) == 0
    assert _next_version(str(tmp_path)) == 0
    for name in ("version_0", "version_7", "version_x", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "version_99").write_text("a file, not a version directory")
    assert _next_version(str(tmp_path)) == 8
    assert _version_dir("root", 3) == os.path.join("root", "version_3")
    assert _version_dir("root", "custom") == os.path.join("root", "custom")


def test_convert_params():
    assert _convert_params(None) == {}
    assert _convert_params(Namespace(a=1)) == {"a": 1}
    assert _convert_params({"b": 2}) == {"b": 2}


@dataclass
class _Cfg:
    width: int = 4


def test_flatten_dict():
    params = {
        "a": {"b": {"c": 1}},
        "ns": Namespace(x=2),
        "cfg": _Cfg(),
        "dl": [{"p": 1}, {"q": 2}],
        "l": [1, 2],
        5: "int key",
    }
    assert _flatten_dict(params) == {
        "a/b/c": 1,
        "ns/x": 2,
        "cfg/width": 4,
        "dl/0/p": 1,
        "dl/1/q": 2,
        "l": [1, 2],
        "5": "int key",
    }
    assert _flatten_dict({"a": {"b": 1}}, delimiter=".") == {"a.b": 1}


class _Color(enum.Enum):
    RED = 1


def _my_fn():
    pass


def test_sanitize_params():
    params = {
        "float": 0.5,
        "int": 1,
        "bool": True,
        "str": "s",
        "none": None,
        "list": [1, 2],
        "ns": Namespace(a=1),
        "enum": _Color.RED,
        "cls": torch.nn.Linear,
        "fn": _my_fn,
        "np_float": np.float32(0.25),
        "np_int": np.int64(3),
        "tensor0": torch.tensor(2.5),
        "tensor2d": torch.ones(2, 2),
    }
    out = _sanitize_params(params)
    assert out["float"] == 0.5 and out["int"] == 1 and out["bool"] is True and out["str"] == "s"
    assert out["none"] == "None"
    assert out["list"] == "[1, 2]"
    assert out["ns"] == "Namespace(a=1)"
    assert out["enum"] == "_Color.RED"
    assert out["cls"] == "Linear"
    assert out["fn"] == "_my_fn"  # no memory address
    assert out["np_float"] == 0.25 and type(out["np_float"]) is float
    assert out["np_int"] == 3 and type(out["np_int"]) is int
    assert out["tensor0"] == 2.5 and type(out["tensor0"]) is float
    assert isinstance(out["tensor2d"], str)
    assert all(type(v) in (bool, int, float, str) for v in out.values())
    assert params["enum"] is _Color.RED  # input not mutated


def test_add_prefix():
    metrics = {"loss": 1.0}
    assert _add_prefix(metrics, "", "-") is metrics
    assert _add_prefix(metrics, "train", "-") == {"train-loss": 1.0}
    assert _add_prefix(metrics, "train", "/") == {"train/loss": 1.0}


def test_importing_loggers_is_cheap():
    code = (
        "import sys, featherlight.loggers as L; from featherlight.loggers import tensorboard, csv_logs; "
        "heavy = [m for m in ('tensorboard', 'tensorboardX', 'torch.utils.tensorboard') if m in sys.modules]; "
        "print(heavy)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=_REPO_ROOT)
    out = run.stdout
    assert out.strip() == "[]"


def test_loggers_share_versioning(tmp_path):
    pytest.importorskip("tensorboard")
    for sub in ("a", "b"):
        (tmp_path / sub / "exp" / "version_4").mkdir(parents=True)
    assert CSVLogger(tmp_path / "a", name="exp").version == 5
    assert TensorBoardLogger(tmp_path / "b", name="exp").version == 5
    # each claims its directory: a second logger resolving its version under the same root takes the next one
    assert CSVLogger(tmp_path / "b", name="exp").version == 6


def test_dummy_experiment_is_public_and_takes_anything():
    from featherlight.loggers.logger import DummyExperiment

    experiment = DummyExperiment()
    experiment["metrics/acc"] = 0.5  # item assignment, as neptune-style code does on every rank
    assert experiment["anything"] is experiment
    assert experiment.add_scalar("x", 1) is None
    assert isinstance(DummyLogger().experiment, DummyExperiment)
