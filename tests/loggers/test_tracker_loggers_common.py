"""What the four tracker loggers share: lazy imports, the missing-library error, Lightning's names and module paths
and constructor signatures, and configs/checkpoints written for Lightning that name them."""

import importlib
import inspect
import os
import subprocess
import sys

import pytest
import yaml

import featherlight.loggers as fl_loggers
import featherlight.loggers._tracking as tracking

TRACKERS = {
    # logger name: (featherlight module, library module, extra)
    "MLFlowLogger": ("featherlight.loggers.mlflow", "mlflow", "mlflow"),
    "WandbLogger": ("featherlight.loggers.wandb", "wandb", "wandb"),
    "CometLogger": ("featherlight.loggers.comet", "comet_ml", "comet"),
    "NeptuneLogger": ("featherlight.loggers.neptune", "neptune", "neptune"),
}


def test_importing_the_loggers_imports_no_tracker_library():
    code = (
        "import sys, featherlight.loggers as L\n"
        "import featherlight.loggers.mlflow, featherlight.loggers.wandb, featherlight.loggers.comet,"
        " featherlight.loggers.neptune\n"
        "from featherlight.pytorch.loggers import MLFlowLogger, WandbLogger, CometLogger, NeptuneLogger\n"
        "print(sorted(m for m in ('mlflow', 'wandb', 'comet_ml', 'neptune', 'matplotlib') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert not {"mlflow", "wandb", "comet_ml", "neptune"} & imported


@pytest.mark.parametrize("name", sorted(TRACKERS))
def test_names_and_module_paths(name):
    module, _, _ = TRACKERS[name]
    cls = getattr(fl_loggers, name)
    assert cls is getattr(importlib.import_module(module), name)
    assert cls is getattr(importlib.import_module("featherlight.pytorch.loggers"), name)
    alias_module = module.replace("featherlight.loggers", "featherlight.pytorch.loggers")
    assert getattr(importlib.import_module(alias_module), name) is cls
    assert name in fl_loggers.__all__ and name in dir(fl_loggers)
    assert issubclass(cls, fl_loggers.Logger)
    with pytest.raises(AttributeError):
        fl_loggers.NoSuchLogger  # noqa: B018


@pytest.mark.parametrize("name", sorted(TRACKERS))
def test_a_missing_library_names_the_extra(name, monkeypatch):
    _, library, extra = TRACKERS[name]
    monkeypatch.setattr(tracking, "_module_available", lambda module: False)
    with pytest.raises(ModuleNotFoundError, match=rf"pip install 'featherlight\[{extra}\]'"):
        getattr(fl_loggers, name)()


# ---------------------------------------------------------------------------------------------------- Lightning parity
def _signature(cls):
    return [(p.name, p.kind, p.default) for p in inspect.signature(cls.__init__).parameters.values()]


@pytest.mark.parametrize("name", ["MLFlowLogger", "WandbLogger", "CometLogger"])
def test_constructor_signatures_match_lightning(name):
    lightning_loggers = pytest.importorskip("lightning.pytorch.loggers")
    ours, theirs = _signature(getattr(fl_loggers, name)), _signature(getattr(lightning_loggers, name))
    if name == "MLFlowLogger":
        # Lightning 2.6 reads MLFLOW_TRACKING_URI when the logger is built; so do we (default None)
        theirs = [(n, k, None if n == "tracking_uri" else d) for n, k, d in theirs]
        # checkpoint_path_prefix (Lightning's main branch) comes last so that 2.6 positional calls still work
        assert ours[-1][0] == "checkpoint_path_prefix"
        ours = ours[:-1]
    assert [(n, k) for n, k, _ in ours] == [(n, k) for n, k, _ in theirs]
    assert [d for _, _, d in ours] == [d for _, _, d in theirs]


def test_neptune_signature_is_lightning_26_0():
    params = inspect.signature(fl_loggers.NeptuneLogger.__init__).parameters
    assert list(params) == [
        "self", "api_key", "project", "name", "run", "log_model_checkpoints", "prefix", "neptune_run_kwargs"
    ]  # fmt: skip
    assert all(p.kind == p.KEYWORD_ONLY for n, p in params.items() if n not in ("self", "neptune_run_kwargs"))
    assert params["prefix"].default == "training" and params["log_model_checkpoints"].default is True


# ---------------------------------------------------------------------------------------------------- configs
def _instantiate(config):
    """What hydra's ``instantiate`` does with a ``_target_`` node (the part these configs use)."""
    config = dict(config)
    module, _, name = config.pop("_target_").rpartition(".")
    return getattr(importlib.import_module(module), name)(**config)


LIGHTNING_CONFIG = """
logger:
  - _target_: lightning.pytorch.loggers.MLFlowLogger
    experiment_name: from-config
    tracking_uri: file:{root}/mlruns
    tags: {{source: hydra}}
  - _target_: lightning.pytorch.loggers.wandb.WandbLogger
    project: from-config
    save_dir: {root}
    offline: true
  - _target_: lightning.pytorch.loggers.comet.CometLogger
    online: false
    offline_directory: {root}/comet
  - _target_: pytorch_lightning.loggers.neptune.NeptuneLogger
    mode: debug
    capture_hardware_metrics: false
"""


def _swap(text):
    """The import swap a Lightning project does to run on featherlight."""
    return text.replace("lightning.pytorch", "featherlight.pytorch").replace("pytorch_lightning", "featherlight.pytorch")


def test_a_hydra_style_lightning_config_builds_the_loggers(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = yaml.safe_load(_swap(LIGHTNING_CONFIG.format(root=tmp_path)))
    wanted = {"MLFlowLogger": "mlflow", "WandbLogger": "wandb", "CometLogger": "comet_ml", "NeptuneLogger": "neptune"}
    built = []
    for node in config["logger"]:
        name = node["_target_"].rpartition(".")[2]
        if not tracking._module_available(wanted[name]):
            continue
        built.append(_instantiate(node))
    if not built:
        pytest.skip("no tracker library installed")
    for logger in built:
        assert type(logger) is getattr(fl_loggers, type(logger).__name__)
        logger.log_metrics({"x": 1.0}, step=0)
        logger.finalize("success")
    for logger in built:  # close what the libraries keep open
        experiment = logger.experiment
        for method in ("finish", "end", "stop"):
            if type(logger).__name__ != "MLFlowLogger" and callable(getattr(experiment, method, None)):
                getattr(experiment, method)()
                break


def test_hydra_instantiates_the_swapped_target(tmp_path, monkeypatch):
    hydra_utils = pytest.importorskip("hydra.utils")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    node = {"_target_": _swap("lightning.pytorch.loggers.MLFlowLogger"), "tracking_uri": f"file:{tmp_path}/m"}
    assert type(hydra_utils.instantiate(node)).__name__ == "MLFlowLogger"


def test_a_lightning_checkpoint_naming_a_logger_rebuilds_it(tmp_path, monkeypatch):
    """A model whose saved hyperparameters name its logger (as LightningCLI-style configs do), checkpointed by real
    Lightning, is loaded by featherlight and its logger built from the class path."""
    pytest.importorskip("lightning")
    pytest.importorskip("mlflow")
    import torch
    from lightning.pytorch import LightningModule as LightningLM
    from lightning.pytorch import Trainer as LightningTrainer

    import featherlight as L

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    logger_config = {
        "class_path": "lightning.pytorch.loggers.MLFlowLogger",
        "init_args": {"experiment_name": "from-ckpt", "tracking_uri": f"file:{tmp_path}/mlruns"},
    }

    class Written(LightningLM):
        def __init__(self, logger_config: dict):
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(2, 1)

    lightning_trainer = LightningTrainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    lightning_trainer.strategy.connect(Written(logger_config))
    lightning_trainer.save_checkpoint(tmp_path / "lightning.ckpt")

    class Read(L.LightningModule):
        def __init__(self, logger_config: dict):
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(2, 1)

    model = Read.load_from_checkpoint(tmp_path / "lightning.ckpt")
    config = model.hparams.logger_config
    module, _, name = _swap(config["class_path"]).rpartition(".")
    logger = getattr(importlib.import_module(module), name)(**config["init_args"])
    assert isinstance(logger, fl_loggers.MLFlowLogger)
    logger.log_hyperparams(model.hparams)
    logger.finalize("success")
    from mlflow.tracking import MlflowClient

    params = MlflowClient(f"file:{tmp_path}/mlruns").get_run(logger.run_id).data.params
    assert params["logger_config/class_path"] == "lightning.pytorch.loggers.MLFlowLogger"
    assert os.path.isdir(os.path.join(tmp_path, "mlruns", logger.experiment_id))
