import logging
import os
import subprocess
import sys
import warnings

import pytest

from featherlight.utilities import rank_zero as rz
from featherlight.utilities.rank_zero import (
    FeatherlightDeprecationWarning,
    WarningCache,
    _get_rank,
    rank_zero_debug,
    rank_zero_deprecation,
    rank_zero_info,
    rank_zero_only,
    rank_zero_print,
    rank_zero_warn,
)

RANK_ZERO_FILE = rz.__file__


@pytest.fixture
def rank(monkeypatch):
    def set_rank(value):
        monkeypatch.setattr(rank_zero_only, "rank", value)

    return set_rank


@pytest.fixture
def captured_info(monkeypatch, caplog):
    # featherlight's package logger may not propagate to pytest's root handler (see _init_package_logging).
    monkeypatch.setattr(logging.getLogger("featherlight"), "propagate", True)
    caplog.set_level(logging.DEBUG, logger="featherlight")
    return caplog


def test_rank_zero_only_runs_only_on_rank_zero(rank):
    calls = []

    @rank_zero_only
    def fn(x):
        calls.append(x)
        return x * 2

    rank(0)
    assert fn(3) == 6
    rank(1)
    assert fn(4) is None
    assert calls == [3]
    assert fn.__name__ == "fn"


def test_rank_zero_only_default(rank):
    rank(2)
    assert rank_zero_only(lambda: 1, default="skipped")() == "skipped"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"JSM_NAMESPACE_RANK": "4"}, 4),
        ({"SLURM_PROCID": "3", "JSM_NAMESPACE_RANK": "4"}, 3),
        ({"LOCAL_RANK": "2", "SLURM_PROCID": "3"}, 2),
        ({"RANK": "1", "LOCAL_RANK": "2", "SLURM_PROCID": "3"}, 1),
        ({"RANK": "not-a-number", "LOCAL_RANK": "2"}, 2),
    ],
)
def test_get_rank_env_order(monkeypatch, env, expected):
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _get_rank() == expected


def _run_isolated(code, env_extra=None):
    """Run ``code`` in a fresh interpreter with rank_zero.py loaded standalone (no torch import: fast)."""
    prelude = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('featherlight.utilities.rank_zero', {RANK_ZERO_FILE!r})\n"
        "rz = importlib.util.module_from_spec(spec); spec.loader.exec_module(rz)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, env=env, timeout=60, check=True
    )


def test_rank_initialised_from_environment():
    assert _run_isolated("print(rz.rank_zero_only.rank)", {"LOCAL_RANK": "5"}).stdout.strip() == "5"
    assert _run_isolated("print(rz.rank_zero_only.rank)").stdout.strip() == "0"


def test_package_logging_shows_info_by_default():
    code = (
        "import logging\n"
        "rz._init_package_logging(); rz._init_package_logging()\n"
        "rz.rank_zero_info('hello info')\n"
        "logging.getLogger('featherlight.trainer').debug('hidden debug')\n"
    )
    result = _run_isolated(code)
    assert result.stderr.count("hello info") == 1  # visible, and not doubled by the second init call
    assert "hidden debug" not in result.stderr


def test_package_logging_defers_to_configured_root_logger():
    code = (
        "import logging\n"
        "logging.basicConfig(level=logging.WARNING, format='ROOT:%(message)s')\n"
        "rz._init_package_logging()\n"
        "pkg = logging.getLogger('featherlight')\n"
        "print(pkg.propagate, len(pkg.handlers), pkg.level == logging.INFO)\n"
        "logging.getLogger('featherlight.utilities.rank_zero').info('via root')\n"
    )
    result = _run_isolated(code)
    assert result.stdout.split() == ["True", "0", "True"]
    assert result.stderr.count("via root") == 1
    assert "ROOT:via root" in result.stderr


def test_rank_zero_warn_points_at_caller(rank):
    rank(0)
    with pytest.warns(UserWarning, match="careful") as record:
        rank_zero_warn("careful")
    assert record[0].filename == __file__
    with pytest.warns(RuntimeWarning, match="typed"):
        rank_zero_warn("typed", category=RuntimeWarning)


def test_rank_zero_warn_silent_on_other_ranks(rank):
    rank(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rank_zero_warn("nope")
        rank_zero_deprecation("nope")


def test_rank_zero_deprecation_category(rank):
    rank(0)
    assert issubclass(FeatherlightDeprecationWarning, DeprecationWarning)
    with pytest.warns(FeatherlightDeprecationWarning, match="old api") as record:
        rank_zero_deprecation("old api")
    assert record[0].filename == __file__


def test_rank_zero_info_and_debug(rank, captured_info):
    rank(0)
    rank_zero_info("info %s", "message")
    rank_zero_debug("debug message")
    rank(1)
    rank_zero_info("other rank")
    records = [(r.name, r.levelno, r.getMessage()) for r in captured_info.records]
    assert ("featherlight.utilities.rank_zero", logging.INFO, "info message") in records
    assert ("featherlight.utilities.rank_zero", logging.DEBUG, "debug message") in records
    assert all(msg != "other rank" for _, _, msg in records)
    # stacklevel: the record names this test as the origin, not rank_zero.py
    info_record = next(r for r in captured_info.records if r.getMessage() == "info message")
    assert info_record.pathname == __file__


def test_rank_zero_print(rank, capsys):
    rank(0)
    rank_zero_print("shown", 1)
    rank(3)
    rank_zero_print("hidden")
    assert capsys.readouterr().out == "shown 1\n"


def test_warning_cache_fires_once_per_message(rank):
    rank(0)
    cache = WarningCache()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            cache.warn("first")
            cache.warn("second", category=RuntimeWarning)
        cache.deprecation("third")
        cache.deprecation("third")
    assert [(str(w.message), w.category) for w in record] == [
        ("first", UserWarning),
        ("second", RuntimeWarning),
        ("third", FeatherlightDeprecationWarning),
    ]
    assert all(w.filename == __file__ for w in record)
    cache.clean()
    with pytest.warns(UserWarning, match="first"):
        cache.warn("first")


def test_warning_cache_info_once(rank, captured_info):
    rank(0)
    cache = WarningCache()
    for _ in range(3):
        cache.info("only once")
    assert [r.getMessage() for r in captured_info.records].count("only once") == 1
