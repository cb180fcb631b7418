"""Two-rank FSDP2 on CPU/gloo (``strategy=FSDPStrategy(...)``, rank 1 started by running this script again).

    python fsdp_fit.py OUTDIR

Fits with gradient clipping (norm), saves a sharded and a full checkpoint through the strategy, resumes
from the sharded one, and (emulating the Trainer integration proposed for checkpoint.py) resumes via
``ckpt_path``. The first fit also saves a sharded mid-epoch checkpoint (``mid/epoch=1-step=6.ckpt``) that
``test_fsdp.py`` resumes in one process. Each rank writes ``rank{R}.json``.
"""
import os

import torch

import featherlight as L
import featherlight.trainer.checkpoint as ckpt_module
from featherlight.callbacks import Callback, ModelCheckpoint
from featherlight.strategies import FSDPStrategy
from fl_dist_models import (FLAGS, ManualRegressor, Regressor, outdir_from_argv, save_json, state_to_lists,
                            train_loader, val_loader)

out = outdir_from_argv()
CLIP = 0.05


class Probe(Callback):
    def on_train_start(self, trainer, pl_module):
        self.sharded = type(pl_module).__name__
        self.param_type = type(next(pl_module.parameters())).__name__
        self.local_numel = sum(p.to_local().numel() for p in pl_module.parameters())


def full_weights(trainer):
    sd = trainer.strategy._full_state_dict(cpu_offload=True)
    return state_to_lists(sd) if trainer.is_global_zero else None


def make_trainer(epochs, probe=None, checkpoint=None, **kwargs):
    strategy = FSDPStrategy(auto_wrap_policy={torch.nn.Linear}, **kwargs.pop("fsdp", {}))
    callbacks = [c for c in (probe, checkpoint) if c is not None]
    return L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=epochs, gradient_clip_val=CLIP,
                     enable_checkpointing=checkpoint is not None, callbacks=callbacks, **FLAGS, **kwargs)


result = {}
probe = Probe()
model = Regressor()
# a sharded checkpoint in the middle of epoch 1 (after its batch 1), for resuming in one process
mid = ModelCheckpoint(dirpath=os.path.join(out, "mid"), every_n_train_steps=6, save_top_k=-1)
trainer = make_trainer(2, probe, checkpoint=mid)
trainer.fit(model, train_loader(), val_loader())
rank = trainer.global_rank
result.update(rank=rank, weights=full_weights(trainer), sharded_class=probe.sharded, param_type=probe.param_type,
              local_numel=probe.local_numel, metrics={k: float(v) for k, v in trainer.callback_metrics.items()},
              num_val_batches=trainer.num_val_batches)
# ---- checkpoints through the strategy: sharded (a directory) and full (one file from rank 0)
dump = ckpt_module._dump_checkpoint(trainer)
trainer.strategy.save_checkpoint(dump, os.path.join(out, "sharded.ckpt"))
trainer.strategy.state_dict_type = "full"
trainer.strategy.save_checkpoint(ckpt_module._dump_checkpoint(trainer), os.path.join(out, "full.ckpt"))
result["sharded_files"] = sorted(os.listdir(os.path.join(out, "sharded.ckpt")))
# ---- resume to epoch 3 from each checkpoint, through ckpt_path (the Trainer routes through the strategy)
for name in ("sharded", "full"):
    resumed = Regressor()
    t = make_trainer(3, Probe(), num_sanity_val_steps=0)
    t.fit(resumed, train_loader(), val_loader(), ckpt_path=os.path.join(out, f"{name}.ckpt"))
    result[f"resumed_{name}"] = full_weights(t)
    result[f"resumed_{name}_step"] = t.global_step
# ---- accumulation (reduce-scatter only at window ends) and bf16-mixed smoke
acc = Regressor()
t = make_trainer(1, accumulate_grad_batches=2, limit_val_batches=0)
t.fit(acc, train_loader())
result["acc_weights"] = full_weights(t)
manual = ManualRegressor()
t = L.Trainer(accelerator="cpu", devices=2, strategy=FSDPStrategy(), max_epochs=1, enable_checkpointing=False,
              limit_val_batches=0, **FLAGS)
t.fit(manual, train_loader())
result["manual_weights"] = full_weights(t)
bf = Regressor()
t = make_trainer(1, precision="bf16-mixed", limit_val_batches=0)
t.fit(bf, train_loader())
result["bf16_finite"] = bool(all(torch.isfinite(p.full_tensor()).all() for p in bf.parameters()))
result["bf16_policy"] = str(t.strategy._mp_policy().param_dtype)
save_json(out, f"rank{rank}.json", result)
