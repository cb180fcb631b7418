"""``featherlight.fabric`` answers the imports libraries make from ``lightning.fabric``, and each name behaves."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings

import pytest
import torch

import featherlight as fl

# module path under lightning.fabric -> names libraries import from it
FABRIC_NAMES = {
    "": ["seed_everything", "__version__"],
    "utilities": ["AttributeDict", "LightningEnum", "disable_possible_user_warnings", "is_shared_filesystem",
                  "move_data_to_device", "rank_zero_deprecation", "rank_zero_info", "rank_zero_only", "rank_zero_warn",
                  "suggested_max_num_workers"],
    "utilities.types": ["_PATH", "_DEVICE", "_MAP_LOCATION_TYPE", "_PARAMETERS", "LRScheduler", "ReduceLROnPlateau",
                        "Optimizable", "Steppable", "_Stateful", "CollectibleGroup", "ReduceOp", "RedOpType",
                        "ProcessGroup"],
    "utilities.rank_zero": ["rank_zero_only", "rank_zero_warn", "rank_zero_info", "rank_zero_debug",
                            "rank_zero_deprecation", "rank_prefixed_message", "LightningDeprecationWarning",
                            "WarningCache"],
    "utilities.seed": ["seed_everything", "reset_seed", "pl_worker_init_function", "isolate_rng", "max_seed_value",
                       "min_seed_value"],
    "utilities.cloud_io": ["get_filesystem", "_load", "_atomic_save", "_is_dir", "_is_local_file_protocol",
                           "_is_object_storage"],
    "utilities.apply_func": ["move_data_to_device", "convert_to_tensors", "convert_tensors_to_scalars"],
    "utilities.distributed": ["ReduceOp", "group", "is_shared_filesystem", "_distributed_is_initialized",
                              "_distributed_available", "_sync_ddp_if_available", "_sync_ddp",
                              "_all_gather_ddp_if_available", "_gather_all_tensors",
                              "_get_default_process_group_backend_for_device"],
    "utilities.data": ["AttributeDict", "has_iterable_dataset", "has_len", "sized_len", "suggested_max_num_workers",
                       "_set_sampler_epoch", "_num_cpus_available"],
    "utilities.exceptions": ["MisconfigurationException"],
    "utilities.imports": ["_IS_WINDOWS", "_IS_INTERACTIVE", "_NUMPY_AVAILABLE", "_TORCH_GREATER_EQUAL_2_4",
                          "_TORCH_GREATER_EQUAL_2_6", "_PYTHON_GREATER_EQUAL_3_10_0",
                          "_TORCHMETRICS_GREATER_EQUAL_1_0_0"],
    "utilities.enums": ["LightningEnum"],
    "utilities.logger": ["_add_prefix", "_convert_params", "_flatten_dict", "_sanitize_callable_params",
                         "_sanitize_params", "_convert_json_serializable"],
    "utilities.warnings": ["PossibleUserWarning", "disable_possible_user_warnings"],
    "plugins": ["CheckpointIO", "TorchCheckpointIO", "Precision", "MixedPrecision", "HalfPrecision",
                "DoublePrecision"],
    "plugins.io.checkpoint_io": ["CheckpointIO"],
    "plugins.io.torch_io": ["TorchCheckpointIO"],
    "plugins.precision": ["Precision", "MixedPrecision", "HalfPrecision", "DoublePrecision"],
    "accelerators": ["Accelerator", "CPUAccelerator", "CUDAAccelerator", "MPSAccelerator", "XLAAccelerator",
                     "TPUAccelerator", "find_usable_cuda_devices"],
    "accelerators.cuda": ["CUDAAccelerator", "find_usable_cuda_devices", "is_cuda_available", "num_cuda_devices"],
    "accelerators.mps": ["MPSAccelerator"],
    "accelerators.cpu": ["CPUAccelerator"],
    "loggers": ["Logger", "CSVLogger", "TensorBoardLogger"],
    "loggers.logger": ["Logger", "rank_zero_experiment"],
}


def _module(base: str, path: str):
    return importlib.import_module(f"{base}.{path}" if path else base)


@pytest.mark.parametrize("path", sorted(FABRIC_NAMES))
def test_fabric_path_has_the_names(path):
    module = _module("featherlight.fabric", path)
    missing = [name for name in FABRIC_NAMES[path] if not hasattr(module, name)]
    assert not missing


# names earlier Lightning 2.x releases had at these paths (libraries written for them still import them), or that
# featherlight's module has besides
NOT_IN_LIGHTNING_2_6 = {
    "utilities.types": {"LRScheduler", "ReduceLROnPlateau"},  # lightning.fabric 2.0/2.1
    "utilities.distributed": {"_distributed_available"},  # lightning.fabric 2.0/2.1
    "utilities.seed": {"isolate_rng"},  # lightning.pytorch.utilities.seed
}


@pytest.mark.parametrize("path", sorted(FABRIC_NAMES))
def test_the_names_are_lightnings(path):
    """Every name offered here exists at the same path in Lightning (so this list is not made up)."""
    lightning_module = pytest.importorskip(f"lightning.fabric{'.' + path if path else ''}")
    missing = [name for name in FABRIC_NAMES[path] if not hasattr(lightning_module, name)]
    assert set(missing) == NOT_IN_LIGHTNING_2_6.get(path, set())


def test_modules_are_featherlights_own():
    # the same module objects, so patching either patches both
    from featherlight.fabric.utilities import rank_zero, seed, types

    assert seed is importlib.import_module("featherlight.utilities.seed")
    assert rank_zero is importlib.import_module("featherlight.utilities.rank_zero")
    assert types is importlib.import_module("featherlight.utilities.types")
    from featherlight.fabric.utilities.rank_zero import rank_zero_only

    assert rank_zero_only is importlib.import_module("featherlight.utilities").rank_zero_only


def test_fabric_class_is_not_provided():
    import featherlight.fabric

    with pytest.raises(AttributeError, match="not Lightning's `Fabric`"):
        featherlight.fabric.Fabric  # noqa: B018
    assert fl.fabric is featherlight.fabric


def test_importing_featherlight_imports_no_face_and_nothing_optional():
    code = ("import sys, featherlight; print(sorted(m for m in sys.modules if m.startswith(('featherlight.fabric', "
            "'featherlight.plugins', 'featherlight.accelerators', 'fsspec', 'lightning', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------------------- behaviour
def test_rank_zero_helpers(caplog):
    from featherlight.fabric.utilities.rank_zero import LightningDeprecationWarning, rank_zero_deprecation

    with pytest.warns(LightningDeprecationWarning, match="old"):
        rank_zero_deprecation("old")


def test_seed_helpers(monkeypatch):
    from featherlight.fabric.utilities.seed import reset_seed, seed_everything

    assert seed_everything(7, verbose=False) == 7
    first = torch.rand(1)
    torch.rand(5)
    reset_seed()
    assert torch.equal(torch.rand(1), first)


def test_cloud_io_load_and_atomic_save(tmp_path):
    from featherlight.fabric.utilities.cloud_io import (
        _atomic_save,
        _is_dir,
        _is_local_file_protocol,
        _is_object_storage,
        _load,
        get_filesystem,
    )
    from featherlight.utilities.exceptions import CheckpointError

    _atomic_save(torch.arange(3), tmp_path / "t.pt")  # anything torch.save takes, not only a dict
    assert os.listdir(tmp_path) == ["t.pt"]
    assert torch.equal(_load(tmp_path / "t.pt"), torch.arange(3))
    with open(tmp_path / "t.pt", "rb") as f:  # an open stream works too
        assert torch.equal(_load(f), torch.arange(3))

    _atomic_save({"obj": _Unsafe()}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="weights_only=False"):
        _load(tmp_path / "unsafe.pt")  # safe by default
    assert isinstance(_load(tmp_path / "unsafe.pt", weights_only=False)["obj"], _Unsafe)

    pytest.importorskip("fsspec")
    _atomic_save({"a": torch.ones(1)}, "memory://fabric-cloud-io/dir/a.pt")
    assert torch.equal(_load("memory://fabric-cloud-io/dir/a.pt")["a"], torch.ones(1))
    fs = get_filesystem("memory://fabric-cloud-io")
    assert "memory" in fs.protocol and not _is_object_storage(fs)
    assert _is_dir(fs, "memory://fabric-cloud-io/dir") and not _is_dir(fs, "memory://fabric-cloud-io/dir/a.pt")
    assert _is_local_file_protocol(tmp_path) and _is_local_file_protocol("file:///tmp")
    assert not _is_local_file_protocol("s3://bucket/x")


class _Unsafe:
    pass


def test_apply_func_conversions():
    from featherlight.fabric.utilities.apply_func import convert_tensors_to_scalars, convert_to_tensors

    out = convert_to_tensors({"flag": True, "n": 3, "x": 0.5, "name": "kept"}, "cpu")
    assert out["flag"].dtype == torch.uint8 and out["n"].dtype == torch.int32 and out["x"].dtype == torch.float32
    assert out["name"] == "kept"
    assert convert_tensors_to_scalars({"a": [torch.tensor(1.5)]}) == {"a": [1.5]}
    with pytest.raises(ValueError, match="one-element"):
        convert_tensors_to_scalars(torch.ones(2))


def test_data_helpers():
    from torch.utils.data import DataLoader, IterableDataset

    from featherlight.fabric.utilities.data import has_iterable_dataset, has_len, sized_len, suggested_max_num_workers

    assert suggested_max_num_workers(1) >= 1
    assert suggested_max_num_workers(10_000) == 1
    with pytest.raises(ValueError, match="local_world_size"):
        suggested_max_num_workers(0)

    class Stream(IterableDataset):
        def __iter__(self):
            yield from range(3)

    class SizedStream(Stream):
        def __len__(self):
            return 3

    assert sized_len(DataLoader(Stream())) is None and not has_len(DataLoader(Stream()))
    assert has_iterable_dataset(DataLoader(Stream()))
    with pytest.warns(UserWarning, match="defines `__len__`"):
        assert has_len(DataLoader(SizedStream()))
    with pytest.warns(UserWarning, match="length 0"):
        has_len([])


def test_sampler_epoch():
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from featherlight.fabric.utilities.data import _set_sampler_epoch

    sampler = DistributedSampler(list(range(8)), num_replicas=2, rank=0)
    _set_sampler_epoch(DataLoader(list(range(8)), sampler=sampler), 3)
    assert sampler.epoch == 3


def test_imports_flags_without_importing_packages():
    code = (
        "import sys\n"
        "from featherlight.fabric.utilities.imports import _NUMPY_AVAILABLE, _TORCHMETRICS_GREATER_EQUAL_1_0_0\n"
        "from featherlight.utilities.imports import _RICH_AVAILABLE, _TORCHVISION_AVAILABLE\n"
        "print(sorted(m for m in ('rich', 'torchmetrics', 'torchvision') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    import importlib.util

    from featherlight.utilities import imports

    assert imports._TORCHVISION_AVAILABLE == (importlib.util.find_spec("torchvision") is not None)
    assert imports._RICH_AVAILABLE == (importlib.util.find_spec("rich") is not None)
    assert imports._TORCH_GREATER_EQUAL_2_6 is True  # featherlight needs torch >= 2.6
    assert imports._release("2.6.0+cu124") == (2, 6, 0) and imports._release("1.0rc1") == (1, 0)
    with pytest.raises(AttributeError):
        imports._NOT_A_FLAG  # noqa: B018


def test_types_protocols():
    from featherlight.fabric.utilities.types import Optimizable, Steppable, _Stateful

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert isinstance(optimizer, Optimizable) and isinstance(optimizer, Steppable)
    assert isinstance(torch.nn.Linear(1, 1), _Stateful)
    assert not isinstance(object(), _Stateful)


def test_possible_user_warning_can_be_silenced():
    from featherlight.fabric.utilities.warnings import PossibleUserWarning, disable_possible_user_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        disable_possible_user_warnings()
        warnings.warn("maybe", PossibleUserWarning)
        warnings.warn("surely", UserWarning)
    assert [str(w.message) for w in caught] == ["surely"]


def test_logger_helpers():
    from featherlight.fabric.utilities.logger import _convert_json_serializable, _sanitize_callable_params

    def make():
        raise AssertionError("a callable hyperparameter is never called")

    assert _sanitize_callable_params({"fn": make, "cls": torch.nn.Linear, "n": 1}) == {
        "fn": "make", "cls": "Linear", "n": 1}
    assert _convert_json_serializable({"a": 1, "b": {1, 2}, "c": [1]}) == {"a": 1, "b": "{1, 2}", "c": [1]}


def test_distributed_helpers_in_one_process(tmp_path):
    from featherlight.fabric.utilities.distributed import (
        _all_gather_ddp_if_available,
        _distributed_is_initialized,
        _get_default_process_group_backend_for_device,
        _sync_ddp_if_available,
        is_shared_filesystem,
    )

    assert not _distributed_is_initialized()
    t = torch.ones(2)
    assert _sync_ddp_if_available(t, reduce_op="mean") is t
    assert _all_gather_ddp_if_available(t) is t
    assert _get_default_process_group_backend_for_device(torch.device("cuda", 0)) == "nccl"
    assert _get_default_process_group_backend_for_device(torch.device("cpu")) == "gloo"
    trainer = fl.Trainer(logger=False, max_epochs=1)
    assert is_shared_filesystem(trainer.strategy, tmp_path)
    assert is_shared_filesystem(trainer.strategy, "s3://bucket/prefix")


def _collectives_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from featherlight.fabric.utilities.distributed import (
        _all_gather_ddp_if_available,
        _gather_all_tensors,
        _sync_ddp,
        _sync_ddp_if_available,
    )

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results = {
            "mean": _sync_ddp_if_available(torch.tensor([1.0 + rank]), reduce_op="mean"),
            "sum": _sync_ddp(torch.tensor([1 + rank]), reduce_op="sum"),
            "max": _sync_ddp(torch.tensor([1 + rank]), reduce_op="max"),
            "stacked": _all_gather_ddp_if_available(torch.tensor([rank])),
            "uneven": _gather_all_tensors(torch.arange(rank + 1).reshape(1, rank + 1)),
        }
        torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
        dist.barrier()  # neither rank tears gloo down while the other is still in a collective
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed support")
def test_distributed_helpers_across_two_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_collectives_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                       start_method="spawn")
    for rank in range(2):
        results = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert torch.equal(results["mean"], torch.tensor([1.5]))  # gloo has no AVG: a sum divided by the world size
        assert torch.equal(results["sum"], torch.tensor([3])) and torch.equal(results["max"], torch.tensor([2]))
        assert torch.equal(results["stacked"], torch.tensor([[0], [1]]))
        assert [t.tolist() for t in results["uneven"]] == [[[0]], [[0, 1]]]  # each cut back to its own size


def test_xla_and_tpu_accelerators_are_named_and_never_available():
    """lightning-hydra-template checks `TPUAccelerator.is_available()` at import to decide what to test."""
    from featherlight.fabric.accelerators import TPUAccelerator, XLAAccelerator
    from featherlight.utilities.exceptions import MisconfigurationException

    assert TPUAccelerator.is_available() is False and XLAAccelerator.auto_device_count() == 0
    assert issubclass(TPUAccelerator, XLAAccelerator)
    with pytest.raises(MisconfigurationException, match="accelerator='cpu'"):
        XLAAccelerator()


def test_accelerators():
    from featherlight.fabric.accelerators import CPUAccelerator, CUDAAccelerator, MPSAccelerator
    from featherlight.fabric.accelerators.cuda import find_usable_cuda_devices, num_cuda_devices

    assert CPUAccelerator.is_available() and CPUAccelerator.get_parallel_devices(2) == [torch.device("cpu")] * 2
    assert CUDAAccelerator.is_available() == torch.cuda.is_available()
    assert isinstance(MPSAccelerator.is_available(), bool)
    assert find_usable_cuda_devices(0) == []
    with pytest.raises(ValueError, match="CUDA devices"):
        find_usable_cuda_devices(num_cuda_devices() + 1)
    trainer = fl.Trainer(accelerator=CPUAccelerator(), logger=False, max_epochs=1)
    assert isinstance(trainer.accelerator, CPUAccelerator) and trainer.accelerator.name == "cpu"
    assert trainer.strategy.root_device == torch.device("cpu")
