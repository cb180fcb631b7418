"""LightningCLI end to end, on the real jsonargparse: parsing, config files, subcommands, saved configs, optimizers,
links, hooks, checkpoints and error messages. Subprocess tests run ``cli_train.py`` as a user would."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("jsonargparse")

from cli_models import ConfigDictNet, Data, InjectedNet, LinkedNet, Net, WideNet  # noqa: E402
from jsonargparse import Namespace  # noqa: E402

import featherlight  # noqa: E402
from featherlight import Callback, LightningDataModule, LightningModule, Trainer  # noqa: E402
from featherlight.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint  # noqa: E402
from featherlight.cli import (  # noqa: E402
    LightningArgumentParser,
    LightningCLI,
    ReduceLROnPlateau,
    SaveConfigCallback,
    instantiate_class,
)
from featherlight.demos.boring_classes import BoringModel  # noqa: E402
from featherlight.loggers import CSVLogger  # noqa: E402
from featherlight.profilers import SimpleProfiler  # noqa: E402

HERE = Path(__file__).resolve().parent
TRAIN = HERE / "cli_train.py"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
SHORT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", *QUIET]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    # `args=` plus a non-empty sys.argv warns; under pytest sys.argv holds pytest's own arguments
    monkeypatch.setattr(sys, "argv", ["train.py"])


def run_script(*args: str, cwd: Path, script: Path = TRAIN, env: dict = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=600)


def yaml_file(path: Path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


# ------------------------------------------------------------------------------------------------ packaging
def test_import_featherlight_does_not_import_jsonargparse():
    code = "import sys, featherlight, featherlight.pytorch; print('jsonargparse' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_jsonargparse_names_the_extra(tmp_path):
    blocker = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'jsonargparse' or name.startswith('jsonargparse.'):\n"
        "            raise ImportError('No module named ' + repr(name))\n"
        "sys.meta_path.insert(0, Block())\n"
        "try:\n"
        "    import featherlight.pytorch.cli\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, check=True)
    assert "pip install 'featherlight[cli]'" in out.stdout


def test_pytorch_cli_is_the_same_module():
    import featherlight.cli
    import featherlight.pytorch.cli

    assert featherlight.pytorch.cli is featherlight.cli
    assert featherlight.cli.LightningCLI is LightningCLI
    for name in ("LightningArgumentParser", "SaveConfigCallback", "instantiate_class", "cli_lightning_logo",
                 "ReduceLROnPlateau", "OptimizerCallable", "LRSchedulerCallable", "ArgsType"):
        assert hasattr(featherlight.pytorch.cli, name)
    assert featherlight.cli_lightning_logo is featherlight.cli.cli_lightning_logo


# --------------------------------------------------------------------------------------- parse and build
def test_run_false_builds_model_data_and_trainer():
    cli = LightningCLI(Net, Data, run=False, args=["--model.hidden=7", "--data.batch_size=3",
                                                   "--trainer.max_epochs=2"])
    assert isinstance(cli.model, Net) and cli.model.layer[0].out_features == 7
    assert isinstance(cli.datamodule, Data) and cli.datamodule.batch_size == 3
    assert isinstance(cli.trainer, Trainer) and cli.trainer.max_epochs == 2
    assert cli.config.model.hidden == 7 and cli.config.trainer.max_epochs == 2
    assert cli.subcommand is None
    assert any(isinstance(c, SaveConfigCallback) for c in cli.trainer.callbacks)


@pytest.mark.parametrize("args", [
    {"model": {"hidden": 5}, "trainer": {"logger": False}},
    Namespace(model=Namespace(hidden=5), trainer=Namespace(logger=False)),
])
def test_args_as_dict_or_namespace(args):
    cli = LightningCLI(Net, run=False, args=args)
    assert cli.model.hparams.hidden == 5
    assert cli.trainer.logger is None


def test_args_and_command_line_warns(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py", "--model.hidden=9"])
    with pytest.warns(UserWarning, match="args parameter"):
        cli = LightningCLI(Net, run=False, args=["--model.hidden=3"])
    assert cli.model.hparams.hidden == 3


def test_fit_subcommand_trains_and_saves_config(tmp_path):
    cli = LightningCLI(Net, Data, args=["fit", *SHORT, "--model.hidden=6", f"--trainer.default_root_dir={tmp_path}"])
    assert cli.subcommand == "fit"
    assert cli.trainer.global_step == 2
    saved = Path(cli.trainer.log_dir, "config.yaml")
    assert saved.is_file()
    data = yaml.safe_load(saved.read_text())
    assert data["model"] == {"hidden": 6, "lr": 0.1}
    assert data["trainer"]["max_epochs"] == 1
    assert isinstance(data["seed_everything"], int)  # the seed actually used, so the run repeats
    assert data["ckpt_path"] is None
    assert saved.read_text().startswith(f"# featherlight=={featherlight.__version__}")


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluation_subcommands(subcommand):
    class RecordingCLI(LightningCLI):
        def before_instantiate_classes(self):
            self.calls = []

        def after_instantiate_classes(self):
            self.calls.append("built")

    cli = RecordingCLI(Net, Data, args=[subcommand, *QUIET, "--trainer.logger=false", "--trainer.limit_val_batches=1",
                                        "--trainer.limit_test_batches=1", "--trainer.limit_predict_batches=1"])
    assert cli.subcommand == subcommand
    assert cli.trainer.state.fn == subcommand
    assert cli.calls == ["built"]


def test_hooks_run_around_the_subcommand():
    class HookCLI(LightningCLI):
        def __init__(self, *args, **kwargs):
            self.order = []
            super().__init__(*args, **kwargs)

        def before_fit(self):
            self.order.append("before_fit")

        def fit(self, model, **kwargs):
            self.order.append(("fit", type(model).__name__, sorted(kwargs)))

        def after_fit(self):
            self.order.append("after_fit")

    cli = HookCLI(Net, Data, args=["fit", "--ckpt_path=last"])
    assert cli.order == ["before_fit", ("fit", "Net", ["ckpt_path", "datamodule", "weights_only"]), "after_fit"]


def test_trainer_method_arguments_are_options():
    called = {}

    class SpyTrainer(Trainer):
        def test(self, model=None, dataloaders=None, ckpt_path=None, verbose=True, datamodule=None,
                 weights_only=None):
            called.update(model=model, ckpt_path=ckpt_path, verbose=verbose, datamodule=datamodule)

    cli = LightningCLI(Net, Data, trainer_class=SpyTrainer, args=["test", "--verbose=false", "--ckpt_path=x.ckpt"])
    assert called == {"model": cli.model, "ckpt_path": "x.ckpt", "verbose": False, "datamodule": cli.datamodule}


def test_custom_subcommand_from_trainer_method(capsys):
    class MyTrainer(Trainer):
        def tune(self, model: LightningModule, steps: int = 3) -> None:
            """Tune the model.

            Args:
                model: The model.
                steps: How many tuning steps.
            """
            self.tuned = (model, steps)

    class MyCLI(LightningCLI):
        @staticmethod
        def subcommands():
            return {**LightningCLI.subcommands(), "tune": {"model"}}

    cli = MyCLI(Net, trainer_class=MyTrainer, args=["tune", "--steps=5"])
    assert cli.trainer.tuned == (cli.model, 5)
    with pytest.raises(SystemExit):
        MyCLI(Net, trainer_class=MyTrainer, args=["tune", "--help"])
    out = capsys.readouterr().out
    assert "Tune the model." in out and "How many tuning steps. (type: int, default: 3)" in out


# ------------------------------------------------------------------------------------------- config files
def test_several_config_files_merge_in_order(tmp_path):
    first = yaml_file(tmp_path / "a.yaml", {"model": {"hidden": 3, "lr": 0.5}, "trainer": {"max_epochs": 4}})
    second = yaml_file(tmp_path / "b.yaml", {"model": {"hidden": 9}})
    cli = LightningCLI(Net, run=False, args=["--config", first, "--config", second, "--trainer.max_epochs=5"])
    assert (cli.config.model.hidden, cli.config.model.lr, cli.config.trainer.max_epochs) == (9, 0.5, 5)


def test_config_before_and_after_the_subcommand(tmp_path):
    top = yaml_file(tmp_path / "top.yaml", {"fit": {"model": {"hidden": 3}}, "test": {"model": {"hidden": 4}}})
    inner = yaml_file(tmp_path / "inner.yaml", {"model": {"lr": 0.25}})

    class NoRun(LightningCLI):
        def fit(self, **kwargs):
            pass

    cli = NoRun(Net, args=["--config", top, "fit", "--config", inner])
    assert (cli.model.hparams.hidden, cli.model.hparams.lr) == (3, 0.25)


def test_print_config_and_skip_null(capsys):
    with pytest.raises(SystemExit):
        LightningCLI(Net, Data, args=["fit", "--model.hidden=11", "--print_config"])
    full = yaml.safe_load(capsys.readouterr().out)
    assert full["model"]["hidden"] == 11 and full["trainer"]["max_epochs"] is None and "ckpt_path" in full
    with pytest.raises(SystemExit):
        LightningCLI(Net, Data, args=["fit", "--print_config=skip_null"])
    skipped = yaml.safe_load(capsys.readouterr().out)
    assert "max_epochs" not in skipped["trainer"] and "ckpt_path" not in skipped


def test_parser_kwargs_per_subcommand_default_config_files(tmp_path):
    fit_defaults = yaml_file(tmp_path / "fit.yaml", {"trainer": {"limit_train_batches": 2}})
    common = yaml_file(tmp_path / "common.yaml", {"fit": {"model": {"hidden": 12}}})

    class NoRun(LightningCLI):
        def fit(self, **kwargs):
            pass

    cli = NoRun(Net, args=["fit"], parser_kwargs={"default_config_files": [common],
                                                  "fit": {"default_config_files": [fit_defaults]}})
    assert cli.trainer.limit_train_batches == 2
    assert cli.model.hparams.hidden == 12


def test_trainer_defaults_and_seed_default():
    cli = LightningCLI(Net, run=False, args=[], seed_everything_default=123,
                       trainer_defaults={"max_epochs": 7, "callbacks": [EarlyStopping(monitor="x")]})
    assert cli.trainer.max_epochs == 7 and cli.config.seed_everything == 123
    assert os.environ["PL_GLOBAL_SEED"] == "123"
    assert any(isinstance(c, EarlyStopping) for c in cli.trainer.callbacks)
    cli = LightningCLI(Net, run=False, args=["--trainer.max_epochs=2", "--seed_everything=false"],
                       trainer_defaults={"max_epochs": 7})
    assert cli.trainer.max_epochs == 2 and cli.config.seed_everything is False


def test_trainer_defaults_object_for_class_typed_argument():
    profiler = SimpleProfiler()
    cli = LightningCLI(Net, run=False, args=[], trainer_defaults={"profiler": profiler})
    assert cli.trainer.profiler is profiler
    cli = LightningCLI(Net, run=False, args=["--trainer.profiler=simple"], trainer_defaults={"profiler": profiler})
    assert cli.trainer.profiler is not profiler


def test_environment_variables(monkeypatch, capsys):
    monkeypatch.setenv("FL_FIT__TRAINER__MAX_EPOCHS", "3")
    monkeypatch.setenv("FL_FIT__MODEL__HIDDEN", "13")

    class NoRun(LightningCLI):
        def fit(self, **kwargs):
            pass

    cli = NoRun(Net, args=["fit"], parser_kwargs={"default_env": True, "env_prefix": "FL"})
    assert cli.trainer.max_epochs == 3 and cli.model.hparams.hidden == 13
    with pytest.raises(SystemExit):
        NoRun(Net, args=["fit", "--help"], parser_kwargs={"default_env": True})
    assert "PL_FIT__TRAINER__MAX_EPOCHS" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ subclass mode
def test_subclass_mode_class_path_and_init_args(tmp_path):
    config = yaml_file(tmp_path / "c.yaml", {
        "model": {"class_path": "cli_models.WideNet", "init_args": {"scale": 3.0, "hidden": 5}},
        "data": {"class_path": "cli_models.Data", "init_args": {"batch_size": 2}},
    })
    cli = LightningCLI(Net, Data, subclass_mode_model=True, subclass_mode_data=True, run=False,
                       args=["--config", config])
    assert type(cli.model) is WideNet and cli.model.scale == 3.0 and cli.model.hparams.hidden == 5
    assert cli.model.hparams["_class_path"] == "cli_models.WideNet"
    assert type(cli.datamodule) is Data and cli.datamodule.batch_size == 2


def test_base_classes_with_short_names():
    cli = LightningCLI(args=["--model=WideNet", "--model.scale=4", "--data=Data", "--data.batch_size=5"], run=False)
    assert isinstance(cli.model, WideNet) and cli.model.scale == 4.0
    assert isinstance(cli.datamodule, Data) and cli.datamodule.batch_size == 5
    cli = LightningCLI(BoringModel, run=False, args=[])
    assert cli.datamodule is None  # the datamodule is optional when no class is given


def test_callbacks_and_logger_from_class_paths(tmp_path):
    callbacks = [
        {"class_path": "featherlight.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "epoch"}},
        {"class_path": "ModelCheckpoint", "init_args": {"monitor": "val_loss"}},
    ]
    cli = LightningCLI(Net, run=False, args=[f"--trainer.callbacks={json.dumps(callbacks)}",
                                             "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=m",
                                             "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path}"])
    monitor = next(c for c in cli.trainer.callbacks if isinstance(c, LearningRateMonitor))
    assert monitor.logging_interval == "epoch"
    assert any(isinstance(c, ModelCheckpoint) and c.monitor == "val_loss" for c in cli.trainer.callbacks)
    assert any(isinstance(c, EarlyStopping) and c.monitor == "m" for c in cli.trainer.callbacks)
    assert isinstance(cli.trainer.logger, CSVLogger) and cli.trainer.logger.save_dir == str(tmp_path)


def test_several_loggers_from_class_paths(tmp_path):
    loggers = [{"class_path": "CSVLogger", "init_args": {"save_dir": str(tmp_path / "csv")}},
               {"class_path": "featherlight.loggers.TensorBoardLogger", "init_args": {"save_dir": str(tmp_path)}}]
    cli = LightningCLI(Net, run=False, args=[f"--trainer.logger={json.dumps(loggers)}"])
    assert [type(logger).__name__ for logger in cli.trainer.loggers] == ["CSVLogger", "TensorBoardLogger"]


def test_trainer_default_callback_as_class_path():
    cli = LightningCLI(Net, run=False, args=[], trainer_defaults={
        "callbacks": {"class_path": "featherlight.callbacks.EarlyStopping", "init_args": {"monitor": "q"}}})
    assert any(isinstance(c, EarlyStopping) and c.monitor == "q" for c in cli.trainer.callbacks)


def test_extra_callback_group_from_add_lightning_class_args():
    class MyCLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            parser.add_lightning_class_args(EarlyStopping, "early_stopping")
            parser.set_defaults({"early_stopping.monitor": "val_loss", "early_stopping.patience": 2})

    cli = MyCLI(Net, run=False, args=["--early_stopping.patience=7"])
    stopper = next(c for c in cli.trainer.callbacks if isinstance(c, EarlyStopping))
    assert (stopper.monitor, stopper.patience) == ("val_loss", 7)


def test_add_lightning_class_args_rejects_other_classes():
    from featherlight.utilities.exceptions import MisconfigurationException

    with pytest.raises(MisconfigurationException, match="Trainer, LightningModule, LightningDataModule or Callback"):
        LightningArgumentParser().add_lightning_class_args(torch.nn.Linear, "linear")


def test_builder_functions_for_model_and_trainer():
    def make_model(hidden: int = 2) -> Net:
        return Net(hidden=hidden)

    def make_trainer(max_epochs: int = 1, callbacks: list = None) -> Trainer:
        return Trainer(max_epochs=max_epochs, callbacks=callbacks, logger=False)

    cli = LightningCLI(make_model, trainer_class=make_trainer, run=False, args=["--model.hidden=6",
                                                                                  "--trainer.max_epochs=3"])
    assert cli.model.layer[0].out_features == 6 and cli.trainer.max_epochs == 3


# ----------------------------------------------------------------------------------- optimizers, schedulers
def test_optimizer_and_scheduler_from_the_command_line():
    with pytest.warns(UserWarning, match="Net.configure_optimizers` will be overridden by `LightningCLI"):
        cli = LightningCLI(Net, run=False, args=["--optimizer", "Adam", "--optimizer.lr", "0.01",
                                                 "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "3"])
    [optimizer], [scheduler] = cli.model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 0.01
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR) and scheduler.step_size == 3
    # built from the parameters the model has when asked (fresh each call), and the model still pickles
    assert cli.model.configure_optimizers()[0][0] is not optimizer
    assert isinstance(pickle.loads(pickle.dumps(cli.model)), Net)


def test_optimizer_only_and_fit_uses_it():
    cli = LightningCLI(Net, Data, args=["fit", *SHORT, "--trainer.logger=false", "--optimizer=SGD",
                                        "--optimizer.lr=0.5"], save_config_callback=None)
    assert len(cli.trainer.optimizers) == 1 and cli.trainer.optimizers[0].param_groups[0]["lr"] == 0.5
    assert cli.trainer.lr_scheduler_configs == []


def test_no_optimizer_given_keeps_the_models_method():
    cli = LightningCLI(Net, run=False, args=[])
    assert isinstance(cli.model.configure_optimizers(), torch.optim.SGD)
    assert "configure_optimizers" not in vars(cli.model)


def test_reduce_lr_on_plateau_carries_its_monitor():
    cli = LightningCLI(BoringModel, run=False, args=["--optimizer=Adam", "--lr_scheduler=ReduceLROnPlateau",
                                                     "--lr_scheduler.monitor=val_loss", "--lr_scheduler.patience=4"])
    config = cli.model.configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    assert isinstance(scheduler, ReduceLROnPlateau) and scheduler.patience == 4
    assert config["lr_scheduler"]["monitor"] == "val_loss"


def test_add_optimizer_args_with_one_class_and_custom_configure():
    class MyCLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            parser.add_optimizer_args(torch.optim.Adam)
            parser.add_lr_scheduler_args(torch.optim.lr_scheduler.ExponentialLR)

        @staticmethod
        def configure_optimizers(lightning_module, optimizer, lr_scheduler=None):
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step"}}

    cli = MyCLI(BoringModel, run=False, args=["--optimizer.lr=0.3", "--lr_scheduler.gamma=0.5"])
    config = cli.model.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.Adam) and config["optimizer"].param_groups[0]["lr"] == 0.3
    assert config["lr_scheduler"]["scheduler"].gamma == 0.5 and config["lr_scheduler"]["interval"] == "step"


def test_optimizer_groups_linked_to_model_arguments(capsys, tmp_path):
    class MyCLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            parser.add_optimizer_args((torch.optim.SGD, torch.optim.Adam), link_to="model.opt_config")
            parser.add_lr_scheduler_args(torch.optim.lr_scheduler.StepLR, link_to="model.sched_config")

    args = ["--optimizer=Adam", "--optimizer.lr=0.2", "--lr_scheduler.step_size=4"]
    cli = MyCLI(ConfigDictNet, run=False, args=args)
    optimizer = instantiate_class(cli.model.parameters(), cli.model.opt_config)
    scheduler = instantiate_class(optimizer, cli.model.sched_config)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 0.2
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR) and scheduler.step_size == 4
    # the printed config reloads to the same objects
    with pytest.raises(SystemExit):
        MyCLI(ConfigDictNet, run=False, args=[*args, "--print_config"])
    saved = tmp_path / "printed.yaml"
    saved.write_text(capsys.readouterr().out)
    again = MyCLI(ConfigDictNet, run=False, args=["--config", str(saved)])
    assert again.model.opt_config == cli.model.opt_config and again.model.sched_config == cli.model.sched_config


def test_injected_optimizer_callables():
    cli = LightningCLI(InjectedNet, run=False, auto_configure_optimizers=False, args=[
        "--model.optimizer=Adam", "--model.optimizer.lr=0.02", "--model.scheduler=ExponentialLR",
        "--model.scheduler.gamma=0.7", "--model.activation=Tanh"])
    config = cli.model.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.Adam) and config["optimizer"].param_groups[0]["lr"] == 0.02
    assert config["lr_scheduler"].gamma == 0.7
    assert isinstance(cli.model.activation, torch.nn.Tanh)
    assert cli.model.hparams["optimizer"]["class_path"] == "torch.optim.Adam"
    assert cli.model.hparams["_instantiator"] == "featherlight.cli.instantiate_module"


# ----------------------------------------------------------------------------------------------- links
def test_links_on_parse_and_on_instantiate():
    class MyCLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            parser.link_arguments("data.batch_size", "model.batch_size")
            parser.link_arguments("data.num_outputs", "model.num_outputs", apply_on="instantiate")

    cli = MyCLI(LinkedNet, Data, run=False, args=["--data.batch_size=6"])
    assert cli.model.hparams.batch_size == 6 and cli.model.layer.out_features == 2
    # the instantiation-linked value is part of the recorded hyperparameters too
    assert cli.model.hparams.num_outputs == 2


# ------------------------------------------------------------------------------------------ saving configs
def test_save_config_refuses_to_overwrite(tmp_path):
    args = ["fit", *SHORT, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"]
    LightningCLI(Net, Data, args=args)
    assert (tmp_path / "config.yaml").is_file()
    with pytest.raises(RuntimeError, match="overwrite"):
        LightningCLI(Net, Data, args=args)
    LightningCLI(Net, Data, args=[*args, "--model.hidden=3"], save_config_kwargs={"overwrite": True})
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["hidden"] == 3


def test_save_config_options(tmp_path):
    args = ["fit", *SHORT, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"]
    LightningCLI(Net, Data, args=args, save_config_kwargs={"config_filename": "run.yaml"})
    assert (tmp_path / "run.yaml").is_file() and not (tmp_path / "config.yaml").exists()
    LightningCLI(Net, Data, args=args, save_config_callback=None)
    assert not (tmp_path / "config.yaml").exists()
    LightningCLI(Net, Data, args=["fit", "--trainer.fast_dev_run=1", *QUIET, f"--trainer.default_root_dir={tmp_path}"])
    assert not (tmp_path / "config.yaml").exists()  # fast_dev_run writes nothing


def test_save_config_once_across_stages(tmp_path):
    cli = LightningCLI(Net, Data, run=False, args=[*SHORT, "--trainer.logger=false", "--trainer.limit_test_batches=1",
                                                   f"--trainer.default_root_dir={tmp_path}"])
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, SaveConfigCallback))
    assert not callback.already_saved
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert callback.already_saved
    cli.trainer.test(cli.model, datamodule=cli.datamodule)  # no "already exists" error


def test_save_to_log_dir_false_needs_save_config():
    with pytest.raises(ValueError, match="save_to_log_dir=False"):
        SaveConfigCallback(LightningArgumentParser(), Namespace(), save_to_log_dir=False)

    class ToLogger(SaveConfigCallback):
        def save_config(self, trainer, pl_module, stage):
            trainer.saved_text = self.parser.dump(self.config, skip_none=False)

    cli = LightningCLI(Net, Data, args=["fit", *SHORT, "--trainer.logger=false"],
                       save_config_callback=ToLogger, save_config_kwargs={"save_to_log_dir": False})
    assert "hidden: 4" in cli.trainer.saved_text and not Path("config.yaml").exists()


def test_reinstantiate_trainer_keeps_the_config():
    cli = LightningCLI(Net, run=False, args=["--trainer.callbacks=EarlyStopping", "--trainer.callbacks.monitor=a"])

    class Extra(Callback):
        pass

    trainer = cli.instantiate_trainer(max_epochs=9, callbacks=[Extra()])
    assert trainer.max_epochs == 9 and any(isinstance(c, Extra) for c in trainer.callbacks)
    assert cli.config_init.trainer.max_epochs is None
    twice = cli.instantiate_trainer()
    assert sum(isinstance(c, SaveConfigCallback) for c in twice.callbacks) == 1


# --------------------------------------------------------------------------------------------- checkpoints
def test_ckpt_path_restores_the_model_hyperparameters(tmp_path):
    cli = LightningCLI(Net, Data, args=["fit", *SHORT, "--model.hidden=5", f"--trainer.default_root_dir={tmp_path}"])
    checkpoint = next(Path(cli.trainer.log_dir, "checkpoints").glob("*.ckpt"))

    class NoRun(LightningCLI):
        def predict(self, **kwargs):
            self.kwargs = kwargs

    cli = NoRun(Net, Data, args=["predict", f"--ckpt_path={checkpoint}"])
    assert cli.model.hparams.hidden == 5 and cli.model.layer[0].out_features == 5
    assert cli.kwargs["ckpt_path"] == str(checkpoint)


def test_load_from_checkpoint_rebuilds_injected_arguments(tmp_path):
    cli = LightningCLI(InjectedNet, Data, run=False, auto_configure_optimizers=False, subclass_mode_data=True,
                       args=[*SHORT, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}",
                             "--model.optimizer=Adam", "--model.optimizer.lr=0.03", "--data=Data"])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    checkpoint = next(Path(tmp_path, "checkpoints").glob("*.ckpt"))
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["hyper_parameters"]["_instantiator"] == "featherlight.cli.instantiate_module"
    assert saved["datamodule_hyper_parameters"]["_class_path"] == "cli_models.Data"

    model = InjectedNet.load_from_checkpoint(checkpoint)
    assert isinstance(model.activation, torch.nn.LeakyReLU) and model.activation.negative_slope == 0.05
    optimizer = model.configure_optimizers()["optimizer"]  # (ConstantLR then scales the lr down)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["initial_lr"] == 0.03
    torch.testing.assert_close(model.layer.weight, cli.model.layer.weight)
    datamodule = LightningDataModule.load_from_checkpoint(checkpoint)
    assert type(datamodule) is Data and datamodule.batch_size == 8


def test_hparams_merge_of_model_and_data_in_subclass_mode(tmp_path):
    config = {"model": {"class_path": "cli_models.Net"}, "data": {"class_path": "cli_models.Data"}}
    cli = LightningCLI(args=["fit", *SHORT, f"--config={json.dumps(config)}", f"--trainer.default_root_dir={tmp_path}"])
    assert set(cli.model.hparams) == {"hidden", "lr", "_instantiator", "_class_path"}
    logged = yaml.safe_load(Path(cli.trainer.log_dir, "hparams.yaml").read_text())
    assert "_class_path" not in logged and logged["batch_size"] == 8


# ------------------------------------------------------------------------------------------------- errors
def test_unknown_key_names_the_file_and_close_matches(tmp_path, capsys):
    bad = yaml_file(tmp_path / "bad.yaml", {"trainer": {"max_epoch": 1}})
    with pytest.raises(SystemExit):
        LightningCLI(Net, Data, args=["fit", "--config", bad])
    err = capsys.readouterr().err
    assert "trainer.max_epoch" in err and bad in err
    assert "did you mean: trainer.max_epochs" in err and "accepted under `trainer`:" in err
    assert "[--trainer.accelerator" not in err  # the usage block (one line per option) is left out


def test_bad_value_names_the_file_and_the_type(tmp_path, capsys):
    bad = yaml_file(tmp_path / "bad.yaml", {"model": {"hidden": "wide"}})
    with pytest.raises(SystemExit):
        LightningCLI(Net, run=False, args=["--config", bad])
    err = capsys.readouterr().err
    assert 'Parser key "model.hidden"' in err and bad in err and "`model.hidden` accepts: int" in err


def test_bad_class_names_the_known_classes(tmp_path, capsys):
    bad = yaml_file(tmp_path / "bad.yaml", {"trainer": {"callbacks": [{"class_path": "EarlyStoping"}]}})
    with pytest.raises(SystemExit):
        LightningCLI(Net, run=False, args=["--config", bad])
    assert "did you mean: featherlight.callbacks.EarlyStopping?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        LightningCLI(Net, run=False, args=["--optimizer=Adam", "--optimizer.lrr=1"])
    err = capsys.readouterr().err
    assert "did you mean: lr?" in err or "did you mean: optimizer.lr?" in err


def test_error_in_model_init_is_annotated():
    class Picky(BoringModel):
        def __init__(self, width: int = 1):
            super().__init__()
            if width < 1:
                raise ValueError("width must be positive")

    with pytest.raises(ValueError, match="width must be positive") as info:
        LightningCLI(Picky, run=False, args=["--model.width=0"])
    if sys.version_info >= (3, 11):
        assert any("building `model`" in note for note in info.value.__notes__)


def test_parser_errors_raise_without_exit_on_error():
    from jsonargparse import ArgumentError

    with pytest.raises(ArgumentError, match="max_epoch"):
        LightningCLI(Net, run=False, args=["--trainer.max_epochz=1"],
                     parser_kwargs={"exit_on_error": False})


# ------------------------------------------------------------------------------------------- subprocesses
def test_script_help(tmp_path):
    out = run_script("fit", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for option in ("--trainer.max_epochs", "--trainer.callbacks", "--model.hidden", "--data.batch_size",
                   "--ckpt_path", "--optimizer", "--lr_scheduler", "--config", "--print_config", "--seed_everything"):
        assert option in out.stdout
    assert "Width of the hidden layer." in out.stdout  # from the model's docstring
    top = run_script("--help", cwd=tmp_path)
    assert top.returncode == 0 and "{fit,validate,test,predict}" in top.stdout


def test_script_print_config(tmp_path):
    out = run_script("fit", "--model.hidden=3", "--print_config=skip_null", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    printed = yaml.safe_load(out.stdout)
    assert printed["model"] == {"hidden": 3, "lr": 0.1}
    assert "max_epochs" not in printed["trainer"]


def test_script_config_round_trip(tmp_path):
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    out = run_script("fit", *SHORT, "--model.hidden=5", "--data.batch_size=4", "--optimizer=Adam",
                     "--optimizer.lr=0.01", "--trainer.callbacks+=LearningRateMonitor",
                     f"--trainer.default_root_dir={first_dir}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (first,) = first_dir.glob("lightning_logs/version_*/config.yaml")
    # the saved config is the whole run: passed back, it parses to the same config
    again = run_script("fit", "--config", str(first), "--print_config", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert yaml.safe_load(again.stdout) == yaml.safe_load(first.read_text())
    # and it runs: the second run saves an identical config (the log dir aside)
    out = run_script("fit", "--config", str(first), f"--trainer.default_root_dir={second_dir}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (second,) = second_dir.glob("lightning_logs/version_*/config.yaml")
    a, b = yaml.safe_load(first.read_text()), yaml.safe_load(second.read_text())
    assert a["trainer"].pop("default_root_dir") != b["trainer"].pop("default_root_dir")
    assert a == b
    assert a["optimizer"]["class_path"] == "torch.optim.Adam"
    assert a["trainer"]["callbacks"][0]["class_path"] == "featherlight.callbacks.LearningRateMonitor"


def test_script_bad_config_error(tmp_path):
    bad = yaml_file(tmp_path / "bad.yaml", {"data": {"batchsize": 4}})
    out = run_script("fit", "--config", bad, cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "data.batchsize" in out.stderr and bad in out.stderr and "did you mean: data.batch_size?" in out.stderr


def test_script_ddp_saves_the_config_once_on_rank_zero(tmp_path):
    args = ["fit", *SHORT, "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
            "--trainer.logger=false"]
    out = run_script(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["trainer"]["strategy"] == "ddp"
    # a second run in the same directory stops on every rank (no rank left waiting in a collective)
    again = run_script(*args, cwd=tmp_path)
    assert again.returncode != 0
    assert "Aborting to avoid overwriting" in again.stderr
