"""Rank 0 and rank 1 of a 2-process DDP fit in bf16-mixed record the featherlight frames above training_step."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import featherlight as L  # noqa: E402
from frame_probe import probe  # noqa: E402

out = sys.argv[1]
model = probe()
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", precision="bf16-mixed", max_epochs=1,
                    limit_train_batches=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(model)
with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as f:
    json.dump(model.seen[0], f)
