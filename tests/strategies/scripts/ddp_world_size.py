"""Checkpoints that change world size: written by a 2-rank DDP job and resumed in one process, or the reverse.

    python ddp_world_size.py OUTDIR save        2 ranks: shuffled data, checkpoints every 3 steps and every
                                                epoch, SIGTERM to rank 0 (the job stops at batch 50, saving
                                                checkpoints/interrupted.ckpt and exiting non-zero)
    python ddp_world_size.py OUTDIR resume CKPT_DIR   2 ranks: resume the single-process checkpoints named in
                                                      RESUMES below (found in CKPT_DIR)

Every rank appends one line per training batch to ``ids_{run}_rank{R}.jsonl``: [epoch, batch_idx, global_step
after the batch, sample ids], flushed at once (a rank stopped by the launcher keeps what it wrote).
``resume`` also writes ``resume_rank{R}.json`` with each run's final weights and global step.
"""
import json
import os
import signal
import sys

from torch.utils.data import DataLoader

import featherlight as L
from featherlight.callbacks import ModelCheckpoint
from fl_dist_models import FLAGS, IndexedData, Regressor, outdir_from_argv, save_json, state_to_lists

out = outdir_from_argv()
mode = sys.argv[2]
N, BATCH = 32, 4
# (name, checkpoint file in CKPT_DIR, max_epochs)
RESUMES = [("from_single_mid_start0", "steps/epoch=1-step=9.ckpt", 2),
           ("from_single_mid", "steps/epoch=1-step=12.ckpt", 2),
           ("from_single_epoch", "epochs/epoch=0-step=8.ckpt", 2)]


def loader():
    return DataLoader(IndexedData(N), batch_size=BATCH, shuffle=True)


class RecordIds(L.Callback):
    """Which samples every training batch held, appended (and flushed) as the batch ends."""

    def __init__(self, path):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with open(self.path, "a") as f:
            f.write(json.dumps([trainer.current_epoch, batch_idx, trainer.global_step, batch[0].tolist()]) + "\n")


class SignalRankZero(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == 0 and trainer.progress.total_batch_idx == 9:
            os.kill(os.getpid(), signal.SIGTERM)  # the ranks agree on it at batch 50


def rank():
    return int(os.environ.get("RANK", 0))


if __name__ == "__main__":
    if mode == "save":
        callbacks = [RecordIds(os.path.join(out, f"ids_save_rank{rank()}.jsonl")), SignalRankZero(),
                     ModelCheckpoint(dirpath=os.path.join(out, "steps"), every_n_train_steps=3, save_top_k=-1),
                     ModelCheckpoint(dirpath=os.path.join(out, "epochs"), save_top_k=-1)]
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=13, limit_val_batches=0,
                            default_root_dir=out, callbacks=callbacks, **FLAGS)
        trainer.fit(Regressor(), loader())
        raise SystemExit("the job should have been interrupted")
    ckpt_dir = sys.argv[3]
    result = {}
    for name, ckpt, epochs in RESUMES:
        model = Regressor()
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=epochs, limit_val_batches=0,
                            enable_checkpointing=False, default_root_dir=out,
                            callbacks=[RecordIds(os.path.join(out, f"ids_{name}_rank{rank()}.jsonl"))], **FLAGS)
        trainer.fit(model, loader(), ckpt_path=os.path.join(ckpt_dir, ckpt))
        result[name] = {"weights": state_to_lists(model.state_dict()), "global_step": trainer.global_step}
    save_json(out, f"resume_rank{trainer.global_rank}.json", result)
