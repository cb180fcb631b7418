"""``ddp_spawn`` and ``ddp_fork``: the run happens in torch.multiprocessing workers, and rank 0's weights,
metrics, trainer state and checkpoint paths come back to the calling process."""
import json
import os
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "scripts"))

import fl_dist_models as models  # noqa: E402
from fl_dist_run import run_script  # noqa: E402


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork"])
def test_spawn_brings_results_back(tmp_path, strategy):
    # validate and predict with fork only: each spawn launch costs seconds (imports in every worker)
    extra = ["validate", "predict"] if strategy == "ddp_fork" else []
    code, output, _ = run_script("ddp_spawn_fit.py", tmp_path, strategy, *extra, cwd=tmp_path, timeout=180)
    assert code == 0, output[-6000:]
    r = json.load(open(tmp_path / "parent.json"))
    assert r["start_method"] == ("spawn" if strategy == "ddp_spawn" else "fork")
    # the parent's model holds the trained weights, equal to the single-process run on the global batch
    weights = {k: torch.tensor(v, dtype=torch.float64) for k, v in r["weights"].items()}
    reference = models.reference_weights(epochs=2)
    for k in reference:
        torch.testing.assert_close(weights[k], reference[k].double(), atol=1e-6, rtol=1e-5)
    assert r["global_step"] == 8 and r["current_epoch"] == 2 and r["status"] == "finished"
    assert r["metrics"]["rank_metric"] == pytest.approx(0.5)
    assert r["metrics"]["val_count"] == 5.0
    # the checkpoint callback's state comes back too (which epoch is best depends on the shuffled training order)
    best = os.path.basename(r["best_model_path"])
    assert best in ("epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt") and r["files"] == [best]
    assert r["best_model_score"] <= r["metrics"]["val_loss"] + 1e-6
    if best == "epoch=1-step=8.ckpt":
        assert r["best_model_score"] == pytest.approx(r["metrics"]["val_loss"])
    if extra:
        # validate in new workers with the weights the parent holds
        assert r["validate"][0]["val_count"] == 5.0
        assert r["validate"][0]["val_loss"] == pytest.approx(r["metrics"]["val_loss"], rel=1e-6)
        assert sorted(r["predicted_indices"]) == [0, 2, 4]  # rank 0's share of the 5 samples


def test_worker_failure_is_reported_quickly(tmp_path):
    """A worker raises while the other is busy outside any collective: it is stopped at once (not after
    torch's 30 s SIGTERM grace) and the parent raises with the worker's traceback. Fork and spawn share
    this path; fork starts faster."""
    code, output, _ = run_script("ddp_fail.py", tmp_path, 1, "raise_other_sleeps", "ddp_fork", cwd=tmp_path,
                                 timeout=120)
    finished = time.time()
    assert code != 0
    assert "RuntimeError: boom from rank 1" in output and "Traceback" in output
    assert finished - float(open(tmp_path / "raised_at").read()) < 15, "the other worker was not stopped quickly"

