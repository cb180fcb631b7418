"""CometLogger against the real ``comet_ml`` package in offline mode: the experiment is recorded into a ``.zip``
archive (what ``comet upload`` would send), which the tests open and read."""

import glob
import json
import os
import sys
import zipfile

import pytest

pytest.importorskip("comet_ml")

from featherlight.loggers import CometLogger  # noqa: E402
from featherlight.utilities.rank_zero import rank_zero_only  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from _tracker_models import TinyModel, trainer  # noqa: E402


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    for key in ("COMET_API_KEY", "COMET_WORKSPACE", "COMET_PROJECT_NAME", "COMET_EXPERIMENT_KEY"):
        monkeypatch.delenv(key, raising=False)
    # keep the archives small and the tests independent of this machine's environment
    monkeypatch.setenv("COMET_LOGGING_CONSOLE", "error")


def _messages(logger):
    """End the experiment (which writes the offline archive) and return its messages."""
    logger.experiment.end()
    (archive,) = glob.glob(os.path.join(logger.save_dir, f"{logger.version}*.zip"))
    with zipfile.ZipFile(archive) as zf:
        return [json.loads(line) for line in zf.read("messages.json").decode().splitlines() if line.strip()]


def _metrics(messages, name):
    return [
        (m["payload"]["metric"]["step"], m["payload"]["metric"]["epoch"], m["payload"]["metric"]["metricValue"])
        for m in messages
        if m["type"] == "metric_msg" and m["payload"]["metric"]["metricName"] == name
    ]


def _params(messages):
    out = {}
    for m in messages:
        if m["type"] != "parameter_msg":
            continue
        param = m["payload"].get("param") or m["payload"].get("params")  # nested ones come as "params"
        if param and param.get("source") == "manual":
            out[param["paramName"]] = param["paramValue"]
    return out


def test_offline_fit_records_params_and_metrics(tmp_path):
    logger = CometLogger(online=False, offline_directory=str(tmp_path / "comet"), project="proj", name="first")
    assert logger.name == "proj"
    assert logger.save_dir == str(tmp_path / "comet")
    assert len(logger.version) == 32  # the experiment exists from construction on
    assert type(logger.experiment).__name__ == "OfflineExperiment"
    trainer(logger, tmp_path).fit(TinyModel(nested={"opt": {"betas": [0.9, 0.99]}}))
    messages = _messages(logger)
    params = _params(messages)
    assert params["lr"] == 0.1
    assert params["nested|opt|betas"] == [0.9, 0.99]
    train = _metrics(messages, "train_loss")
    assert [s for s, _, _ in train] == list(range(8))
    assert [e for _, e, _ in train] == [0] * 4 + [1] * 4  # the trainer's `epoch` is Comet's epoch, not a metric
    assert train[-1][2] < train[0][2]
    assert [s for s, _, _ in _metrics(messages, "val_loss")] == [3, 7]
    assert _metrics(messages, "epoch") == []
    others = {m["payload"]["key"]: m["payload"]["value"] for m in messages if m["type"] == "log_other"}
    assert others["Name"] == "first" and others["Created from"] == "pytorch-lightning"


def test_prefix_and_lightning_25_argument_names(tmp_path):
    logger = CometLogger(offline=True, save_dir=str(tmp_path / "c"), project_name="old", experiment_name="n", prefix="p")
    assert type(logger.experiment).__name__ == "OfflineExperiment"  # offline=True means online=False
    assert logger.name == "old" and logger.save_dir == str(tmp_path / "c")
    logger.log_metrics({"loss": 0.5}, step=2)
    logger.finalize("success")
    assert _metrics(_messages(logger), "p_loss") == [(2, None, 0.5)]


def test_keyword_only_and_missing_library_message(monkeypatch):
    with pytest.raises(TypeError):
        CometLogger("key")  # noqa
    import featherlight.loggers._tracking as tracking

    monkeypatch.setattr(tracking, "_module_available", lambda name: False)
    with pytest.raises(ModuleNotFoundError, match=r"featherlight\[comet\]"):
        CometLogger(online=False)


def test_other_ranks_start_no_experiment(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = CometLogger(online=False, offline_directory=str(tmp_path / "comet"))
    assert logger._experiment is None and logger.version is None
    logger.log_metrics({"a": 1.0}, step=0)
    logger.log_hyperparams({"a": 1})
    logger.finalize("success")
    assert not os.path.exists(tmp_path / "comet")


def test_pickle_keeps_the_experiment_key(tmp_path):
    import pickle

    logger = CometLogger(online=False, offline_directory=str(tmp_path / "comet"))
    copy = pickle.loads(pickle.dumps(logger))
    assert copy._experiment is None and copy._experiment_key == logger.version
    logger.experiment.end()
