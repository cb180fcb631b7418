import logging
import os
import warnings

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Each test runs in its own directory (lightning_logs/ etc. land there) with fresh global state."""
    monkeypatch.chdir(tmp_path)
    for key in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.delenv(key, raising=False)
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


def pytest_configure(config):
    # keep test output readable: the framework's INFO lines (seed set, fast_dev_run...) are not errors
    logging.getLogger("featherlight").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    os.environ.setdefault("PYTHONHASHSEED", "0")
