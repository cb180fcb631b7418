"""A fit whose steps leave objects with Python finalizers behind (as dataloader iterators and progress bars do):
a SIGINT that lands in a finalizer raises a KeyboardInterrupt the interpreter prints as "ignored" and drops.

    python sigint_fit.py TAG EPOCHS      writes TAG.started at the first step, TAG.finished if the fit ends
"""
import sys

import featherlight as L
from featherlight.demos.boring_classes import BoringModel


class Finalized:
    def __del__(self):
        total = 0
        for i in range(2000):  # Python work in a finalizer: where a KeyboardInterrupt gets lost
            total += i


class Model(BoringModel):
    def training_step(self, batch, batch_idx):
        for _ in range(20):
            Finalized()
        if batch_idx == 0 and self.current_epoch == 0:
            open(sys.argv[1] + ".started", "w").close()
        return super().training_step(batch, batch_idx)


if __name__ == "__main__":
    trainer = L.Trainer(max_epochs=int(sys.argv[2]), logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(Model())
    open(sys.argv[1] + ".finished", "w").close()
