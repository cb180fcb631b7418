"""NeptuneLogger against the real ``neptune`` client (>= 1.0) in its ``debug`` mode (everything in memory, readable
back) and ``offline`` mode (an operation log under ``.neptune/``). Neptune's hosted service is gone, so nothing
online is tested."""

import os
import sys

import pytest

pytest.importorskip("neptune")

import neptune  # noqa: E402

from featherlight.callbacks import ModelCheckpoint  # noqa: E402
from featherlight.loggers import NeptuneLogger  # noqa: E402
from featherlight.utilities.rank_zero import rank_zero_only  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from _tracker_models import TinyModel, trainer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::Warning:neptune.*")


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.delenv("NEPTUNE_API_TOKEN", raising=False)
    monkeypatch.setenv("NEPTUNE_PROJECT", "ws/proj")


def _values(run, key):
    # (debug mode numbers the points of a series itself, whatever step they were appended with)
    return list(run[key].fetch_values()["value"])


def _operations(root):
    """The operations of the one offline run under ``root/.neptune/offline``: JSON lines in ``data-*.log``."""
    import json

    (run_dir,) = os.listdir(root / ".neptune" / "offline")
    run_dir = root / ".neptune" / "offline" / run_dir
    ops = []
    for name in sorted(f for f in os.listdir(run_dir) if f.startswith("data-")):
        ops.extend(json.loads(line)["obj"] for line in open(run_dir / name) if line.strip())
    return ops


def test_debug_mode_fit_records_everything(tmp_path):
    logger = NeptuneLogger(mode="debug", name="first", tags=["t"], capture_hardware_metrics=False)
    callback = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=1, save_last=True)
    trainer(logger, tmp_path, callbacks=[callback]).fit(TinyModel(nested={"opt": {"b": 2}}, lr=0.5))
    run = logger.experiment
    assert isinstance(run, neptune.Run)
    assert logger.name == "first" and logger.version == run["sys/id"].fetch()
    assert run["sys/tags"].fetch() == {"t"}
    assert run["training/hyperparams/lr"].fetch() == 0.5
    assert run["training/hyperparams/nested/opt/b"].fetch() == 2
    assert run["training/hyperparams/fail_at_step"].fetch() == -1
    train = _values(run, "training/train_loss")
    assert len(train) == 8 and train[-1] < train[0]
    assert len(_values(run, "training/val_loss")) == 2
    assert run["training/status"].fetch() == "success"
    # checkpoints: only those the callback keeps are in the run
    structure = run.get_structure()["training"]["model"]["checkpoints"]
    assert sorted(structure) == ["epoch=1-step=8", "last"]
    assert run["training/model/best_model_path"].fetch() == callback.best_model_path
    assert run["training/model/best_model_score"].fetch() == pytest.approx(float(callback.best_model_score))
    assert logger.save_dir == os.path.join(os.getcwd(), ".neptune")
    run.stop()


def test_failed_fit_records_the_status():
    logger = NeptuneLogger(mode="debug", capture_hardware_metrics=False, log_model_checkpoints=False)
    with pytest.raises(RuntimeError):
        trainer(logger, os.getcwd()).fit(TinyModel(fail_at_step=3))
    assert logger.run["training/status"].fetch() == "failed"
    assert len(_values(logger.run, "training/train_loss")) == 3
    logger.run.stop()


def test_offline_fit_writes_the_operation_log_with_steps(tmp_path):
    logger = NeptuneLogger(mode="offline", capture_hardware_metrics=False, log_model_checkpoints=False)
    trainer(logger, tmp_path).fit(TinyModel())
    logger.log_hyperparams({"fn": len})
    assert logger.version == "OFFLINE" and logger.name == "offline-name"
    logger.run.stop()
    ops = _operations(tmp_path)

    def points(name):
        return [
            (v["step"], v["value"])
            for op in ops
            if op["type"] == "LogFloats" and op["path"] == ["training", name]
            for v in op["values"]
        ]

    assert [s for s, _ in points("train_loss")] == list(range(8))
    assert [s for s, _ in points("val_loss")] == [3, 7]
    assigned = {"/".join(op["path"]): op.get("value") for op in ops if op["type"].startswith("Assign")}
    assert assigned["training/hyperparams/lr"] == 0.1
    assert assigned["training/hyperparams/fn"] == "len"
    assert assigned["training/status"] == "success"


def test_existing_run_and_handler(tmp_path):
    run = neptune.init_run(mode="debug", capture_hardware_metrics=False)
    logger = NeptuneLogger(run=run["finetune"], prefix="")
    logger.log_metrics({"acc": 0.5}, step=0)
    assert run["finetune/acc"].fetch_last() == 0.5
    with pytest.raises(ValueError, match="cannot be"):
        NeptuneLogger(run=run, name="other")
    with pytest.raises(ValueError, match="must be a `neptune.Run`"):
        NeptuneLogger(run="not a run")
    with pytest.raises(TypeError):
        NeptuneLogger("key")  # noqa - keyword-only
    run.stop()


def test_log_model_summary():
    logger = NeptuneLogger(mode="debug", capture_hardware_metrics=False)
    logger.log_model_summary(TinyModel())
    logger.run["training/model/summary"].download(destination="summary.txt")
    assert "layer" in open("summary.txt").read()
    logger.run.stop()


def test_other_ranks_create_no_run(monkeypatch, tmp_path):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = NeptuneLogger(mode="offline")
    logger.log_metrics({"a": 1.0}, step=0)
    logger.log_hyperparams({"a": 1})
    logger.after_save_checkpoint(ModelCheckpoint())
    logger.finalize("success")
    assert logger._run_instance is None
    assert not os.path.exists(tmp_path / ".neptune")
