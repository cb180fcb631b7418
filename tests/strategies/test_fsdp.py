"""FSDP2 (``fully_shard``) with two ranks on CPU/gloo: FSDP2 runs on CPU in torch 2.13, so these are real runs.

One launch of ``scripts/fsdp_fit.py``: a sharded fit with gradient clipping, sharded and full checkpoints
through the strategy, resumes from each through ``ckpt_path`` (with the checkpoint.py integration the
strategy expects, emulated in the script), gradient accumulation, manual optimization and bf16-mixed.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "scripts"))

import fl_dist_models as models  # noqa: E402
from fl_dist_run import load_ranks, run_script  # noqa: E402

CLIP = 0.05


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp_fit")
    code, output, _ = run_script("fsdp_fit.py", out, cwd=out, timeout=240)
    assert code == 0, output[-6000:]
    return load_ranks(out), out


def _close(weights, reference, atol=1e-6):
    for k, v in reference.items():
        torch.testing.assert_close(torch.tensor(weights[k], dtype=torch.float64), v.double(), atol=atol, rtol=1e-5)


def test_module_is_sharded(fsdp_run):
    ranks, _ = fsdp_run
    for r in ranks:
        assert r["sharded_class"] == "FSDPRegressor" and r["param_type"] == "DTensor"
    n_params = sum(p.numel() for p in models.Regressor().parameters())
    assert ranks[0]["local_numel"] + ranks[1]["local_numel"] == n_params  # each rank holds its shard only
    assert ranks[0]["local_numel"] < n_params


def test_fit_with_clipping_matches_single_process(fsdp_run):
    ranks, _ = fsdp_run
    # the clipping norm is the global one: clipping per shard would give different weights
    _close(ranks[0]["weights"], models.reference_weights(epochs=2, gradient_clip_val=CLIP))
    for r in ranks:
        assert r["metrics"]["rank_metric"] == pytest.approx(0.5)
        # evaluation under FSDP pads uneven data (every rank must run every forward): 5 samples -> 3 per rank
        assert r["num_val_batches"] == [3] and r["metrics"]["val_count"] == 6.0


def test_sharded_and_full_checkpoints_resume(fsdp_run):
    ranks, _ = fsdp_run
    assert ranks[0]["sharded_files"] == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    reference = models.reference_weights(epochs=3, gradient_clip_val=CLIP)
    for name in ("sharded", "full"):
        assert all(r[f"resumed_{name}_step"] == 12 for r in ranks)
        _close(ranks[0][f"resumed_{name}"], reference)  # momentum buffers came back too


def test_accumulation_manual_optimization_and_bf16(fsdp_run):
    ranks, _ = fsdp_run
    _close(ranks[0]["acc_weights"],
           models.reference_weights(epochs=1, gradient_clip_val=CLIP, accumulate_grad_batches=2))
    _close(ranks[0]["manual_weights"], models.reference_weights(epochs=1))
    assert ranks[0]["bf16_finite"] and ranks[0]["bf16_policy"] == "torch.bfloat16"


def test_fsdp_strategy_is_lazy_and_validates_arguments():
    import subprocess

    code = ("import sys, featherlight, featherlight.strategies as s\n"
            "heavy = lambda: [m for m in sys.modules if 'fsdp' in m or 'distributed.tensor' in m "
            "or 'distributed.checkpoint' in m]\n"
            "assert not heavy(), heavy()\n"
            "s.DDPStrategy, s.FSDPStrategy\n"
            "assert not [m for m in heavy() if m.startswith('torch')], heavy()  # loaded when a run shards\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    from featherlight.strategies import FSDPStrategy
    from featherlight.utilities.exceptions import MisconfigurationException

    with pytest.raises(MisconfigurationException, match="sharding_strategy"):
        FSDPStrategy(sharding_strategy="NO_SUCH")
    with pytest.raises(MisconfigurationException, match="state_dict_type"):
        FSDPStrategy(state_dict_type="local")
    assert FSDPStrategy(sharding_strategy="SHARD_GRAD_OP").reshard_after_forward is False


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_fsdp_nccl_bf16(tmp_path):
    code, output, _ = run_script("fsdp_gpu.py", tmp_path, cwd=tmp_path, timeout=300)
    assert code == 0, output[-6000:]
