"""Two-GPU DDP with nccl and 16-mixed (GradScaler). ``python ddp_gpu.py OUTDIR``; each rank writes rank{R}.json."""
import torch
import torch.distributed as dist

import featherlight as L
from fl_dist_models import FLAGS, Regressor, outdir_from_argv, save_json, state_to_lists, train_loader, val_loader

out = outdir_from_argv()
model = Regressor()
trainer = L.Trainer(accelerator="gpu", devices=2, strategy="ddp", precision="16-mixed", max_epochs=2,
                    sync_batchnorm=True, enable_checkpointing=False, **FLAGS)
trainer.fit(model, train_loader(), val_loader())
save_json(out, f"rank{trainer.global_rank}.json", dict(
    backend=dist.get_backend(), device=str(trainer.strategy.root_device), weights=state_to_lists(model.state_dict()),
    metrics={k: float(v) for k, v in trainer.callback_metrics.items()},
))
assert trainer.callback_metrics["val_count"] == 5.0
assert all(torch.isfinite(p).all() for p in model.parameters())
