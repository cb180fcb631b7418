"""A module that records the featherlight frames between `Trainer.fit` and its `training_step` (shared by the
frame-budget test and its 2-rank DDP script)."""
import inspect
import os

import featherlight
from featherlight.demos.boring_classes import BoringModel

PACKAGE_DIR = os.path.dirname(featherlight.__file__)


def featherlight_frames() -> list[str]:
    frames = [f for f in inspect.stack()[2:] if f.filename.startswith(PACKAGE_DIR)]
    return [f"{os.path.relpath(f.filename, PACKAGE_DIR)}:{f.function}" for f in frames]


class Probe(BoringModel):
    def __init__(self, manual: bool = False):
        super().__init__()
        self.automatic_optimization = not manual
        self.seen: list[list[str]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(featherlight_frames())
        if not self.automatic_optimization:
            opt = self.optimizers()
            loss = self.step(batch)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            return loss
        return super().training_step(batch, batch_idx)


class CustomStepProbe(Probe):
    """The general path: the user's optimizer_step, LightningOptimizer, the precision's step and the closure."""

    def optimizer_step(self, *args, **kwargs):
        return super().optimizer_step(*args, **kwargs)


def probe(manual: bool = False, custom_step: bool = False) -> Probe:
    return CustomStepProbe(manual) if custom_step else Probe(manual)
