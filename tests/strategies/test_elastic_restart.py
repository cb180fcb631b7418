"""A worker dies under ``torchrun --max-restarts``: the agent restarts the job and featherlight resumes by itself
from the newest periodic checkpoint every rank has; the final weights equal an uninterrupted run's, bit for bit."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "scripts"))

from fl_dist_run import SCRIPTS, free_port, load_ranks, run  # noqa: E402

SCRIPT = os.path.join(SCRIPTS, "elastic_fit.py")


def _torchrun(out, mode, kill_step=7):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--max-restarts=8",
               "--monitor-interval=0.2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
               SCRIPT, str(out), mode, str(kill_step)]
    out.mkdir(parents=True, exist_ok=True)
    code, output, _ = run(command, out, timeout=400)
    assert code == 0, output[-6000:]
    return load_ranks(out)


@pytest.mark.slow
def test_killed_worker_is_restarted_and_resumes_exactly(tmp_path):
    reference = _torchrun(tmp_path / "reference", "reference")
    killed = _torchrun(tmp_path / "killed", "kill")
    assert os.path.exists(tmp_path / "killed" / "killed-once")  # rank 1 really died once
    restarts = [r["restarts"] for r in killed]
    assert restarts[0] == restarts[1] >= 1  # (gloo may fail to connect on a loaded machine: the agent retries)
    assert all(r["resumed_from"] and r["resumed_from"].endswith(".ckpt") for r in killed)
    assert [r["resumed_from"] for r in reference] == [None, None]
    for ref, res in zip(reference, killed):
        assert res["global_step"] == ref["global_step"]
        assert res["weights"] == ref["weights"]  # exact, not close


def test_each_torchrun_attempt_gets_its_own_keys_in_the_agent_store(monkeypatch):
    """torchrun's agent store outlives a restart: what the failed attempt wrote (a rank's address) must not be read
    by the next one, or the restarted group connects to a dead port (the failure this test file once saw)."""
    from datetime import timedelta

    import torch.distributed as dist

    from featherlight.strategies.launch import elastic_attempt_store

    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    assert elastic_attempt_store(2, None) is None  # env:// builds a fresh store itself
    port = free_port()
    agent = dist.TCPStore("127.0.0.1", port, 3, is_master=True, wait_for_workers=False)  # the agent's
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    first = elastic_attempt_store(2, timedelta(seconds=10))
    first.set("rank_1", "old address")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    second = elastic_attempt_store(2, timedelta(seconds=10))
    assert not second.check(["rank_1"])
    second.set("rank_1", "new address")
    assert first.get("rank_1") == b"old address" and second.get("rank_1") == b"new address"
    del agent
