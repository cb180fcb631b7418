"""WandbLogger against the real ``wandb`` package in offline mode (``WANDB_MODE=offline``: nothing leaves the
machine). The tests read what the run object recorded and the run's offline transaction log (``run-<id>.wandb``),
which ``wandb sync`` would upload."""

import glob
import json
import os
import struct
import sys
import time

import pytest
import torch

wandb = pytest.importorskip("wandb")

from featherlight.callbacks import ModelCheckpoint  # noqa: E402
from featherlight.loggers import WandbLogger  # noqa: E402
from featherlight.utilities.exceptions import MisconfigurationException  # noqa: E402
from featherlight.utilities.rank_zero import rank_zero_only  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from _tracker_models import TinyModel, trainer  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    # wandb reads its environment once per process setup: start afresh so that WANDB_MODE=offline applies
    wandb.teardown()
    yield
    if wandb.run is not None:
        wandb.finish()


# ---------------------------------------------------------------------------------------------------- offline log
def _records(run_dir):
    """The records of the run's offline transaction log, once wandb has written its ``exit`` record.

    The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of chunks, each
    with a 7-byte header (checksum, length, type: 1 full, 2 first, 3 middle, 4 last); each record is a protobuf
    ``wandb_internal_pb2.Record``.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    deadline = time.monotonic() + 60  # wandb's service process may still be writing right after finish()
    while True:
        records = _parse(open(path, "rb").read(), pb)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def _parse(data, pb):
    assert data[:4] == b":W&B"
    block, pos, chunks, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0:
            break
        chunk, pos = data[pos : pos + length], pos + length
        if kind == 1:
            chunks.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            chunks.append(pending + chunk)
    records = []
    for raw in chunks:
        record = pb.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


def _of(records, kind):
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def _history(records):
    rows = []
    for history in _of(records, "history"):
        rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in history.item})
    return rows


def _finish(logger):
    run = logger.experiment
    run_dir = os.path.dirname(run.dir)  # run.dir is <run dir>/files
    run.finish()
    return _records(run_dir)


# ---------------------------------------------------------------------------------------------------- end to end
def test_fit_logs_config_and_metrics_against_the_trainer_step(tmp_path):
    logger = WandbLogger(project="proj", name="first", save_dir=tmp_path / "out", tags=["t1"], group="g")
    t = trainer(logger, tmp_path)
    t.fit(TinyModel(nested={"opt": {"betas": [0.9, 0.99]}}))
    run = logger.experiment
    assert isinstance(run, wandb.Run)
    assert run.name == "first" and run.project == "proj"
    assert logger.name == "proj" and logger.version == run.id
    assert logger.save_dir == str(tmp_path / "out")
    assert run.settings.mode == "offline"
    assert list(run.tags) == ["t1"] and run.group == "g"  # extra kwargs went to wandb.init
    # hyperparameters in the run config, nested dicts kept
    assert run.config["lr"] == 0.1
    assert run.config["nested"] == {"opt": {"betas": [0.9, 0.99]}}
    assert run.summary["trainer/global_step"] == 7
    # the checkpoint directory is <save_dir>/<project>/<run id>/checkpoints, as in Lightning
    assert t.checkpoint_callback.dirpath == os.path.join(str(tmp_path / "out"), "proj", run.id, "checkpoints")

    run_dir = os.path.dirname(run.dir)
    assert run_dir.startswith(str(tmp_path / "out" / "wandb" / "offline-run-"))
    records = _finish(logger)
    train = [(r["trainer/global_step"], r["train_loss"]) for r in _history(records) if "train_loss" in r]
    assert [s for s, _ in train] == list(range(8))
    assert train[-1][1] < train[0][1]
    assert [r["trainer/global_step"] for r in _history(records) if "val_loss" in r] == [3, 7]
    # every metric is plotted against trainer/global_step
    metrics = {m.glob_name or m.name: m.step_metric for m in _of(records, "metric")}
    assert metrics == {"trainer/global_step": "", "*": "trainer/global_step"}
    config = {u.key: json.loads(u.value_json) for c in _of(records, "config") for u in c.update}
    config.update({u.key: json.loads(u.value_json) for r in _of(records, "run") for u in r.config.update})
    assert config["lr"] == 0.1 and config["nested"] == {"opt": {"betas": [0.9, 0.99]}}


def test_offline_flag_and_its_conflict_with_log_model(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    with pytest.raises(MisconfigurationException, match="offline"):
        WandbLogger(offline=True, log_model=True)
    logger = WandbLogger(offline=True, save_dir=tmp_path)
    logger.log_metrics({"a": 1.0}, step=3)
    assert logger.experiment.settings.mode == "offline"
    assert _history(_finish(logger))[-1]["a"] == 1.0


def test_version_and_id_name_the_run(tmp_path):
    logger = WandbLogger(version="run-abc", save_dir=tmp_path)
    assert logger.version == "run-abc"  # before the run starts: nothing is started to answer
    assert wandb.run is None
    assert logger.experiment.id == "run-abc"
    logger.experiment.finish()
    assert WandbLogger(id="run-xyz", save_dir=tmp_path).experiment.id == "run-xyz"


def test_project_defaults(tmp_path, monkeypatch):
    assert WandbLogger(save_dir=tmp_path).name == "lightning_logs"
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    assert WandbLogger(save_dir=tmp_path).name == "from-env"
    assert WandbLogger(save_dir=None, dir=tmp_path / "d").save_dir == str(tmp_path / "d")


def test_existing_runs_are_reused(tmp_path):
    run = wandb.init(project="mine", dir=tmp_path)
    assert WandbLogger(experiment=run).experiment is run
    with pytest.warns(UserWarning, match="already in progress"):
        assert WandbLogger(save_dir=tmp_path).experiment is run


def test_log_metrics_prefix_and_hyperparams_sanitized(tmp_path):
    import enum
    from argparse import Namespace

    class Color(enum.Enum):
        RED = 1

    logger = WandbLogger(save_dir=tmp_path, prefix="train")
    logger.log_metrics({"loss": 0.5}, step=4)
    logger.log_metrics({"loss": 0.25})  # no step: wandb carries the last trainer/global_step over (step_sync)
    logger.log_hyperparams(Namespace(act=torch.nn.ReLU, fn=len, color=Color.RED, t=torch.tensor(2.0), ns=Namespace(a=1)))
    config = logger.experiment.config
    assert (config["act"], config["fn"], config["color"], config["t"], config["ns"]) == ("ReLU", "len", "RED", 2.0, {"a": 1})
    history = _history(_finish(logger))
    assert [(r["trainer/global_step"], r["train-loss"]) for r in history] == [(4, 0.5), (4, 0.25)]
    assert [r["_step"] for r in history] == [0, 1]


# ---------------------------------------------------------------------------------------------------- media
def test_tables_text_and_media(tmp_path):
    np = pytest.importorskip("numpy")
    pytest.importorskip("PIL")
    logger = WandbLogger(save_dir=tmp_path)
    logger.log_table("tbl", columns=["a", "b"], data=[[1, "x"], [2, "y"]], step=1)
    logger.log_text("txt", columns=["text"], data=[["hello"]], step=1)
    images = [np.zeros((8, 8, 3), dtype=np.uint8), torch.rand(3, 8, 8)]
    logger.log_image("imgs", images, step=2, caption=["zeros", "random"])
    gif = tmp_path / "v.gif"
    from PIL import Image

    Image.new("RGB", (4, 4)).save(gif)
    logger.log_video("clip", [str(gif)], step=3)
    with pytest.raises(TypeError, match="must be a list"):
        logger.log_image("x", images[0])
    with pytest.raises(ValueError, match="Expected 2 items for `caption`"):
        logger.log_image("x", images, caption=["only one"])

    rows = _history(_finish(logger))  # media are nested values: their keys come flattened, "key/field"
    by_key = {key.split("/")[0]: row for row in rows for key in row if key.endswith("/_type")}
    assert by_key["tbl"]["tbl/_type"] == "table-file" and by_key["tbl"]["tbl/nrows"] == 2
    assert by_key["txt"]["txt/_type"] == "table-file"
    assert by_key["imgs"]["imgs/_type"] == "images/separated" and by_key["imgs"]["imgs/count"] == 2
    assert by_key["imgs"]["imgs/captions"] == ["zeros", "random"]
    assert by_key["imgs"]["trainer/global_step"] == 2
    assert by_key["clip"]["clip/_type"] == "videos"
    assert by_key["clip"]["trainer/global_step"] == 3


def test_audio(tmp_path):
    pytest.importorskip("soundfile")  # wandb.Audio needs it, even for a file
    logger = WandbLogger(save_dir=tmp_path)
    wav = tmp_path / "a.wav"
    _write_wav(wav)
    logger.log_audio("sound", [str(wav)], step=3, caption=["beep"])
    with pytest.raises(ValueError, match="Expected 1 items for `caption`"):
        logger.log_audio("sound", [str(wav)], caption=[])
    (row,) = [r for r in _history(_finish(logger)) if "sound/_type" in r]
    assert row["sound/_type"] == "audio" and row["trainer/global_step"] == 3


def _write_wav(path):
    import wave

    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(8000)
        f.writeframes(b"\x00\x01" * 800)


def test_watch_and_unwatch(tmp_path):
    logger = WandbLogger(save_dir=tmp_path)
    model = TinyModel()
    logger.watch(model, log="gradients", log_freq=1)
    assert model.layer.weight._backward_hooks or any(  # wandb hooks parameters (or the module)
        m._forward_hooks or m._backward_hooks for m in model.modules()
    )
    trainer(logger, tmp_path, max_epochs=1).fit(model)
    logger.unwatch(model)
    assert not model.layer.weight._backward_hooks
    keys = {key for row in _history(_finish(logger)) for key in row}
    # gradient histograms, under nested keys
    assert {"gradients/layer.weight/bins", "gradients/layer.bias/values"} <= keys


# ---------------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("policy", ["mutable", "immutable"])
def test_log_model_all_logs_each_checkpoint_as_an_artifact(tmp_path, policy):
    logger = WandbLogger(save_dir=tmp_path, log_model="all", checkpoint_name="ckpts", add_file_policy=policy)
    callback = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=1)
    trainer(logger, tmp_path, callbacks=[callback]).fit(TinyModel())
    artifacts = _of(_finish(logger), "artifact")
    assert [a.name for a in artifacts] == ["ckpts", "ckpts"]
    assert all(a.type == "model" for a in artifacts)
    metadata = [json.loads(a.metadata) for a in artifacts]
    assert [m["original_filename"] for m in metadata] == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    assert metadata[1]["ModelCheckpoint"]["monitor"] == "val_loss"
    assert metadata[1]["score"] == pytest.approx(float(callback.best_model_score))
    assert [sorted(a.aliases) for a in artifacts] == [["best", "latest"], ["best", "latest"]]
    assert [[entry.path for entry in a.manifest.contents] for a in artifacts] == [["model.ckpt"], ["model.ckpt"]]
    assert not [f for f in os.listdir(tmp_path / "ckpt") if f.startswith(".featherlight-upload")]


def test_log_model_true_logs_at_the_end_only_on_success(tmp_path):
    logger = WandbLogger(save_dir=tmp_path, log_model=True)
    callback = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=1, save_last=True)
    trainer(logger, tmp_path, callbacks=[callback]).fit(TinyModel())
    run_id = logger.experiment.id
    names = [json.loads(a.metadata)["original_filename"] for a in _of(_finish(logger), "artifact")]
    assert sorted(names) == ["epoch=1-step=8.ckpt", "last.ckpt"]
    assert logger._checkpoint_name == f"model-{run_id}"

    failing = WandbLogger(save_dir=tmp_path / "f", log_model=True)
    with pytest.raises(RuntimeError):
        trainer(failing, tmp_path / "f", callbacks=[ModelCheckpoint(dirpath=tmp_path / "f" / "ckpt")]).fit(
            TinyModel(fail_at_step=6)
        )
    assert _of(_finish(failing), "artifact") == []


# ---------------------------------------------------------------------------------------------------- ranks, pickling
def test_other_ranks_start_no_run(tmp_path, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = WandbLogger(save_dir=tmp_path / "out")
    logger.log_hyperparams({"a": 1})
    logger.log_metrics({"m": 1.0}, step=0)
    logger.log_image("x", [torch.zeros(3, 2, 2)])
    logger.experiment.log({"ignored": 1})  # a dummy experiment
    logger.finalize("success")
    assert wandb.run is None
    assert not os.path.exists(tmp_path / "out" / "wandb")


def test_pickle_keeps_the_run_id(tmp_path):
    import pickle

    logger = WandbLogger(save_dir=tmp_path)
    run_id = logger.experiment.id
    copy = pickle.loads(pickle.dumps(logger))
    assert copy._experiment is None
    assert copy.version == run_id
