"""A 2-rank job under ``torchrun --max-restarts``: with MODE=kill, rank 1 SIGKILLs itself once (a marker file
remembers it did) at global step KILL_STEP; the agent restarts both ranks and the fit resumes by itself from
the newest periodic checkpoint (no ckpt_path). MODE=reference runs uninterrupted.

    torchrun --nproc_per_node=2 --max-restarts=2 ... elastic_fit.py OUTDIR MODE KILL_STEP
"""
import os
import signal
import sys
from datetime import timedelta

import featherlight as L
from featherlight.callbacks import ModelCheckpoint
from featherlight.strategies import DDPStrategy
from fl_dist_models import FLAGS, Regressor, outdir_from_argv, save_json, state_to_lists, train_loader

out = outdir_from_argv()
mode, kill_step = sys.argv[2], int(sys.argv[3])
marker = os.path.join(out, "killed-once")


class KillOnce(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == 1 and trainer.global_step == kill_step and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    checkpoint = ModelCheckpoint(dirpath=os.path.join(out, "ckpts"), every_n_train_steps=3, save_top_k=1)
    callbacks = [checkpoint] + ([KillOnce()] if mode == "kill" else [])
    # a short collective timeout: on a loaded machine gloo's connection after a restart can stall; the worker then
    # fails within a minute and the agent restarts the group again, instead of waiting out the default 30 minutes
    strategy = DDPStrategy(timeout=timedelta(seconds=60))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=3, limit_val_batches=0,
                        default_root_dir=out, callbacks=callbacks, **FLAGS)
    model = Regressor()
    trainer.fit(model, train_loader(batch_size=2))
    save_json(out, f"rank{trainer.global_rank}.json", {
        "weights": state_to_lists(model.state_dict()), "global_step": trainer.global_step, "restarts": restarts,
        "resumed_from": trainer.ckpt_path,
    })
