"""A sharded FSDP2 checkpoint taken inside a gradient accumulation window (2 real gloo ranks on CPU).

With ``accumulate_grad_batches=2`` the window's gradients live on each rank unreduced (FSDP reduce-scatters
only on the batch that closes the window). Before the fix they were not saved at all (the sharded parameters have
no gradients inside a window), so the resumed window lost its first half. The checkpoint now holds their mean over
the ranks as plain tensors in ``meta.pt`` (read by the safe loader, ``weights_only=True``): the same number of ranks,
one FSDP rank, or one process without FSDP continue the window as the uninterrupted run.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "scripts"))

import fl_dist_models as models  # noqa: E402
from fl_dist_run import load_ranks, run_script  # noqa: E402


@pytest.fixture(scope="module")
def window_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp_window")
    code, output, _ = run_script("fsdp_accumulation_resume.py", out, "two", cwd=out, timeout=240)
    assert code == 0, output[-6000:]
    return load_ranks(out, prefix="two_rank"), out


def _close(weights, reference, atol=1e-6):
    for k, v in reference.items():
        torch.testing.assert_close(torch.tensor(weights[k], dtype=torch.float64), torch.as_tensor(v).double(),
                                   atol=atol, rtol=1e-5)


def test_checkpoint_inside_window_resumes_exactly_with_same_world_size(window_run):
    ranks, out = window_run
    full, resumed = ranks[0]["full"], ranks[0]["resumed"]
    assert resumed["global_step"] == full["global_step"] == 4
    # the uninterrupted 2-rank run is the single-process one (global batch 8)
    _close(full["weights"], models.reference_weights(epochs=2, accumulate_grad_batches=2))
    _close(resumed["weights"], {k: torch.tensor(v) for k, v in full["weights"].items()})
    assert not any("accumulation window" in w for w in resumed["warnings"]), resumed["warnings"]


def test_checkpoint_inside_window_resumes_in_one_rank_fsdp(window_run, tmp_path):
    """2 -> 1 rank: the checkpoint holds the window's gradients averaged over the saving ranks (what FSDP adds to
    the sharded gradients when the window closes), so one rank with the global batch continues the window: no
    crash, no dropped gradients, the single-process result."""
    _, out = window_run
    code, output, _ = run_script("fsdp_accumulation_resume.py", tmp_path, "one", out / "window.ckpt",
                                 cwd=tmp_path, timeout=120)
    assert code == 0, output[-6000:]
    result = load_ranks(tmp_path, world=1, prefix="one_rank")[0]["resumed"]
    assert result["global_step"] == 4
    assert not any("rank 0's alone" in w or "dropped" in w for w in result["warnings"]), result["warnings"]
    # epoch 0 continues the 2 ranks' (shuffled) order; epoch 1, in one rank, reads in order
    _close(result["weights"], models.reference_weights(epochs=2, accumulate_grad_batches=2,
                                                       distributed=[True, False]))


def test_checkpoint_inside_window_is_safe_and_resumes_in_one_process_without_fsdp(window_run):
    """The sharded directory read by one process without FSDP (no process group, ``weights_only=True``): the
    window's gradients are plain full tensors, and training continues as the single-process run."""
    import featherlight as L
    from featherlight.io.dcp import read_sharded_checkpoint

    _, out = window_run
    path = str(out / "window.ckpt")
    loop = read_sharded_checkpoint(path, weights_only=True)["featherlight_loop"]
    assert loop["grads_averaged"] and loop["grads"]
    assert all(type(g) is torch.Tensor for g in loop["grads"].values())
    model = models.Regressor()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, accumulate_grad_batches=2, limit_val_batches=0,
                        enable_checkpointing=False, **models.FLAGS)
    trainer.fit(model, models.train_loader(models.PER_RANK_BATCH * 2), ckpt_path=path)
    assert trainer.global_step == 4
    _close(models.state_to_lists(model.state_dict()),
           models.reference_weights(epochs=2, accumulate_grad_batches=2, distributed=[True, False]))
