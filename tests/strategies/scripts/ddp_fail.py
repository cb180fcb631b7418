"""A rank fails mid-training; the job must end quickly and show that rank's traceback.

    python ddp_fail.py OUTDIR FAIL_RANK MODE [STRATEGY]

MODE: ``raise`` (the other rank is in a collective), ``raise_other_sleeps`` (the other rank is busy in
Python, not in a collective, so only the launcher's watch can stop it) or ``sigkill`` (the failing rank is
killed by SIGKILL while the other sleeps). Writes ``raised_at`` (a time.time() stamp) just before failing.
"""
import os
import signal
import sys
import time

import featherlight as L
from fl_dist_models import FLAGS, Regressor, outdir_from_argv, train_loader

out = outdir_from_argv()
fail_rank, mode = int(sys.argv[2]), sys.argv[3]
strategy = sys.argv[4] if len(sys.argv) > 4 else "ddp"


class Failing(Regressor):
    def training_step(self, batch, batch_idx):
        if batch_idx == 2:
            if self.global_rank == fail_rank:
                with open(os.path.join(out, "raised_at"), "w") as f:
                    f.write(repr(time.time()))
                if mode == "sigkill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"boom from rank {fail_rank}")
            if mode in ("raise_other_sleeps", "sigkill"):
                time.sleep(120)
        return super().training_step(batch, batch_idx)


if __name__ == "__main__":
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=50, enable_checkpointing=False,
                        limit_val_batches=0, **FLAGS)
    trainer.fit(Failing(), train_loader())
