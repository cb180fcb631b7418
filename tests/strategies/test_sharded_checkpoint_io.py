"""Reading sharded (torch.distributed.checkpoint) checkpoints in one process, without a process group, safely.

The directories here are written in this process (``dcp.save(no_dist=True)``) in the layout
``FSDPStrategy(state_dict_type="sharded")`` writes; ``test_fsdp.py`` reads real 2-rank ones.
"""
import os
import warnings

import pytest
import torch

from featherlight.io.load import load_checkpoint as _load_checkpoint_file
from featherlight.io.state import optimizer_state_by_index as _optimizer_state_by_index
from featherlight.io.state import optimizer_state_by_name as _optimizer_state_by_name
from featherlight.utilities.exceptions import CheckpointError


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))


def _write(path, extra_group_value=None):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    osd = get_optimizer_state_dict(model, opt)
    if extra_group_value is not None:
        osd["param_groups"][0]["extra"] = extra_group_value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"model": get_model_state_dict(model), "optimizers": {"0": osd}}, checkpoint_id=str(path),
                 no_dist=True)
    torch.save({"epoch": 1, "global_step": 3, "featherlight_sharded": {"optimizers": 1}}, os.path.join(path, "meta.pt"))
    return model, opt


def test_reads_a_sharded_directory_as_one_checkpoint(tmp_path):
    model, opt = _write(tmp_path / "s.ckpt")
    ckpt = _load_checkpoint_file(tmp_path / "s.ckpt")
    assert ckpt["global_step"] == 3 and "featherlight_sharded" not in ckpt
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["state_dict"][k], v)
    # optimizer states come keyed by parameter name; a plain optimizer gets them keyed by position
    fresh = _model()
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.5, momentum=0.9)
    fresh_opt.load_state_dict(_optimizer_state_by_index(fresh, fresh_opt, ckpt["optimizer_states"][0]))
    assert fresh_opt.param_groups[0]["lr"] == 0.1
    for p, q in zip(opt.param_groups[0]["params"], fresh_opt.param_groups[0]["params"]):
        assert torch.equal(opt.state[p]["momentum_buffer"], fresh_opt.state[q]["momentum_buffer"])
    # and back: positions to names (what FSDP's set_optimizer_state_dict wants)
    by_name = _optimizer_state_by_name(fresh, fresh_opt, fresh_opt.state_dict())
    assert sorted(by_name["state"]) == sorted(n for n, _ in fresh.named_parameters())
    other = torch.nn.Sequential(torch.nn.Linear(3, 1))
    with pytest.raises(CheckpointError, match=r"parameters this optimizer does not have \(\['2.bias', '2.weight'\]"):
        _optimizer_state_by_index(other, torch.optim.SGD(other.parameters(), lr=1), ckpt["optimizer_states"][0])
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    with pytest.raises(CheckpointError, match="no entry for the optimizer's parameter '1.weight'"):
        _optimizer_state_by_index(other, torch.optim.SGD(other.parameters(), lr=1), ckpt["optimizer_states"][0])


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_refuses_values_that_need_code_and_names_the_opt_in(tmp_path):
    _write(tmp_path / "s.ckpt", extra_group_value=_RunsCode())
    with pytest.raises(CheckpointError, match="Refusing to load the sharded checkpoint.*weights_only=False") as err:
        _load_checkpoint_file(tmp_path / "s.ckpt")
    assert err.value.reason == "unsafe"
    ckpt = _load_checkpoint_file(tmp_path / "s.ckpt", weights_only=False)  # the explicit opt-in: torch's reader
    assert ckpt["optimizer_states"][0]["param_groups"][0]["extra"] == os.getcwd()


def test_incomplete_directory_is_reported(tmp_path):
    _write(tmp_path / "s.ckpt")
    os.remove(tmp_path / "s.ckpt" / ".metadata")
    with pytest.raises(CheckpointError, match="has no .metadata file") as err:
        _load_checkpoint_file(tmp_path / "s.ckpt")
    assert err.value.reason == "corrupt"


def test_ckpt_path_last_finds_a_sharded_directory(tmp_path):
    import featherlight as L
    from featherlight.trainer.checkpoint import _resolve_ckpt_path
    from featherlight.trainer.states import TrainerFn

    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, enable_checkpointing=False)
    path = tmp_path / "checkpoints" / "interrupted.ckpt"  # where an interrupted FSDP run saves itself
    _write(path)
    assert _resolve_ckpt_path(trainer, "last", TrainerFn.FITTING)[0] == str(path)
