"""A two-node job launched by featherlight itself (each node started by hand, as without torchrun):
a failure on one node stops the other within seconds; a normal end is not mistaken for a failure."""
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "scripts"))

from fl_dist_run import SCRIPTS, clean_env, finish, free_port, start  # noqa: E402


def _two_nodes(tmp_path, fail_node, mode, timeout=90):
    port = str(free_port())
    procs = []
    for node in (0, 1):
        env = clean_env(NODE_RANK=str(node), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                        FEATHERLIGHT_NODE_TIMEOUT="5")
        command = [sys.executable, os.path.join(SCRIPTS, "ddp_nodes_fail.py"), str(tmp_path), str(fail_node), mode]
        procs.append(start(command, tmp_path, tmp_path / f"node{node}.log", env))
    timed_out, outputs = finish(procs, timeout)
    return timed_out, [p.returncode for p in procs], outputs


@pytest.mark.parametrize(("fail_node", "mode"), [(1, "raise"), (0, "raise"), (1, "sigkill"), (0, "sigkill")])
def test_a_failing_node_stops_the_other_quickly(tmp_path, fail_node, mode):
    timed_out, codes, outputs = _two_nodes(tmp_path, fail_node, mode)
    finished = time.time()
    assert not timed_out, outputs
    assert all(code != 0 for code in codes), (codes, outputs)
    # sigkill of a node is noticed by its silence (FEATHERLIGHT_NODE_TIMEOUT=5) or, for node 0, the store's loss
    assert finished - float(open(tmp_path / "raised_at").read()) < 20, outputs
    healthy = outputs[1 - fail_node]
    assert "[featherlight]" in healthy and f"stopping the processes of node {1 - fail_node}" in healthy, healthy
    if mode == "raise":
        assert f"RuntimeError: boom from node {fail_node}" in outputs[fail_node]
        assert f"boom from node {fail_node}" in healthy  # the failure's message reaches the other node


def test_a_normal_end_is_not_a_failure(tmp_path):
    timed_out, codes, outputs = _two_nodes(tmp_path, -1, "ok")
    assert not timed_out and codes == [0, 0], outputs
    assert (tmp_path / "done0").exists() and (tmp_path / "done1").exists()
    assert not any("stopping the processes" in o for o in outputs), outputs
