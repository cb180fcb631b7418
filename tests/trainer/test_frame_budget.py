"""At most 12 featherlight frames stand between `Trainer.fit` and the user's `training_step`."""
import inspect
import os

import featherlight
from featherlight.demos.boring_classes import BoringModel

PACKAGE_DIR = os.path.dirname(featherlight.__file__)
BUDGET = 12


def _framework_frames(manual: bool = False, custom_step: bool = False) -> list[str]:
    seen: list[list[str]] = []

    class Probe(BoringModel):
        if custom_step:  # the general path: the user's optimizer_step, LightningOptimizer, precision, closure

            def optimizer_step(self, *args, **kwargs):
                return super().optimizer_step(*args, **kwargs)

        def __init__(self):
            super().__init__()
            self.automatic_optimization = not manual

        def training_step(self, batch, batch_idx):
            frames = [f for f in inspect.stack()[1:] if f.filename.startswith(PACKAGE_DIR)]
            seen.append([f"{os.path.relpath(f.filename, PACKAGE_DIR)}:{f.function}" for f in frames])
            if manual:
                opt = self.optimizers()
                loss = self.step(batch)
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()
                return loss
            return super().training_step(batch, batch_idx)

    trainer = featherlight.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
                                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Probe())
    return seen[0]


def test_frame_budget_automatic_optimization():
    frames = _framework_frames()
    assert frames[-1].endswith(":fit")
    assert len(frames) <= BUDGET, "\n".join(frames)


def test_frame_budget_manual_optimization():
    frames = _framework_frames(manual=True)
    assert len(frames) <= BUDGET, "\n".join(frames)


def test_frame_budget_with_a_custom_optimizer_step():
    frames = _framework_frames(custom_step=True)
    assert any(f.endswith(":_step_optimizer") for f in frames)  # the general path was taken
    assert len(frames) <= BUDGET, "\n".join(frames)
