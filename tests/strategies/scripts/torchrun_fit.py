"""Run under torchrun: featherlight joins the job torchrun made (no launching of its own).

    torchrun --nproc_per_node=D [--nnodes=N --node_rank=K --master_addr=A --master_port=P] torchrun_fit.py OUTDIR D N
"""
import os
import sys

import featherlight as L
from fl_dist_models import FLAGS, Regressor, outdir_from_argv, save_json, state_to_lists, train_loader, val_loader

out = outdir_from_argv()
devices, num_nodes = int(sys.argv[2]), int(sys.argv[3])
model = Regressor()
trainer = L.Trainer(accelerator="cpu", devices=devices, num_nodes=num_nodes, strategy="ddp", max_epochs=2,
                    enable_checkpointing=False, **FLAGS)
trainer.fit(model, train_loader(), val_loader())
save_json(out, f"rank{trainer.global_rank}.json", dict(
    world_size=trainer.world_size, global_rank=trainer.global_rank, local_rank=trainer.local_rank,
    node_rank=trainer.node_rank, pid=os.getpid(), launcher_env=os.environ.get("FEATHERLIGHT_LAUNCHER_PID"),
    weights=state_to_lists(model.state_dict()), metrics={k: float(v) for k, v in trainer.callback_metrics.items()},
))
