"""Failure watch across nodes, for jobs featherlight launched on several nodes itself.

``torchrun`` and SLURM watch their own multi-node jobs. When the user starts ``strategy="ddp"`` with
``num_nodes > 1`` by hand on each node (``NODE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), each node's
launcher (its local rank 0) only sees its own children, so a failure on another node would leave it
waiting in a collective until the timeout (NCCL) or, outside a collective, forever. Here every launcher
runs a daemon thread on the process group's own TCP store:

* it bumps its node's heartbeat counter every ``interval`` seconds;
* a launcher whose node fails writes the failure (rank, error, the end of the traceback) under one key;
  every other node sees it within an interval, prints it, stops its processes and exits with status 1;
* a node whose heartbeat has not moved for ``timeout`` seconds (a machine that died), or losing the store
  (node 0 hosts it), counts as a failure too.

A job that ends normally marks each node done at exit; node 0, which hosts the store, waits for the
others (bounded by ``timeout``) so that nobody mistakes the store going away for a failure.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable, Optional

_PREFIX = "featherlight/node_watch/"
_ABORT = _PREFIX + "abort"
_TIMEOUT_ENV = "FEATHERLIGHT_NODE_TIMEOUT"
_STORE_ERRORS_BEFORE_FAILURE = 4


class _NodeWatch:
    """One node launcher's view of the job (see the module docstring)."""

    def __init__(self, store: Any, node_rank: int, num_nodes: int, stop_node: Callable[[], None],
                 interval: float = 0.5, timeout: Optional[float] = None) -> None:
        self.store = store
        self.node_rank = node_rank
        self.num_nodes = num_nodes
        self.stop_node = stop_node  # kills this node's other processes
        self.interval = interval
        self.timeout = float(os.environ.get(_TIMEOUT_ENV, 60.0)) if timeout is None else timeout
        self.finishing = False
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="featherlight-node-watch", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ reporting
    def publish_failure(self, message: str) -> None:
        """Tell the other nodes this one failed (best effort: the store may be gone already). This node
        stops watching: it is ending already, with its own error."""
        self.finishing = True
        try:
            self.store.set(_ABORT, f"node {self.node_rank}: {message}")
        except Exception:
            pass

    def finish(self) -> None:
        """At a normal exit: mark this node done; node 0 waits for the others so the store outlives them."""
        self.finishing = True
        try:
            self.store.set(f"{_PREFIX}done/{self.node_rank}", "1")
            if self.node_rank != 0:
                return
            deadline = time.monotonic() + self.timeout
            others = [f"{_PREFIX}done/{n}" for n in range(1, self.num_nodes)]
            while others and time.monotonic() < deadline and not self.store.check([_ABORT]):
                others = [key for key in others if not self.store.check([key])]
                time.sleep(self.interval / 2)
        except Exception:
            pass

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        beats = {n: (-1, time.monotonic()) for n in range(self.num_nodes) if n != self.node_rank}
        errors = 0
        while not self.finishing:
            try:
                self.store.add(f"{_PREFIX}beat/{self.node_rank}", 1)
                if self.store.check([_ABORT]):
                    self._fail(self.store.get(_ABORT).decode(errors="replace"))
                now = time.monotonic()
                for node, (seen, since) in beats.items():
                    count = self.store.add(f"{_PREFIX}beat/{node}", 0)
                    if count != seen:
                        beats[node] = (count, now)
                    elif now - since > self.timeout and not self.store.check([f"{_PREFIX}done/{node}"]):
                        self._fail(f"node {node} has not been heard from for {self.timeout:.0f} s "
                                   f"(set {_TIMEOUT_ENV} to change this)")
                errors = 0
            except Exception as ex:  # the store is unreachable: node 0 (its host) is gone
                errors += 1
                if errors >= _STORE_ERRORS_BEFORE_FAILURE and not self.finishing:
                    self._fail(f"lost contact with the job's store on {os.environ.get('MASTER_ADDR')}:"
                               f"{os.environ.get('MASTER_PORT')} ({type(ex).__name__}); node 0 is gone")
            time.sleep(self.interval)

    def _fail(self, reason: str) -> None:
        if self.finishing:
            return
        sys.stderr.write(f"\n[featherlight] {reason}\n[featherlight] stopping the processes of node "
                         f"{self.node_rank}.\n")
        sys.stderr.flush()
        self.stop_node()
        os._exit(1)
