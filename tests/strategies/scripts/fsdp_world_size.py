"""FSDP checkpoints resumed with another number of processes.

    python fsdp_world_size.py OUTDIR one CKPT_DIR   1-rank FSDP: resume CKPT_DIR/sharded.ckpt and
                                                   CKPT_DIR/full.ckpt (written by 2 ranks) to epoch 3
    python fsdp_world_size.py OUTDIR two CKPT      2-rank FSDP: resume CKPT (written by one process without FSDP)
                                                   to epoch 3, then save it sharded

The data is the same as in ``fsdp_fit.py`` seen by one process: batches of 8 (4 per rank with 2 ranks), so every
run matches ``fl_dist_models.reference_weights``. Each rank writes ``{mode}_rank{R}.json``.
"""
import os
import sys

import torch

import featherlight as L
from featherlight.callbacks import Callback
from featherlight.strategies import FSDPStrategy
from fl_dist_models import FLAGS, PER_RANK_BATCH, Regressor, outdir_from_argv, save_json, state_to_lists, train_loader

out = outdir_from_argv()
mode, source = sys.argv[2], sys.argv[3]
CLIP = 0.05


class LoadedWeights(Callback):
    """The full weights right after the checkpoint was loaded (before any step)."""

    def on_train_start(self, trainer, pl_module):
        self.weights = state_to_lists(trainer.strategy._full_state_dict(cpu_offload=True))


def fit(ckpt, world):
    probe = LoadedWeights()
    trainer = L.Trainer(accelerator="cpu", devices=world, strategy=FSDPStrategy(auto_wrap_policy={torch.nn.Linear}),
                        max_epochs=3, gradient_clip_val=CLIP, enable_checkpointing=False, limit_val_batches=0,
                        callbacks=[probe], **FLAGS)
    trainer.fit(Regressor(), train_loader(PER_RANK_BATCH * 2 // world), ckpt_path=ckpt)
    return trainer, {"loaded": probe.weights, "weights": state_to_lists(trainer.strategy._full_state_dict()),
                     "global_step": trainer.global_step}


result = {}
if mode == "one":
    for name in ("sharded", "full"):
        trainer, result[name] = fit(os.path.join(source, f"{name}.ckpt"), 1)
else:
    trainer, result["single"] = fit(source, 2)
    trainer.save_checkpoint(os.path.join(out, "resaved.ckpt"))  # sharded, by 2 ranks, after epoch 3
save_json(out, f"{mode}_rank{trainer.global_rank}.json", result)
