"""Golden hook order: featherlight calls every hook in exactly Lightning's order.

The golden file was recorded from Lightning (``python tests/trainer/hook_recorder.py``); when
Lightning is installed the same scenarios are also compared live.
"""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import hook_recorder  # noqa: E402

import featherlight  # noqa: E402

with open(os.path.join(os.path.dirname(__file__), "golden_hooks.json")) as f:
    GOLDEN = json.load(f)["scenarios"]


@pytest.mark.parametrize("scenario", sorted(hook_recorder.SCENARIOS))
def test_hook_order_matches_golden(scenario):
    fn, kwargs = hook_recorder.SCENARIOS[scenario]
    assert hook_recorder.record(featherlight, fn, **kwargs) == GOLDEN[scenario]


@pytest.mark.parametrize("scenario", sorted(hook_recorder.SCENARIOS))
def test_hook_order_matches_live_lightning(scenario):
    pl = pytest.importorskip("lightning.pytorch")
    fn, kwargs = hook_recorder.SCENARIOS[scenario]
    assert hook_recorder.record(featherlight, fn, **kwargs) == hook_recorder.record(pl, fn, **kwargs)


def test_golden_covers_the_whole_step():
    """The recorded fit contains the full optimisation step in Lightning's order."""
    fit = GOLDEN["fit"]
    i = fit.index("training_step(0)")
    assert fit[i: i + 14] == [
        "training_step(0)", "Callback.on_before_zero_grad", "on_before_zero_grad", "optimizer_zero_grad",
        "Callback.on_before_backward", "on_before_backward", "backward", "Callback.on_after_backward",
        "on_after_backward", "Callback.on_before_optimizer_step", "on_before_optimizer_step", "clip_gradients",
        "configure_gradient_clipping", "optimizer_step",
    ]
