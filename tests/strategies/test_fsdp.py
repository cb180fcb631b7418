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


def _exact(weights, reference):
    for k, v in reference.items():
        assert torch.equal(torch.tensor(weights[k], dtype=torch.float64), torch.as_tensor(v).double()), k


@pytest.mark.parametrize("name", ["sharded", "full"])
def test_two_rank_checkpoints_resume_in_one_process_without_fsdp(fsdp_run, name):
    """A 2-rank FSDP checkpoint (a DCP directory, or one full file) in one process with SingleDeviceStrategy:
    read without a process group, weights exactly the saved full weights, optimizer states (keyed by parameter
    name) restored, training continues as the uninterrupted single-process run."""
    import featherlight as L
    from featherlight.strategies.strategy import SingleDeviceStrategy

    ranks, out = fsdp_run
    path = str(out / f"{name}.ckpt")
    _exact(ranks[0]["weights"], models.Regressor.load_from_checkpoint(path).state_dict())
    loaded = {}
    probe = L.Callback()
    probe.on_train_start = lambda trainer, m: loaded.update({k: v.clone() for k, v in m.state_dict().items()})
    model = models.Regressor()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=3, gradient_clip_val=CLIP, limit_val_batches=0,
                        enable_checkpointing=False, callbacks=[probe], **models.FLAGS)
    trainer.fit(model, models.train_loader(models.PER_RANK_BATCH * 2), ckpt_path=path)
    assert isinstance(trainer.strategy, SingleDeviceStrategy)
    _exact(ranks[0]["weights"], loaded)
    assert trainer.global_step == 12
    # two epochs by 2 ranks (shuffled by the DistributedSampler), the third in one process (in order)
    _close(models.state_to_lists(model.state_dict()),
           models.reference_weights(epochs=3, gradient_clip_val=CLIP, distributed=[True, True, False]))


def test_sharded_mid_epoch_checkpoint_resumes_in_one_process(fsdp_run):
    """Saved by 2 FSDP ranks after batch 1 of epoch 1 (samples 0-15 of the epoch's order done, 4 per rank per
    batch): one process trains on exactly the order's samples 16-31 in batches of 4, as the epoch's batches 4-7."""
    import torch.nn.functional as F

    import featherlight as L

    _, out = fsdp_run
    seen = []
    probe = L.Callback()
    probe.on_train_batch_end = lambda trainer, m, outputs, batch, i: seen.append((i, batch[0].tolist()))
    model = models.Regressor()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, gradient_clip_val=CLIP, limit_val_batches=0,
                        enable_checkpointing=False, callbacks=[probe], **models.FLAGS)
    trainer.fit(model, models.train_loader(), ckpt_path=str(out / "mid" / "epoch=1-step=6.ckpt"))
    order0, order1 = models.epoch_order(0), models.epoch_order(1)
    assert seen == [(4 + j, order1[16 + 4 * j:20 + 4 * j]) for j in range(4)]
    assert trainer.global_step == 10
    # the same steps in one process: 8-sample batches (2 ranks x 4) until the checkpoint, then 4-sample ones
    data, ref = models.IndexedData(models.N_TRAIN), models.Regressor()
    opt = torch.optim.SGD(ref.parameters(), lr=ref.lr, momentum=0.9)
    batches = [order0[i:i + 8] for i in range(0, 32, 8)] + [order1[i:i + 8] for i in range(0, 16, 8)]
    for ids in batches + [order1[i:i + 4] for i in range(16, 32, 4)]:
        ids = torch.tensor(list(ids))
        opt.zero_grad()
        F.mse_loss(ref(data.x[ids]), data.y[ids]).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), CLIP)
        opt.step()
    _close(models.state_to_lists(model.state_dict()), ref.state_dict())


def test_two_rank_checkpoints_resume_in_one_rank_fsdp(fsdp_run, tmp_path):
    ranks, out = fsdp_run
    code, output, _ = run_script("fsdp_world_size.py", tmp_path, "one", out, cwd=tmp_path, timeout=120)
    assert code == 0, output[-6000:]
    result = load_ranks(tmp_path, world=1, prefix="one_rank")[0]
    # one FSDP rank has no distributed sampler: its epoch (the third) reads in order
    reference = models.reference_weights(epochs=3, gradient_clip_val=CLIP, distributed=[True, True, False])
    for name in ("sharded", "full"):
        _exact(ranks[0]["weights"], {k: torch.tensor(v) for k, v in result[name]["loaded"].items()})
        assert result[name]["global_step"] == 12
        _close(result[name]["weights"], reference)


def test_single_process_checkpoint_resumes_in_two_rank_fsdp(tmp_path):
    """The reverse: a checkpoint of one process without FSDP (optimizer states keyed by position) resumed by 2 FSDP
    ranks; the sharded checkpoint they save then loads in one process again."""
    import featherlight as L

    model = models.Regressor()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, gradient_clip_val=CLIP, limit_val_batches=0,
                        enable_checkpointing=False, **models.FLAGS)
    trainer.fit(model, models.train_loader(models.PER_RANK_BATCH * 2))
    trainer.save_checkpoint(tmp_path / "single.ckpt")
    code, output, _ = run_script("fsdp_world_size.py", tmp_path, "two", tmp_path / "single.ckpt", cwd=tmp_path,
                                 timeout=120)
    assert code == 0, output[-6000:]
    ranks = load_ranks(tmp_path, prefix="two_rank")
    _exact(ranks[0]["single"]["loaded"], model.state_dict())
    assert all(r["single"]["global_step"] == 12 for r in ranks)
    _close(ranks[0]["single"]["weights"],
           models.reference_weights(epochs=3, gradient_clip_val=CLIP, distributed=[False, False, True]))
    assert (tmp_path / "resaved.ckpt" / ".metadata").is_file()
    again = models.Regressor.load_from_checkpoint(tmp_path / "resaved.ckpt")
    _exact(ranks[0]["single"]["weights"], again.state_dict())


def test_sharded_checkpoint_loading_never_runs_code_from_the_files(fsdp_run, tmp_path):
    """DCP's own reader unpickles ``.metadata`` and non-tensor values freely; featherlight's refuses anything off
    its allow-list and names the opt-in."""
    import pickle
    import shutil

    from featherlight.trainer.checkpoint import CheckpointError

    _, out = fsdp_run
    bad = tmp_path / "bad.ckpt"
    shutil.copytree(out / "sharded.ckpt", bad)

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    with open(bad / ".metadata", "wb") as f:
        pickle.dump(Boom(), f)
    with pytest.raises(CheckpointError, match="Refusing to load the sharded checkpoint.*weights_only=False") as err:
        models.Regressor.load_from_checkpoint(bad)
    assert err.value.reason == "unsafe" and not (tmp_path / "pwned").exists()
    shutil.rmtree(bad)
    (tmp_path / "not_a_ckpt").mkdir()
    with pytest.raises(CheckpointError, match="directory, not a checkpoint file.*FSDPStrategy"):
        models.Regressor.load_from_checkpoint(tmp_path / "not_a_ckpt")


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
