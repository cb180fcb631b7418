"""Two-rank DDP (``strategy="ddp"``: the script is started again for rank 1) on CPU with gloo.

One launch of ``scripts/ddp_fit.py`` runs fit, predict, a resumed fit and a SyncBatchNorm fit; the tests
below check its per-rank results against single-process references computed here.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "scripts"))

import fl_dist_models as models  # noqa: E402
from fl_dist_run import load_ranks, run_script  # noqa: E402


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_fit")
    code, output, _ = run_script("ddp_fit.py", out, cwd=out, timeout=180)
    assert code == 0, output[-6000:]
    return load_ranks(out), out, output


def _tensors(d):
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in d.items()}


def _assert_close(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k].double(), atol=atol, rtol=1e-5, msg=k)


def test_ranks_and_wrapper(ddp_run):
    ranks, _, _ = ddp_run
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 for r in ranks)
    assert all(r["ddp_type"] == "DistributedDataParallel" for r in ranks)
    assert all(r["sampler"] == "_ResumableDistributedSampler" for r in ranks)
    assert all(r["num_training_batches"] == 4 for r in ranks)  # 32 samples / 2 ranks / batch 4


def test_weights_equal_across_ranks_and_to_single_process(ddp_run):
    ranks, _, _ = ddp_run
    w0, w1 = _tensors(ranks[0]["weights"]), _tensors(ranks[1]["weights"])
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    _assert_close(w0, models.reference_weights(epochs=2))


def test_sync_dist_mean_across_ranks(ddp_run):
    ranks, _, _ = ddp_run
    for r in ranks:
        assert r["metrics"]["rank_metric"] == pytest.approx(0.5)  # mean of rank 0 and rank 1
    assert ranks[0]["metrics"]["train_loss"] == pytest.approx(ranks[1]["metrics"]["train_loss"])


def test_uneven_validation_counts_each_sample_once(ddp_run):
    ranks, _, _ = ddp_run
    assert sorted(r["num_val_batches"][0] for r in ranks) == [2, 3]  # 5 samples, no padding
    for r in ranks:
        assert r["metrics"]["val_count"] == 5.0
        assert r["metrics"]["val_index_sum"] == float(sum(range(models.N_VAL)))


def test_predict_returns_each_sample_once(ddp_run):
    ranks, _, _ = ddp_run
    union = ranks[0]["predicted_indices"] + ranks[1]["predicted_indices"]
    assert sorted(union) == list(range(models.N_PREDICT))


def test_no_extra_collective_per_training_step(ddp_run):
    ranks, _, _ = ddp_run
    for r in ranks:
        assert r["collectives_in_step"] and set(r["collectives_in_step"]) == {0}
        assert r["collectives_per_batch"] and set(r["collectives_per_batch"]) == {0}


def test_checkpoints_written_by_rank_zero_only_and_resumable(ddp_run):
    ranks, out, _ = ddp_run
    assert ranks[1]["checkpoint_writes"] == [] and ranks[1]["resumed_writes"] == []
    assert "last.ckpt" in ranks[0]["checkpoint_writes"]
    assert sorted(os.listdir(out / "ckpts")) == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]
    # resuming the 2-epoch run to epoch 3 equals 3 epochs in one process (momentum state restored too)
    assert all(r["resumed_global_step"] == 12 for r in ranks)
    _assert_close(_tensors(ranks[0]["resumed_weights"]), models.reference_weights(epochs=3))
    assert ranks[0]["resumed_weights"] == ranks[1]["resumed_weights"]


def test_mid_epoch_resume(ddp_run):
    ranks, out, _ = ddp_run
    assert sorted(os.listdir(out / "ckpts_mid")) == ["epoch=2-step=10.ckpt", "epoch=2-step=12.ckpt"]
    assert ranks[0]["resumed_writes"] == ["epoch=2-step=10.ckpt", "epoch=2-step=12.ckpt"]
    # resumed after batch 2 of epoch 2 (each rank's sampler skips its first 2 x 4 samples): the same weights
    for r in ranks:
        assert r["mid_resumed_step"] == 12
        _assert_close(_tensors(r["mid_resumed_weights"]), _tensors(r["resumed_weights"]))


def test_sync_batchnorm_matches_full_batch(ddp_run):
    ranks, _, _ = ddp_run
    assert all(r["bn_layer"] == "_GlooSyncBatchNorm" for r in ranks)  # during fit
    assert all(r["bn_layer_after"] == "BatchNorm1d" for r in ranks)  # plain again after it
    w0 = _tensors(ranks[0]["bn_weights"])
    assert ranks[0]["bn_weights"] == ranks[1]["bn_weights"]
    # synchronised statistics over 2 x 4 samples = batch norm over the 8-sample batch of one process
    _assert_close(w0, models.reference_weights(epochs=2, batchnorm=True), atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_ddp_nccl_16_mixed(tmp_path):
    code, output, _ = run_script("ddp_gpu.py", tmp_path, cwd=tmp_path, timeout=300)
    assert code == 0, output[-6000:]
    ranks = load_ranks(tmp_path)
    assert ranks[0]["backend"] == "nccl"
    assert ranks[0]["weights"] == ranks[1]["weights"]


def test_gradient_accumulation_syncs_once_per_window(ddp_run):
    ranks, _, _ = ddp_run
    # 4 batches, accumulate 2: gradients are all-reduced on batches 2 and 4 only (one bucket each)
    assert all(r["acc_hook_calls"] == 2 for r in ranks)
    _assert_close(_tensors(ranks[0]["acc_weights"]), models.reference_weights(epochs=1, accumulate_grad_batches=2))


def test_manual_optimization(ddp_run):
    ranks, _, _ = ddp_run
    assert ranks[0]["manual_weights"] == ranks[1]["manual_weights"]
    _assert_close(_tensors(ranks[0]["manual_weights"]), models.reference_weights(epochs=2))
    # two backward passes in one step: each must be all-reduced
    assert ranks[0]["two_optimizer_weights"] == ranks[1]["two_optimizer_weights"]
    _assert_close(_tensors(ranks[0]["two_optimizer_weights"]),
                  models.reference_weights(epochs=1, model=models.TwoOptimizerRegressor()))


@pytest.mark.parametrize(("fail_rank", "mode"), [(1, "raise_other_sleeps"), (0, "raise_other_sleeps"), (0, "sigkill")])
def test_failing_rank_ends_the_job_quickly(tmp_path, fail_rank, mode):
    """A rank that raises (or dies) stops every process within seconds, and its traceback is shown.

    ``raise_other_sleeps``: the healthy rank is busy outside any collective, so only the launcher's watch of
    its children (rank 1 failing) or the child's watch of its launcher (rank 0 failing) can stop it.
    """
    import time

    code, output, _ = run_script("ddp_fail.py", tmp_path, fail_rank, mode, cwd=tmp_path, timeout=120)
    finished = time.time()
    assert code != 0
    assert finished - float(open(tmp_path / "raised_at").read()) < 15, output[-3000:]
    if mode == "sigkill":
        assert "killed by signal 9" in output or code == -9
    else:
        assert f"RuntimeError: boom from rank {fail_rank}" in output and "Traceback" in output


def test_collectives(ddp_run):
    ranks, _, _ = ddp_run
    for r in ranks:
        c = r["collectives"]
        assert c["mean"] == [1.5] and c["sum"] == [3.0] and c["max"] == [2.0] and c["min"] == [1.0]
        assert c["input_kept"] == [r["rank"] + 1.0]  # reduce works on a copy
        assert c["gather"] == [[0, 0], [1, 10]]  # a new leading dimension of world size
        # d/dx_r of sum_j w_j * x_j over both ranks' graphs: w_r summed over the 2 ranks' losses
        assert c["gather_grad"] == [2.0, 20.0][r["rank"]]
        assert c["broadcast"] == {"from": 1}
        assert c["all_true"] is False and c["any_true"] is True


# ------------------------------------------------------------------ in-process: selection and environment detection
_JOB_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "TORCHELASTIC_RUN_ID",
             "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_JOB_NAME", "MASTER_ADDR",
             "MASTER_PORT")


@pytest.fixture
def no_job(monkeypatch):
    for key in _JOB_VARS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.mark.parametrize(("name", "method", "unused"), [
    ("ddp", "popen", False), ("ddp_spawn", "spawn", False), ("ddp_fork", "fork", False),
    ("ddp_notebook", "fork", False), ("ddp_find_unused_parameters_true", "popen", True),
    ("ddp_find_unused_parameters_false", "popen", False), ("auto", "popen", False),
])
def test_strategy_names(no_job, name, method, unused):
    import featherlight as L
    from featherlight.strategies import DDPStrategy

    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=name, logger=False)
    s = trainer.strategy
    assert type(s) is DDPStrategy and s.start_method == method
    assert s._ddp_kwargs["find_unused_parameters"] is unused
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (2, 0, 0, 0)
    assert trainer.num_devices == 2 and s.root_device == torch.device("cpu") and s.process_group_backend == "gloo"
    assert s.distributed_sampler_kwargs == {"num_replicas": 2, "rank": 0}


def test_strategy_instance_and_fsdp_name(no_job):
    import featherlight as L
    from featherlight.strategies import DDPStrategy, FSDPStrategy

    s = DDPStrategy(process_group_backend="gloo", static_graph=True)
    trainer = L.Trainer(accelerator="cpu", devices=3, num_nodes=2, strategy=s, logger=False)
    assert trainer.strategy is s and s.world_size == 6 and s._ddp_kwargs["static_graph"] is True
    assert isinstance(L.Trainer(accelerator="cpu", devices=2, strategy="fsdp", logger=False).strategy, FSDPStrategy)


def test_joins_torchrun_job(no_job):
    import featherlight as L

    for key, value in dict(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2", GROUP_RANK="1",
                           TORCHELASTIC_RUN_ID="x").items():
        no_job.setenv(key, value)
    trainer = L.Trainer(accelerator="cpu", devices=2, num_nodes=2, strategy="ddp", logger=False)
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (4, 3, 1, 1)
    from featherlight.utilities.exceptions import MisconfigurationException

    with pytest.raises(MisconfigurationException, match="torchrun .*4 processes.*devices=2 x num_nodes=1"):
        L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)


def test_joins_slurm_job(no_job):
    import featherlight as L
    from featherlight.strategies.launch import _first_slurm_host, env_job as _env_job

    for key, value in dict(SLURM_NTASKS="4", SLURM_PROCID="2", SLURM_LOCALID="0", SLURM_NODEID="1",
                           SLURM_JOB_NAME="train").items():
        no_job.setenv(key, value)
    trainer = L.Trainer(accelerator="cpu", devices=2, num_nodes=2, strategy="ddp", logger=False)
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (4, 2, 0, 1)
    no_job.setenv("SLURM_JOB_NAME", "bash")  # an interactive allocation: featherlight launches itself
    assert _env_job() is None
    assert _first_slurm_host("gpu[003-005,9],login1") == "gpu003"
    assert _first_slurm_host("node7,node8") == "node7"
    assert _first_slurm_host("a[1,4]") == "a1"


def test_script_command(monkeypatch):
    from featherlight.strategies.launch import _script_command

    main = sys.modules["__main__"]
    monkeypatch.setattr(main, "__spec__", SimpleSpec("pkg.train"), raising=False)
    monkeypatch.setattr(sys, "argv", ["ignored", "--lr", "1"])
    assert _script_command()[-4:] == ["-m", "pkg.train", "--lr", "1"]
    monkeypatch.setattr(main, "__spec__", SimpleSpec("pkg.__main__"), raising=False)
    assert _script_command()[-4:] == ["-m", "pkg", "--lr", "1"]
    monkeypatch.setattr(main, "__spec__", None, raising=False)
    monkeypatch.setattr(main, "__file__", __file__, raising=False)
    monkeypatch.setattr(sys, "argv", [os.path.relpath(__file__), "x"])
    assert _script_command()[-2:] == [os.path.abspath(__file__), "x"]


class SimpleSpec:
    def __init__(self, name):
        self.name = name


def test_parallel_strategy_is_the_base_lightning_code_checks():
    # Lightning's imagenet example divides its batch size by `num_processes` when the strategy is a ParallelStrategy
    from featherlight.pytorch.strategies import DDPStrategy, FSDPStrategy, ParallelStrategy, SingleDeviceStrategy

    ddp = DDPStrategy(parallel_devices=[torch.device("cpu")] * 2)
    assert isinstance(ddp, ParallelStrategy) and ddp.num_processes == 2
    assert issubclass(FSDPStrategy, ParallelStrategy) and not issubclass(SingleDeviceStrategy, ParallelStrategy)
    import featherlight as L

    assert not isinstance(L.Trainer(logger=False).strategy, ParallelStrategy)
