"""A sharded FSDP checkpoint taken inside a gradient accumulation window, resumed.

    python fsdp_accumulation_resume.py OUTDIR two           2 ranks: fit 2 epochs with accumulate_grad_batches=2,
                                                            saving ``window.ckpt`` after batch 2 of epoch 0 (the
                                                            window 2-3 is open); then resume it with 2 ranks
    python fsdp_accumulation_resume.py OUTDIR one CKPT      1 rank: resume CKPT (written by 2 ranks)

Each rank writes ``{mode}_rank{R}.json``.
"""
import os
import sys
import warnings

import torch

import featherlight as L
from featherlight.callbacks import Callback
from featherlight.strategies import FSDPStrategy
from fl_dist_models import FLAGS, PER_RANK_BATCH, Regressor, outdir_from_argv, save_json, state_to_lists, train_loader

out = outdir_from_argv()
mode = sys.argv[2]
EPOCHS, SAVE_AT = 2, 2


class SaveInsideWindow(Callback):
    def __init__(self, path):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == SAVE_AT:
            trainer.save_checkpoint(self.path)


def fit(world, ckpt=None, callbacks=()):
    trainer = L.Trainer(accelerator="cpu", devices=world, strategy=FSDPStrategy(auto_wrap_policy={torch.nn.Linear}),
                        max_epochs=EPOCHS, accumulate_grad_batches=2, enable_checkpointing=False,
                        limit_val_batches=0, callbacks=list(callbacks), **FLAGS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Regressor(), train_loader(PER_RANK_BATCH * 2 // world), ckpt_path=ckpt)
    return trainer, {"weights": state_to_lists(trainer.strategy._full_state_dict(cpu_offload=True)),
                     "global_step": trainer.global_step, "warnings": [str(w.message) for w in caught]}


result = {}
if mode == "two":
    path = os.path.join(out, "window.ckpt")
    trainer, result["full"] = fit(2, callbacks=[SaveInsideWindow(path)])
    trainer, result["resumed"] = fit(2, ckpt=path)
else:
    trainer, result["resumed"] = fit(1, ckpt=sys.argv[3])
save_json(out, f"{mode}_rank{trainer.global_rank}.json", result)
