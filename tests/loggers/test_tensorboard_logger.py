import builtins
import math
import os
import pickle
import struct
import subprocess
import sys
from argparse import Namespace

import pytest
import torch
import yaml

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from featherlight.loggers import TensorBoardLogger  # noqa: E402
from featherlight.loggers import tensorboard as tb_module  # noqa: E402
from featherlight.utilities.rank_zero import rank_zero_only  # noqa: E402

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _files_under(path):
    """Every file below ``path`` (directories alone do not count)."""
    return [os.path.join(root, f) for root, _, files in os.walk(path) for f in files]


def _events(log_dir):
    """Everything TensorBoard reads from a run directory (all of its event files)."""
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0, "images": 0, "histograms": 0})
    acc.Reload()
    return acc


def _event_files(log_dir):
    return sorted(f for f in os.listdir(log_dir) if "tfevents" in f)


def _scalar_files(log_dir):
    return [f for f in _event_files(log_dir) if ".scalars" in f]


def _scalars(log_dir, tag):
    return [(e.step, e.value) for e in _events(log_dir).Scalars(tag)]


def test_directories_and_versions(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    assert logger.version == 0
    assert logger.save_dir == str(tmp_path)
    assert logger.root_dir == os.path.join(str(tmp_path), "lightning_logs")
    assert logger.log_dir == os.path.join(str(tmp_path), "lightning_logs", "version_0")
    (tmp_path / "lightning_logs" / "version_3").mkdir(parents=True)
    assert TensorBoardLogger(tmp_path).version == 4
    assert TensorBoardLogger(tmp_path, version="abc").log_dir == os.path.join(str(tmp_path), "lightning_logs", "abc")
    sub = TensorBoardLogger(tmp_path, name="", version=1, sub_dir="train")
    assert sub.log_dir == os.path.join(str(tmp_path), "version_1", "train")


def test_log_dir_expands_user_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FL_TB_TEST_DIR", str(tmp_path))
    logger = TensorBoardLogger("$FL_TB_TEST_DIR", version=0)
    assert logger.log_dir == os.path.join(str(tmp_path), "lightning_logs", "version_0")


def test_writer_is_created_lazily(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    assert logger._experiment is None
    assert os.listdir(logger.log_dir) == []  # the version directory is claimed when resolved, nothing written in it
    writer = logger.experiment
    from torch.utils.tensorboard import SummaryWriter

    assert isinstance(writer, SummaryWriter)
    assert logger.experiment is writer
    assert os.path.abspath(writer.log_dir) == os.path.abspath(logger.log_dir)


def test_log_metrics_writes_scalars(tmp_path):
    logger = TensorBoardLogger(tmp_path, prefix="p")
    logger.log_metrics({"loss": torch.tensor(0.5), "acc": 0.25}, step=3)
    logger.log_metrics({"loss": 0.125}, step=4)
    logger.log_metrics({"grouped": {"a": 1.0, "b": 2.0}}, step=5)
    logger.finalize("success")
    assert _scalars(logger.log_dir, "p-loss") == [(3, 0.5), (4, 0.125)]
    assert _scalars(logger.log_dir, "p-acc") == [(3, 0.25)]
    grouped_dirs = [d for d in os.listdir(logger.log_dir) if d.startswith("p-grouped")]
    assert sorted(grouped_dirs) == ["p-grouped_a", "p-grouped_b"]  # add_scalars writes one run per key


def test_log_metrics_rejects_non_scalars(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    with pytest.raises(ValueError, match="Cannot log metric 'bad'"):
        logger.log_metrics({"bad": "text"}, step=0)
    with pytest.raises(ValueError, match="Cannot log metric 'vector'"):
        logger.log_metrics({"ok": 1.0, "vector": torch.tensor([1.0, 2.0])}, step=0)
    with pytest.raises(ValueError, match="Cannot log metric 'none'"):
        logger.log_metrics({"none": None}, step=0)
    with pytest.raises(ValueError, match="Cannot log metric 'huge'"):
        logger.log_metrics({"huge": 10**400}, step=0)
    assert not _files_under(logger.root_dir)  # a call with a bad value writes nothing


def test_log_metrics_accepts_numbers_and_one_element_values(tmp_path):
    np = pytest.importorskip("numpy")
    logger = TensorBoardLogger(tmp_path)
    values = {
        "float": 0.5, "int": 3, "bool": True, "t0": torch.tensor(0.25), "t1": torch.tensor([0.75]),
        "half": torch.tensor(1.5, dtype=torch.float16), "np_scalar": np.float32(2.5), "np_array": np.array([[4.0]]),
    }
    logger.log_metrics(values, step=7)
    logger.finalize("success")
    expected = {"float": 0.5, "int": 3.0, "bool": 1.0, "t0": 0.25, "t1": 0.75, "half": 1.5, "np_scalar": 2.5,
                "np_array": 4.0}
    assert {tag: _scalars(logger.log_dir, tag) for tag in values} == {k: [(7, v)] for k, v in expected.items()}


def test_scalars_go_to_one_event_per_call_without_a_summary_writer(tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    logger = TensorBoardLogger(tmp_path)
    for step in range(4):
        logger.log_metrics({"loss": 1.0 / (step + 1), "epoch": step // 2, "lr": torch.tensor(0.1)}, step=step)
    logger.finalize("success")
    assert logger._experiment is None  # tensorboard's SummaryWriter (and its thread) never started
    files = _event_files(logger.log_dir)
    assert files == _scalar_files(logger.log_dir) and len(files) == 1
    events = list(LegacyEventFileLoader(os.path.join(logger.log_dir, files[0])).Load())
    assert events[0].file_version == "brain.Event:2"
    assert [(e.step, [v.tag for v in e.summary.value]) for e in events[1:]] == [
        (step, ["loss", "epoch", "lr"]) for step in range(4)
    ]
    f32 = lambda x: struct.unpack("<f", struct.pack("<f", x))[0]  # noqa: E731
    assert _scalars(logger.log_dir, "loss") == [(s, f32(1.0 / (s + 1))) for s in range(4)]
    assert _scalars(logger.log_dir, "epoch") == [(0, 0.0), (1, 0.0), (2, 1.0), (3, 1.0)]
    assert _scalars(logger.log_dir, "lr") == [(s, f32(0.1)) for s in range(4)]


def test_scalar_file_and_summary_writer_file_are_read_together(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"loss": 0.5, "epoch": 0}, step=0)
    logger.experiment.add_image("image", torch.rand(3, 4, 4), 0)
    logger.experiment.add_histogram("weights", torch.randn(100), 1)
    logger.log_metrics({"loss": 0.25, "epoch": 0}, step=1)
    logger.experiment.add_scalar("direct", 2.0, 1)
    logger.finalize("success")

    files = _event_files(logger.log_dir)
    assert len(files) == 2 and len(_scalar_files(logger.log_dir)) == 1
    # in the same second, the SummaryWriter's file sorts first, so a reader that follows only the newest file
    # of a run (TensorBoard's legacy loader) keeps following the training scalars
    assert files[1] == _scalar_files(logger.log_dir)[0]
    tags = _events(logger.log_dir).Tags()
    assert sorted(tags["scalars"]) == ["direct", "epoch", "loss"]
    assert tags["images"] == ["image"] and tags["histograms"] == ["weights"]
    assert _scalars(logger.log_dir, "loss") == [(0, 0.5), (1, 0.25)]
    assert _scalars(logger.log_dir, "direct") == [(1, 2.0)]


def test_nothing_logged_creates_no_file(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({}, step=0)
    logger.save()
    logger.finalize("success")
    assert not os.path.exists(logger.root_dir)
    assert logger._experiment is None and logger._scalar_writer is None


def test_save_flushes_buffered_scalars(tmp_path):
    logger = TensorBoardLogger(tmp_path, flush_secs=3600)
    for step in range(3):
        logger.log_metrics({"x": float(step)}, step=step)
    assert _scalars(logger.log_dir, "x") == [(0, 0.0)]  # the first call is written at once, the rest is buffered
    logger.save()
    assert _scalars(logger.log_dir, "x") == [(0, 0.0), (1, 1.0), (2, 2.0)]  # before finalize
    logger.log_metrics({"x": 3.0}, step=3)
    logger.finalize("failed")
    assert _scalars(logger.log_dir, "x")[-1] == (3, 3.0)


def test_scalars_are_written_out_every_few_seconds_by_default(tmp_path, monkeypatch):
    from featherlight.loggers import _tfevents

    clock = [1000.0]
    monkeypatch.setattr(_tfevents.time, "monotonic", lambda: clock[0])
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"x": 0.0}, step=0)
    logger.log_metrics({"x": 1.0}, step=1)
    assert len(_scalars(logger.log_dir, "x")) == 1
    clock[0] += tb_module._SCALAR_FLUSH_SECS + 0.1
    logger.log_metrics({"x": 2.0}, step=2)
    assert len(_scalars(logger.log_dir, "x")) == 3
    assert TensorBoardLogger(tmp_path, version=9, flush_secs=0)._get_scalar_writer().flush_secs == 0


def test_default_logger_end_to_end(tmp_path):
    import featherlight
    from featherlight.demos.boring_classes import BoringModel

    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            loss = self.step(batch)
            self.log("loss", loss)
            return loss

    trainer = featherlight.Trainer(
        max_epochs=1, limit_train_batches=5, limit_val_batches=0, log_every_n_steps=1, default_root_dir=tmp_path,
        enable_progress_bar=False,
    )
    trainer.fit(Model())
    assert isinstance(trainer.logger, TensorBoardLogger)
    log_dir = trainer.logger.log_dir
    assert log_dir.startswith(str(tmp_path))
    loss = _scalars(log_dir, "loss")
    assert [step for step, _ in loss] == [0, 1, 2, 3, 4]
    assert all(math.isfinite(value) and value > 0 for _, value in loss)
    assert _scalars(log_dir, "epoch") == [(step, 0.0) for step in range(5)]
    # The trainer touches `logger.experiment` at setup (as Lightning does), which creates the SummaryWriter's file
    # (it only holds the file-version event here). The scalars are in a file of their own, which sorts last.
    scalar_files = _scalar_files(log_dir)
    assert len(scalar_files) == 1 and _event_files(log_dir)[-1] == scalar_files[0]


@pytest.mark.filterwarnings("ignore:Skipping hyperparameter 'act'")
def test_log_hyperparams_writes_yaml_and_hparams_plugin(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams({"lr": 0.1, "opt": {"name": "sgd"}, "act": torch.nn.ReLU})
    logger.log_hyperparams(Namespace(batch_size=4))
    with open(os.path.join(logger.log_dir, "hparams.yaml")) as f:
        saved = yaml.safe_load(f)
    assert saved["lr"] == 0.1 and saved["opt"] == {"name": "sgd"} and saved["batch_size"] == 4
    logger.finalize("success")

    events = _events(logger.log_dir)
    assert _scalars(logger.log_dir, "hp_metric") == [(0, -1.0), (0, -1.0)]
    plugin = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugin and "_hparams_/experiment" in plugin
    from tensorboard.plugins.hparams import plugin_data_pb2

    info = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/session_start_info"]).session_start_info
    assert info.hparams["lr"].number_value == 0.1
    assert info.hparams["opt/name"].string_value == "sgd"  # nested params are flattened
    assert info.hparams["act"].string_value == "ReLU"  # non-primitives are sanitized


def test_log_hyperparams_metrics_options(tmp_path):
    logger = TensorBoardLogger(tmp_path, version=0)
    logger.log_hyperparams({"lr": 1}, metrics={"val_acc": 0.5})
    logger.log_hyperparams({"lr": 1}, metrics=0.75, step=2)
    no_default = TensorBoardLogger(tmp_path, version=1, default_hp_metric=False)
    no_default.log_hyperparams({"lr": 1})
    logger.finalize("success")
    no_default.finalize("success")
    assert _scalars(logger.log_dir, "val_acc") == [(0, 0.5)]
    assert _scalars(logger.log_dir, "hp_metric") == [(2, 0.75)]
    # without metrics and without the default hp_metric only hparams.yaml is written
    assert os.listdir(no_default.log_dir) == ["hparams.yaml"]


def test_save_writes_missing_hparams_file(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"x": 1.0}, step=0)
    logger.save()
    with open(os.path.join(logger.log_dir, "hparams.yaml")) as f:
        assert yaml.safe_load(f) == {}


def test_finalize_closes_writer(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.finalize("success")  # nothing logged: no writer is created
    assert logger._experiment is None
    logger.log_metrics({"x": 1.0}, step=0)
    writer = logger.experiment
    logger.finalize("success")
    assert writer.all_writers is None  # SummaryWriter.close() drops its file writers
    assert logger._scalar_writer._file is None  # the scalar file is closed
    # logging after finalize (e.g. trainer.test() after fit) starts a new file
    logger.log_metrics({"x": 2.0}, step=1)
    logger.finalize("success")
    assert len(_scalar_files(logger.log_dir)) == 2
    assert _scalars(logger.log_dir, "x") == [(0, 1.0), (1, 2.0)]


def test_purge_step_summary_writer_file_comes_first(tmp_path):
    logger = TensorBoardLogger(tmp_path, version=0, purge_step=5)
    logger.log_metrics({"x": 5.0}, step=5)
    logger.log_metrics({"x": 6.0}, step=6)
    logger.finalize("success")
    files = _event_files(logger.log_dir)
    assert len(files) == 2 and files[-1] == _scalar_files(logger.log_dir)[0]
    # the SummaryWriter's purge marker must not drop the scalars written after it
    assert _scalars(logger.log_dir, "x") == [(5, 5.0), (6, 6.0)]


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)
        self.example_input_array = torch.randn(1, 3)

    def forward(self, x):
        return self.layer(x)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_log_graph(tmp_path):
    logger = TensorBoardLogger(tmp_path, log_graph=True)
    logger.log_graph(_Net())
    logger.finalize("success")
    assert _events(logger.log_dir).Graph() is not None

    disabled = TensorBoardLogger(tmp_path, log_graph=False)
    disabled.log_graph(_Net())
    assert disabled._experiment is None


def test_log_graph_warns_without_input(tmp_path):
    logger = TensorBoardLogger(tmp_path, log_graph=True)
    with pytest.warns(UserWarning, match="example_input_array"):
        logger.log_graph(torch.nn.Linear(3, 2))
    with pytest.warns(UserWarning, match="tuple"):
        logger.log_graph(torch.nn.Linear(3, 2), input_array=[1, 2, 3])


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_log_graph_of_a_lightning_module_without_a_trainer(tmp_path):
    from featherlight.demos.boring_classes import BoringModel

    model = BoringModel()
    model.example_input_array = None
    logger = TensorBoardLogger(tmp_path, log_graph=True)
    logger.log_graph(model, torch.rand(2, 32))
    logger.finalize("success")
    assert _events(logger.log_dir).Graph() is not None
    with pytest.raises(RuntimeError, match="not attached"):
        model.trainer  # noqa: B018 - tracing's leave to answer None is over


def test_log_graph_warnings_are_lightnings(tmp_path):
    logger = TensorBoardLogger(tmp_path, log_graph=True)
    match = "Could not log computational graph to TensorBoard: The `model.example_input_array` .* was not given"
    with pytest.warns(UserWarning, match=match):
        logger.log_graph(torch.nn.Linear(3, 2))
    with pytest.warns(UserWarning, match="Could not log computational graph to TensorBoard: .* can't be traced"):
        logger.log_graph(torch.nn.Linear(3, 2), input_array={"x": 1})


def test_overridden_name_version_and_sub_dir_place_the_logs(tmp_path):
    class Named(TensorBoardLogger):
        @property
        def name(self):
            return "name"

        @property
        def version(self):
            return "version"

    assert Named(tmp_path).log_dir == os.path.join(tmp_path, "name", "version")
    assert Named(tmp_path).root_dir == os.path.join(tmp_path, "name")
    assert Named(tmp_path, sub_dir="sub").log_dir == os.path.join(tmp_path, "name", "version", "sub")

    class Sub(TensorBoardLogger):
        @property
        def sub_dir(self):
            return "other"

    assert Sub(tmp_path, version=3).log_dir == os.path.join(tmp_path, "lightning_logs", "version_3", "other")


def test_hparams_with_non_string_keys(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="exp", version="v1")
    with pytest.warns(UserWarning, match="Skipping '5j' parameter"):
        logger.log_hyperparams({"a": 1, 123: 3, 3.5: 4, 5j: 5})
    assert os.listdir(tmp_path / "exp") == ["v1"]
    assert yaml.safe_load((tmp_path / "exp" / "v1" / "hparams.yaml").read_text()) == {"a": 1, 123: 3, 3.5: 4}


def test_non_zero_rank_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams({"a": 1})
    logger.log_metrics({"x": 1.0}, step=0)
    logger.save()
    logger.finalize("success")
    assert os.listdir(tmp_path) == []


def test_picklable_after_use(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"x": 1.0}, step=0)
    logger.experiment.add_scalar("y", 1.0, 0)
    clone = pickle.loads(pickle.dumps(logger))
    assert clone._experiment is None and clone._scalar_writer is None
    assert clone.log_dir == logger.log_dir
    clone.log_metrics({"x": 2.0}, step=1)
    clone.finalize("success")
    logger.finalize("success")
    assert _scalars(logger.log_dir, "x") == [(0, 1.0), (1, 2.0)]


def test_missing_tensorboard_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(tb_module, "_module_available", lambda name: False)
    with pytest.raises(ModuleNotFoundError, match="pip install tensorboard"):
        TensorBoardLogger(tmp_path)


def test_falls_back_to_tensorboardx(monkeypatch):
    real_import = builtins.__import__
    sentinel_writer, sentinel_hparams = object(), object()
    fake_summary = type(sys)("tensorboardX.summary")
    fake_summary.hparams = sentinel_hparams
    fake_tbx = type(sys)("tensorboardX")
    fake_tbx.SummaryWriter = sentinel_writer
    fake_tbx.summary = fake_summary
    monkeypatch.setitem(sys.modules, "tensorboardX", fake_tbx)
    monkeypatch.setitem(sys.modules, "tensorboardX.summary", fake_summary)

    def fake_import(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard in torch")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    assert tb_module._import_summary_writer() == (sentinel_writer, sentinel_hparams)


def test_constructing_does_not_import_tensorboard(tmp_path):
    code = (
        "import sys; from featherlight.loggers import TensorBoardLogger; "
        f"logger = TensorBoardLogger({str(tmp_path)!r}); logger.log_dir; "
        "print('tensorboard' in sys.modules or 'torch.utils.tensorboard' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=_REPO_ROOT)
    out = run.stdout
    assert out.strip() == "False"


def test_logging_scalars_needs_no_summary_writer_or_thread(tmp_path):
    # the scalar writer uses tensorboard's protobufs and record framing, but not SummaryWriter and its thread
    code = (
        "import sys, threading; from featherlight.loggers import TensorBoardLogger; "
        f"logger = TensorBoardLogger({str(tmp_path)!r}); "
        "logger.log_metrics({'x': 1.0}, step=0); logger.save(); "
        "threads = threading.active_count(); logger.finalize('success'); "
        "print('torch.utils.tensorboard' in sys.modules or threads != 1)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=_REPO_ROOT)
    out = run.stdout
    assert out.strip() == "False"


def test_default_fit_creates_the_log_dir_at_setup_without_a_summary_writer(tmp_path):
    code = f"""
import os, sys
import featherlight as L
from featherlight.demos.boring_classes import BoringModel
seen = []
class Look(L.Callback):
    def setup(self, trainer, pl_module, stage):
        seen.append(os.path.isdir(trainer.logger.log_dir))
trainer = L.Trainer(default_root_dir={str(tmp_path)!r}, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                    log_every_n_steps=1, enable_progress_bar=False, callbacks=[Look()])
class Logs(BoringModel):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("train_loss", out["loss"])
        return out
trainer.fit(Logs())
print(seen, trainer.logger._experiment is None, 'torch.utils.tensorboard' in sys.modules)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=_REPO_ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split("\n")[-2] == "[True] True False"
    log_dir = os.path.join(tmp_path, "lightning_logs", "version_0")
    acc = EventAccumulator(log_dir)
    acc.Reload()
    assert {"train_loss", "epoch"} <= set(acc.Tags()["scalars"]), acc.Tags()
