"""Two-GPU FSDP2 with nccl and bf16-mixed, sharded checkpoint save/load. ``python fsdp_gpu.py OUTDIR``."""
import os

import torch
import torch.distributed as dist

import featherlight as L
import featherlight.trainer.checkpoint as ckpt_module
from featherlight.strategies import FSDPStrategy
from fl_dist_models import FLAGS, Regressor, outdir_from_argv, train_loader

out = outdir_from_argv()
model = Regressor()
strategy = FSDPStrategy(auto_wrap_policy={torch.nn.Linear})
trainer = L.Trainer(accelerator="gpu", devices=2, strategy=strategy, precision="bf16-mixed", max_epochs=2,
                    gradient_clip_val=0.5, enable_checkpointing=False, limit_val_batches=0, **FLAGS)
trainer.fit(model, train_loader())
assert dist.get_backend() == "nccl"
before = {k: v.full_tensor().cpu() for k, v in model.state_dict().items()}
strategy.save_checkpoint(ckpt_module._dump_checkpoint(trainer), os.path.join(out, "sharded.ckpt"))
with torch.no_grad():
    for p in model.parameters():
        p.zero_()
strategy.load_checkpoint(os.path.join(out, "sharded.ckpt"))
after = {k: v.full_tensor().cpu() for k, v in model.state_dict().items()}
assert all(torch.equal(before[k], after[k]) for k in before)
