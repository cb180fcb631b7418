"""The same job as raw_one_step.py, as a featherlight program run with fast_dev_run=True."""
import torch
from torch.utils.data import DataLoader, TensorDataset

import featherlight as L


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(32, 32)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 32), torch.randn(64, 32)), batch_size=64)
trainer = L.Trainer(fast_dev_run=True, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Tiny(), loader)
print(f"loss {float(trainer.callback_metrics['loss']):.4f}")
