import csv
import os
import sys

import pytest

import featherlight as L
from featherlight.callbacks import DeviceStatsMonitor
from featherlight.demos.boring_classes import BoringModel
from featherlight.loggers import CSVLogger
from featherlight.utilities.exceptions import MisconfigurationException


def fit(tmp_path, monitor, **kwargs):
    logger = CSVLogger(tmp_path)
    trainer = L.Trainer(default_root_dir=tmp_path, logger=logger, callbacks=[monitor], max_epochs=1,
                        limit_train_batches=4, limit_val_batches=2, log_every_n_steps=2, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, **kwargs)
    trainer.fit(BoringModel())
    if not os.path.exists(f"{logger.log_dir}/metrics.csv"):  # nothing was logged
        return []
    with open(f"{logger.log_dir}/metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("psutil_installed", [True, False])
def test_cpu_statistics_at_the_logging_interval(tmp_path, monkeypatch, psutil_installed):
    if not psutil_installed:
        monkeypatch.setitem(sys.modules, "psutil", None)  # the /proc fallback
    else:
        pytest.importorskip("psutil")
    rows = fit(tmp_path, DeviceStatsMonitor())
    key = "DeviceStatsMonitor.on_train_batch_end/cpu_percent"
    steps = [int(r["step"]) for r in rows if r.get(key)]
    assert steps == [1, 3]  # every log_every_n_steps=2 stepping batches, at the step other values use
    for hook in ("on_train_batch_start", "on_train_batch_end", "on_validation_batch_start"):
        for stat in ("cpu_percent", "cpu_vm_percent", "cpu_swap_percent"):
            values = [float(r[f"DeviceStatsMonitor.{hook}/{stat}"]) for r in rows
                      if r.get(f"DeviceStatsMonitor.{hook}/{stat}")]
            assert values and all(0.0 <= v <= 100.0 for v in values)


def test_cpu_stats_false_logs_nothing_on_the_cpu(tmp_path):
    rows = fit(tmp_path, DeviceStatsMonitor(cpu_stats=False))
    assert not any(k.startswith("DeviceStatsMonitor") for r in rows for k, v in r.items() if v)


def test_needs_a_logger(tmp_path):
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, callbacks=[DeviceStatsMonitor()], max_steps=1)
    with pytest.raises(MisconfigurationException, match="logger=False"):
        trainer.fit(BoringModel())
