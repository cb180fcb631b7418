"""``featherlight.utilities`` offers what libraries import from ``lightning.pytorch.utilities``."""
import pytest
import torch

import featherlight.utilities as utilities

NAMES = ["AttributeDict", "GradClipAlgorithmType", "LightningEnum", "MisconfigurationException",
         "disable_possible_user_warnings", "grad_norm", "is_picklable", "is_shared_filesystem", "isolate_rng",
         "move_data_to_device", "rank_zero_debug", "rank_zero_deprecation", "rank_zero_info", "rank_zero_only",
         "rank_zero_warn", "seed_everything", "suggested_max_num_workers"]


def test_names():
    assert all(hasattr(utilities, name) for name in NAMES)
    from featherlight.pytorch.utilities import grad_norm
    from featherlight.pytorch.utilities.grads import grad_norm as grads_module_grad_norm

    assert grad_norm is grads_module_grad_norm


def test_names_exist_in_lightning():
    lightning_utilities = pytest.importorskip("lightning.pytorch.utilities")
    extra = {"MisconfigurationException", "isolate_rng", "rank_zero_debug", "seed_everything"}  # featherlight's own
    assert [n for n in NAMES if not hasattr(lightning_utilities, n)] == sorted(extra)


def _net_with_grads():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    net[1].bias.requires_grad_(False)
    net(torch.randn(4, 3)).sum().backward()
    return net


@pytest.mark.parametrize("norm_type", [1, 2.0, "inf"])
def test_grad_norm(norm_type):
    net = _net_with_grads()
    norms = utilities.grad_norm(net, norm_type)
    p = float(norm_type)
    assert set(norms) == {f"grad_{p}_norm/0.weight", f"grad_{p}_norm/0.bias", f"grad_{p}_norm/1.weight",
                          f"grad_{p}_norm_total"}  # no gradient, no entry
    grads = [param.grad for param in net.parameters() if param.grad is not None]
    expected_total = torch.cat([g.flatten() for g in grads]).norm(p)
    assert torch.allclose(norms[f"grad_{p}_norm_total"], expected_total)
    assert torch.allclose(norms[f"grad_{p}_norm/0.weight"], net[0].weight.grad.norm(p))
    lightning_utilities = pytest.importorskip("lightning.pytorch.utilities")
    theirs = lightning_utilities.grad_norm(net, norm_type)
    assert set(theirs) == set(norms) and all(torch.allclose(theirs[k], norms[k]) for k in norms)


def test_grad_norm_edge_cases():
    assert utilities.grad_norm(torch.nn.Linear(2, 2), 2) == {}
    with pytest.raises(ValueError, match="positive"):
        utilities.grad_norm(torch.nn.Linear(2, 2), 0)
    assert utilities.grad_norm(_net_with_grads(), 2, group_separator=".").keys() >= {"grad_2.0_norm.0.weight"}


def test_grad_clip_algorithm_type():
    from featherlight.utilities.enums import GradClipAlgorithmType

    assert GradClipAlgorithmType.NORM == "norm" and GradClipAlgorithmType.supported_type("value")
    assert GradClipAlgorithmType.supported_types() == ["value", "norm"]
