"""``python -m featherlight.plot`` / ``CSVLogger.plot()``: one PNG of every metric in ``metrics.csv``."""

import os
import struct
import subprocess
import sys

import pytest

from featherlight.loggers import CSVLogger
from featherlight.plot import _family, plot_metrics, read_metrics


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _log_run(tmp_path):
    logger = CSVLogger(tmp_path)
    for step in range(20):
        logger.log_metrics({"train_loss": 1.0 / (step + 1), "epoch": step // 10}, step=step)
        if step % 10 == 9:
            logger.log_metrics({"val_loss": 0.5 / (step + 1), "val_acc": step / 20, "epoch": step // 10}, step=step)
    return logger


def test_csv_logger_plot_draws_every_metric(tmp_path):
    pytest.importorskip("matplotlib")
    logger = _log_run(tmp_path)
    path = logger.plot()  # buffered rows are written first
    assert path == os.path.join(logger.log_dir, "metrics.png")
    width, height = _png_size(path)
    assert width > height > 100  # two panels side by side: loss (train+val) and acc
    series = read_metrics(logger.log_dir)
    assert sorted(series) == ["train_loss", "val_acc", "val_loss"]
    assert [s for s, _, _ in series["val_loss"]] == [9.0, 19.0]
    assert series["train_loss"][10][2] == 1.0  # the epoch of step 10


def test_family_groups_stages_and_reductions():
    assert {_family(n) for n in ["train_loss", "val_loss", "loss_epoch", "test/loss", "loss"]} == {"loss"}
    assert _family("val_acc") == "acc" and _family("lr-Adam") == "lr-Adam"


def test_command_line(tmp_path):
    pytest.importorskip("matplotlib")
    logger = _log_run(tmp_path)
    logger.save()
    out = tmp_path / "pics" / "curves.png"
    # a directory of versions: the newest is drawn
    result = subprocess.run(
        [sys.executable, "-m", "featherlight.plot", logger.root_dir, "-o", str(out)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == str(out)
    _png_size(out)
    missing = subprocess.run([sys.executable, "-m", "featherlight.plot", str(tmp_path / "nothing")], capture_output=True, text=True)
    assert missing.returncode == 1 and "No metrics.csv" in missing.stderr


def test_without_matplotlib_the_error_names_the_extra(tmp_path, monkeypatch):
    logger = _log_run(tmp_path)
    logger.save()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ModuleNotFoundError, match=r"featherlight\[plot\]"):
        plot_metrics(logger.log_dir)


def test_no_numbers_to_plot(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,step\n0,0\n")
    with pytest.raises(ValueError, match="no numeric metric"):
        plot_metrics(tmp_path)
