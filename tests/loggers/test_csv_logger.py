import os
from argparse import Namespace

import pytest
import torch
import yaml

from featherlight.loggers import CSVLogger
from featherlight.loggers.csv_logs import _ExperimentWriter
from featherlight.utilities.rank_zero import rank_zero_only


def _read(path):
    with open(path, "rb") as f:
        return f.read().decode()


def test_version_directories(tmp_path):
    logger = CSVLogger(tmp_path)
    assert logger.version == 0
    assert logger.name == "lightning_logs"
    assert logger.save_dir == str(tmp_path)
    assert logger.root_dir == os.path.join(str(tmp_path), "lightning_logs")
    assert logger.log_dir == os.path.join(str(tmp_path), "lightning_logs", "version_0")
    assert os.listdir(logger.log_dir) == []  # claimed (created empty) when the version was resolved, nothing written
    logger.log_metrics({"a": 1.0}, step=0)
    logger.save()
    assert os.path.isdir(logger.log_dir)

    (tmp_path / "lightning_logs" / "version_5").mkdir()
    assert CSVLogger(tmp_path).version == 6
    assert CSVLogger(tmp_path, version=2).log_dir.endswith(os.path.join("lightning_logs", "version_2"))
    assert CSVLogger(tmp_path, version="run-a").log_dir.endswith(os.path.join("lightning_logs", "run-a"))
    no_name = CSVLogger(tmp_path / "flat", name=None)
    assert no_name.name == ""
    assert no_name.log_dir == os.path.join(str(tmp_path / "flat"), "version_0")


def test_metrics_csv_header_and_rows(tmp_path):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=1000)
    logger.log_metrics({"loss": 0.5, "epoch": 0}, step=0)
    logger.log_metrics({"loss": 0.25, "epoch": 0}, step=1)
    logger.save()
    path = os.path.join(logger.log_dir, "metrics.csv")
    assert _read(path) == "epoch,loss,step\r\n0,0.5,0\r\n0,0.25,1\r\n"

    # no new key: rows are appended
    logger.log_metrics({"loss": 0.125}, step=2)
    logger.save()
    assert _read(path) == "epoch,loss,step\r\n0,0.5,0\r\n0,0.25,1\r\n,0.125,2\r\n"

    # a new key widens the header and rewrites the file, keeping earlier rows
    logger.log_metrics({"acc": 0.75, "epoch": 1}, step=3)
    logger.finalize("success")
    assert _read(path) == (
        "acc,epoch,loss,step\r\n,0,0.5,0\r\n,0,0.25,1\r\n,,0.125,2\r\n0.75,1,,3\r\n"
    )
    assert not [f for f in os.listdir(logger.log_dir) if f.endswith(".tmp")]


def test_tensors_become_numbers(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"f": torch.tensor(1.5), "i": torch.tensor(3), "plain": 2.0}, step=0)
    row = logger.experiment.metrics[0]
    assert row == {"f": 1.5, "i": 3, "plain": 2.0, "step": 0}
    assert type(row["f"]) is float and type(row["i"]) is int
    logger.save()
    assert _read(os.path.join(logger.log_dir, "metrics.csv")) == "f,i,plain,step\r\n1.5,3,2.0,0\r\n"


def test_step_defaults_to_row_count(tmp_path):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=2)
    for value in (1, 2, 3):
        logger.log_metrics({"x": value})
    logger.save()
    assert _read(os.path.join(logger.log_dir, "metrics.csv")) == "step,x\r\n0,1\r\n1,2\r\n2,3\r\n"


def test_flush_every_n_steps(tmp_path):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=3)
    path = os.path.join(logger.log_dir, "metrics.csv")
    logger.log_metrics({"x": 0}, step=0)
    logger.log_metrics({"x": 1}, step=1)
    assert not os.path.exists(path)
    logger.log_metrics({"x": 2}, step=2)  # (2 + 1) % 3 == 0
    assert _read(path).count("\r\n") == 4
    logger.log_metrics({"x": 3}, step=3)
    assert _read(path).count("\r\n") == 4
    logger.finalize("success")
    assert _read(path).count("\r\n") == 5


def test_prefix(tmp_path):
    logger = CSVLogger(tmp_path, prefix="train")
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()
    assert _read(os.path.join(logger.log_dir, "metrics.csv")) == "step,train-loss\r\n0,1.0\r\n"


def test_hparams_yaml(tmp_path):
    logger = CSVLogger(tmp_path)
    hparams_file = os.path.join(logger.log_dir, "hparams.yaml")
    logger.log_hyperparams({"lr": 0.1, "layers": 2})
    with open(hparams_file) as f:
        assert yaml.safe_load(f) == {"lr": 0.1, "layers": 2}
    logger.log_hyperparams(Namespace(batch_size=8))
    with open(hparams_file) as f:
        assert yaml.safe_load(f) == {"lr": 0.1, "layers": 2, "batch_size": 8}
    os.remove(hparams_file)
    logger.save()  # save() restores a missing hparams file
    with open(hparams_file) as f:
        assert yaml.safe_load(f) == {"lr": 0.1, "layers": 2, "batch_size": 8}


def test_no_hparams_file_without_hparams(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"x": 1}, step=0)
    logger.finalize("success")
    assert os.listdir(logger.log_dir) == ["metrics.csv"]


