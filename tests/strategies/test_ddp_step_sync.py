"""Step-level ``self.log(..., sync_dist=True)`` under 2-rank DDP (real processes, gloo)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "scripts"))

from fl_dist_run import load_ranks, run_script  # noqa: E402


def test_step_values_logged_with_sync_dist_are_reduced_every_step(tmp_path):
    code, output, _ = run_script("ddp_step_sync.py", tmp_path, cwd=tmp_path, timeout=180)
    assert code == 0, output[-6000:]
    ranks = load_ranks(tmp_path)
    for rank, result in enumerate(ranks):
        assert len(result["steps"]) == 4  # 32 samples / 2 ranks / batch 4
        for step in result["steps"]:
            assert step["rank_mean_step"] == pytest.approx(0.5)  # mean of ranks 0 and 1, at every step
            assert step["rank_max"] == 1.0
            assert step["rank_local"] == float(rank)  # without sync_dist each rank keeps its own value
        assert result["epoch"]["rank_mean_epoch"] == pytest.approx(0.5)
