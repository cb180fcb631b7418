"""At most 12 featherlight frames stand between `Trainer.fit` and the user's `training_step`, on every path:
the direct step, manual optimisation, a custom `optimizer_step`, a profiler, bf16-mixed, and 2-rank DDP with
bf16-mixed (the launching rank, which has the most)."""
import json
import os
import sys

import pytest

import featherlight
from frame_probe import probe

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "strategies", "scripts"))
from fl_dist_run import run_script  # noqa: E402

BUDGET = 12
SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


def _frames(manual: bool = False, custom_step: bool = False, **flags) -> list[str]:
    model = probe(manual=manual, custom_step=custom_step)
    trainer = featherlight.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
                                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                   **flags)
    trainer.fit(model)
    return model.seen[0]


def _check(frames: list[str]) -> None:
    assert frames[-1].endswith(":fit"), frames
    assert len(frames) <= BUDGET, "\n".join(frames)


def test_direct_step():
    frames = _frames()
    assert not any(":optimizer_step" in f for f in frames)  # nothing customises the step: taken directly
    _check(frames)


def test_manual_optimization():
    _check(_frames(manual=True))


def test_custom_optimizer_step():
    frames = _frames(custom_step=True)
    assert any(f.endswith("step.py:optimizer_step") for f in frames)  # the general path: LightningOptimizer.step
    _check(frames)


def test_profiler(tmp_path):
    frames = _frames(profiler="simple", default_root_dir=tmp_path)
    assert any(f.endswith("step.py:optimizer_step") for f in frames)  # profiling takes the general path
    _check(frames)


def test_bf16_mixed():
    _check(_frames(precision="bf16-mixed"))


@pytest.mark.slow
def test_ddp_bf16_mixed(tmp_path):
    code, output, _ = run_script(os.path.join(SCRIPTS, "frames_ddp.py"), tmp_path, cwd=tmp_path, timeout=120)
    assert code == 0, output[-4000:]
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)]
    for frames in ranks:
        _check(frames)
    assert any("ddp.py:launch" in f for f in ranks[0])  # rank 0 launched the job: its path is the longest
