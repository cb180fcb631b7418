"""Runs started at the same time in one directory each get their own ``version_N`` (CSVLogger, TensorBoardLogger)."""
import csv
import multiprocessing

import pytest

from featherlight.loggers import CSVLogger, TensorBoardLogger
from featherlight.utilities.rank_zero import rank_zero_only


@pytest.mark.parametrize("cls", [CSVLogger, TensorBoardLogger])
def test_two_loggers_resolving_their_version_one_after_the_other_get_different_versions(tmp_path, cls):
    first, second = cls(tmp_path), cls(tmp_path)  # both created before either wrote anything
    assert first.version == 0
    assert (tmp_path / "lightning_logs" / "version_0").is_dir()  # claimed when resolved
    assert second.version == 1
    assert first.log_dir != second.log_dir


@pytest.mark.parametrize("cls", [CSVLogger, TensorBoardLogger])
def test_versions_continue_after_the_highest_existing_one(tmp_path, cls):
    (tmp_path / "lightning_logs" / "version_3").mkdir(parents=True)
    (tmp_path / "lightning_logs" / "version_1").mkdir()
    assert cls(tmp_path).version == 4


@pytest.mark.parametrize("cls", [CSVLogger, TensorBoardLogger])
def test_an_explicit_version_is_shared_as_in_lightning(tmp_path, cls):
    first, second = cls(tmp_path, version=0), cls(tmp_path, version=0)
    assert first.version == second.version == 0 and first.log_dir == second.log_dir
    assert cls(tmp_path, version="run-a").log_dir == cls(tmp_path, version="run-a").log_dir


def test_other_ranks_do_not_create_a_version_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = CSVLogger(tmp_path)
    assert logger.version == 0
    assert not (tmp_path / "lightning_logs" / "version_0").exists()


def _log_from_a_process(save_dir, who, barrier, results):
    barrier.wait()  # both processes resolve their version at the same moment
    logger = CSVLogger(save_dir, flush_logs_every_n_steps=1)
    logger.log_metrics({"who": who}, step=0)
    logger.finalize("success")
    results.put((who, logger.version))


def test_two_processes_started_together_write_separate_metrics_files(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for attempt in range(5):  # the race is real: several rounds make a lost claim likely without the fix
        save_dir = str(tmp_path / f"round{attempt}")
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_log_from_a_process, args=(save_dir, who, barrier, results)) for who in (1, 2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        versions = dict(results.get(timeout=10) for _ in procs)
        assert sorted(versions.values()) == [0, 1]
        for who, version in versions.items():
            with open(f"{save_dir}/lightning_logs/version_{version}/metrics.csv") as f:
                rows = list(csv.DictReader(f))
            assert [float(r["who"]) for r in rows] == [who]  # its own metrics, not overwritten by the other run
