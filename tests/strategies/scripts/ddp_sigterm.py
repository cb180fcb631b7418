"""SIGTERM to one rank of a 2-rank DDP job: every rank stops at the same batch, a resumable checkpoint is
written, the job exits non-zero, and a resumed job ends where an uninterrupted one does.

    python ddp_sigterm.py OUTDIR MODE      MODE: interrupt | resume | reference

Each rank writes ``rank{R}.json`` with its final weights (resume/reference) or how it stopped (interrupt).
"""
import os
import signal

import featherlight as L
from fl_dist_models import FLAGS, Regressor, outdir_from_argv, save_json, state_to_lists, train_loader

out = outdir_from_argv()
mode = __import__("sys").argv[2]


class SignalRankZero(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == 0 and trainer.progress.total_batch_idx == 9:
            os.kill(os.getpid(), signal.SIGTERM)  # only rank 0 is told


if __name__ == "__main__":
    callbacks = [SignalRankZero()] if mode == "interrupt" else []
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=16, limit_val_batches=0,
                        default_root_dir=out, enable_checkpointing=False, callbacks=callbacks, **FLAGS)
    model = Regressor()
    ckpt = os.path.join(out, "checkpoints", "interrupted.ckpt") if mode == "resume" else None
    try:
        trainer.fit(model, train_loader(), ckpt_path=ckpt)
    except SystemExit as exc:
        save_json(out, f"rank{trainer.global_rank}.json",
                  {"exit": exc.code, "global_step": trainer.global_step, "batch": trainer.progress.total_batch_idx})
        raise
    save_json(out, f"rank{trainer.global_rank}.json",
              {"weights": state_to_lists(model.state_dict()), "global_step": trainer.global_step})
