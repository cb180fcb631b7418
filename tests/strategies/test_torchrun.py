"""featherlight scripts under ``torchrun``: one node with two processes, and two localhost "nodes" with one
process each. featherlight must join the job torchrun created instead of launching processes itself."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "scripts"))

import fl_dist_models as models  # noqa: E402
from fl_dist_run import SCRIPTS, finish, free_port, load_ranks, run, start  # noqa: E402

SCRIPT = os.path.join(SCRIPTS, "torchrun_fit.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def _check(ranks, expected_nodes):
    reference = models.reference_weights(epochs=2)
    assert [r["global_rank"] for r in ranks] == [0, 1]
    assert [r["node_rank"] for r in ranks] == expected_nodes
    assert all(r["world_size"] == 2 for r in ranks)
    assert all(r["launcher_env"] is None for r in ranks)  # featherlight started no process of its own
    assert ranks[0]["pid"] != ranks[1]["pid"]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    for k, v in reference.items():
        torch.testing.assert_close(torch.tensor(ranks[0]["weights"][k], dtype=torch.float64), v.double(),
                                   atol=1e-6, rtol=1e-5)
    for r in ranks:
        assert r["metrics"]["rank_metric"] == pytest.approx(0.5)
        assert r["metrics"]["val_count"] == 5.0


def test_torchrun_one_node_two_processes(tmp_path):
    port = free_port()
    code, output, _ = run(TORCHRUN + ["--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}",
                                      SCRIPT, str(tmp_path), "2", "1"], cwd=tmp_path, timeout=180)
    assert code == 0, output[-6000:]
    ranks = load_ranks(tmp_path)
    assert [r["local_rank"] for r in ranks] == [0, 1]
    _check(ranks, [0, 0])


def test_torchrun_two_nodes_one_process_each(tmp_path):
    port = free_port()
    procs = [start(TORCHRUN + ["--nnodes=2", f"--node_rank={node}", "--nproc_per_node=1", "--master_addr=127.0.0.1",
                               f"--master_port={port}", SCRIPT, str(tmp_path), "1", "2"], tmp_path,
                   tmp_path / f"node{node}.log") for node in (0, 1)]
    timed_out, outputs = finish(procs, timeout=180)
    assert not timed_out and [p.returncode for p in procs] == [0, 0], "\n".join(o[-4000:] for o in outputs)
    ranks = load_ranks(tmp_path)
    assert [r["local_rank"] for r in ranks] == [0, 0]
    _check(ranks, [0, 1])
