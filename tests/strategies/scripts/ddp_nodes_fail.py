"""One "node" of a two-node job that featherlight launches itself (no torchrun): run once per node with
NODE_RANK, MASTER_ADDR and MASTER_PORT set, one process per node.

    python ddp_nodes_fail.py OUTDIR FAIL_NODE MODE

MODE: ``raise`` (the failing node's rank raises while the other is busy outside any collective),
``sigkill`` (the failing node's process is killed while the other is busy) or ``ok`` (nobody fails).
"""
import os
import signal
import sys
import time

import featherlight as L
from fl_dist_models import FLAGS, Regressor, outdir_from_argv, train_loader

out = outdir_from_argv()
fail_node, mode = int(sys.argv[2]), sys.argv[3]


class Failing(Regressor):
    def training_step(self, batch, batch_idx):
        if batch_idx == 2 and mode != "ok":
            if self.global_rank == fail_node:
                with open(os.path.join(out, "raised_at"), "w") as f:
                    f.write(repr(time.time()))
                if mode == "sigkill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"boom from node {fail_node}")
            time.sleep(120)  # busy outside any collective: only the node watch can stop this node
        return super().training_step(batch, batch_idx)


if __name__ == "__main__":
    trainer = L.Trainer(accelerator="cpu", devices=1, num_nodes=2, strategy="ddp", max_epochs=1,
                        enable_checkpointing=False, limit_val_batches=0, **FLAGS)
    trainer.fit(Failing(), train_loader())
    if trainer.global_rank == 1:
        time.sleep(1.5)  # the other node exits first: its end must not look like a failure here
    open(os.path.join(out, f"done{trainer.global_rank}"), "w").close()