def test_finalize_without_logging_creates_nothing(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.finalize("success")
    assert not os.path.exists(os.path.join(str(tmp_path), "lightning_logs"))


def test_non_zero_rank_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = CSVLogger(tmp_path)
    logger.log_hyperparams({"a": 1})
    logger.log_metrics({"x": 1.0}, step=0)
    logger.save()
    logger.finalize("success")
    assert not isinstance(logger.experiment, _ExperimentWriter)
    assert os.listdir(tmp_path) == []


def test_existing_log_dir_is_overwritten_with_warning(tmp_path):
    log_dir = tmp_path / "lightning_logs" / "version_0"
    log_dir.mkdir(parents=True)
    (log_dir / "metrics.csv").write_text("old,content\n1,2\n")
    logger = CSVLogger(tmp_path, version=0)
    with pytest.warns(UserWarning, match="not empty"):
        logger.log_metrics({"x": 1}, step=0)
    logger.save()
    assert _read(str(log_dir / "metrics.csv")) == "step,x\r\n0,1\r\n"


def _lightning_and_featherlight_outputs(tmp_path, script):
    lightning_loggers = pytest.importorskip("lightning.pytorch.loggers")
    outputs = []
    for cls, sub in ((lightning_loggers.CSVLogger, "lt"), (CSVLogger, "fl")):
        logger = cls(tmp_path / sub, **script.get("kwargs", {}))
        for metrics, step in script["calls"]:
            if metrics == "save":
                logger.save()
            else:
                logger.log_metrics(dict(metrics), step=step)
        logger.finalize("success")
        rel = os.path.relpath(logger.log_dir, tmp_path / sub)
        outputs.append((rel, _read(os.path.join(logger.log_dir, "metrics.csv"))))
    return outputs


@pytest.mark.parametrize(
    "script",
    [
        {
            "kwargs": {"flush_logs_every_n_steps": 2},
            "calls": [
                ({"b": torch.tensor(1.5), "a": 2}, 0),
                ({"a": 3, "epoch": 0}, 1),
                ({"c": 3.25, "b": 1 / 3}, 2),
                ({"a": 1e-9, "b": float("nan"), "epoch": 1}, 3),
                ({"zz": 1e20, "a": True, "i": torch.tensor(7)}, 5),
                ("save", None),
                ({"a": -0.0, "val/loss": float("inf")}, 6),
            ],
        },
        {
            "kwargs": {"name": "exp", "version": 3, "prefix": "p", "flush_logs_every_n_steps": 100},
            "calls": [({"loss": 0.1 * i, "epoch": i // 3}, i) for i in range(250)],
        },
        {"kwargs": {"name": None, "version": "custom"}, "calls": [({"x": 1}, 0), ({"y": 2}, 10)]},
    ],
)
def test_metrics_csv_matches_lightning_byte_for_byte(tmp_path, script):
    (lt_dir, lt_csv), (fl_dir, fl_csv) = _lightning_and_featherlight_outputs(tmp_path, script)
    assert fl_dir == lt_dir
    assert fl_csv == lt_csv


# ---------------------------------------------------------------------------------------------- fsspec URLs
def test_remote_save_dir_writes_metrics_and_hparams():
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    root = "memory://featherlight-csv-remote"
    for expected_version in (0, 1):  # versions are found on the remote file system too
        logger = CSVLogger(save_dir=root)
        assert logger.version == expected_version
        assert logger.log_dir == f"{root}/lightning_logs/version_{expected_version}"
        logger.log_hyperparams({"lr": 0.1})
        logger.log_metrics({"loss": 1.0}, step=0)
        logger.save()
        logger.log_metrics({"loss": 0.5, "acc": 0.9}, step=1)  # a new column: the file is written anew
        logger.log_metrics({"loss": 0.25}, step=2)
        logger.finalize("success")
    text = fs.cat(f"{root}/lightning_logs/version_1/metrics.csv").decode()
    assert text.splitlines() == ["acc,loss,step", ",1.0,0", "0.9,0.5,1", ",0.25,2"]
    from featherlight.core.saving import load_hparams_from_yaml

    assert load_hparams_from_yaml(f"{root}/lightning_logs/version_1/hparams.yaml") == {"lr": 0.1}
    assert not os.path.exists("memory:")  # nothing went to a local folder named after the URL


def test_trainer_logs_and_checkpoints_to_a_remote_save_dir(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    import featherlight as fl
    from featherlight.callbacks import ModelCheckpoint
    from featherlight.demos.boring_classes import BoringModel

    fs = fsspec.filesystem("memory")
    root = "memory://featherlight-csv-trainer"
    trainer = fl.Trainer(default_root_dir=tmp_path, logger=CSVLogger(root), max_epochs=2, limit_train_batches=2,
                         limit_val_batches=1, log_every_n_steps=1, enable_progress_bar=False,
                         callbacks=[ModelCheckpoint(monitor="step", mode="max", save_top_k=1)])

    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            self.log("train_loss", out["loss"])
            return out

    trainer.fit(Model())
    log_dir = f"{root}/lightning_logs/version_0"
    assert trainer.log_dir == log_dir
    rows = fs.cat(f"{log_dir}/metrics.csv").decode().splitlines()
    assert rows[0].split(",") == ["epoch", "step", "train_loss"] and len(rows) == 5
    # the checkpoint went next to the logs, and the dropped top-k file was removed there too
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(f"{log_dir}/checkpoints", detail=False)] == ["epoch=1-step=4.ckpt"]
    assert not os.path.exists("memory:")
