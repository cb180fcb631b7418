import json
import logging
import os
import pickle
import pstats
import subprocess
import sys
import time

import pytest
import torch

from featherlight.profilers import AdvancedProfiler, PassThroughProfiler, Profiler, PyTorchProfiler, SimpleProfiler

_PROFILER_LOGGER = "featherlight.profilers.profiler"

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _busy(seconds=0.002):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = _Clock()
    monkeypatch.setattr(time, "perf_counter", fake)
    return fake


# ----------------------------------------------------------------------------------------------------------------------
# base class / pass-through
# ----------------------------------------------------------------------------------------------------------------------


def test_profiler_is_abstract():
    with pytest.raises(TypeError):
        Profiler()


def test_passthrough_profiler(caplog):
    profiler = PassThroughProfiler()
    profiler.setup("fit")
    with profiler.profile("run_training_batch") as name:
        assert name == "run_training_batch"
    assert profiler.summary() == ""
    with caplog.at_level(logging.INFO, logger=_PROFILER_LOGGER):
        profiler.describe()
    assert caplog.records == []


def test_profile_stops_on_exception():
    profiler = SimpleProfiler()
    with pytest.raises(RuntimeError):
        with profiler.profile("boom"):
            raise RuntimeError
    assert profiler.current_actions == {}
    assert "boom" in profiler.summary()


def test_setup_uses_log_dir_when_no_dirpath(tmp_path):
    profiler = SimpleProfiler(filename="perf")
    profiler.setup("fit", log_dir=str(tmp_path))
    assert profiler.dirpath == str(tmp_path)
    explicit = SimpleProfiler(dirpath=tmp_path / "mine", filename="perf")
    explicit.setup("fit", log_dir=str(tmp_path))
    assert explicit.dirpath == tmp_path / "mine"


def test_prepare_filename():
    profiler = SimpleProfiler(filename="perf")
    assert profiler._prepare_filename() == "perf.txt"
    profiler.setup("fit", local_rank=1)
    assert profiler._prepare_filename() == "fit-perf-1.txt"
    assert profiler._prepare_filename("a/b:c", extension=".prof") == "fit-perf-1-a_b_c.prof"


# ----------------------------------------------------------------------------------------------------------------------
# SimpleProfiler
# ----------------------------------------------------------------------------------------------------------------------


def test_simple_profiler_records_durations(clock):
    profiler = SimpleProfiler()
    profiler.setup("fit")
    for start in (1.0, 3.0):
        clock.now = start
        profiler.start("a")
        clock.now = start + 0.5
        profiler.stop("a")
    assert {k: list(v) for k, v in profiler.recorded_durations.items()} == {"a": [0.5, 0.5]}


def test_simple_profiler_report_reads_recorded_durations(clock):
    # Lightning's tests (and users) edit `recorded_durations`; the report follows them
    profiler = SimpleProfiler(extended=False)
    with profiler.profile("a"):
        pass
    profiler.recorded_durations["a"] = [2.0, 4.0]
    assert "|  a\t|  3.0  " in profiler.summary()


def test_simple_profiler_keeps_durations_until_next_stage(clock):
    profiler = SimpleProfiler()
    profiler.setup("fit")
    with profiler.profile("fit_action"):
        clock.now += 1.0
    profiler.describe()
    profiler.teardown("fit")
    assert list(profiler.recorded_durations["fit_action"]) == [1.0]  # readable after the run, as in Lightning
    assert "fit_action" in profiler.summary()
    profiler.setup("test")
    assert "fit_action" not in profiler.recorded_durations


def test_simple_profiler_errors():
    profiler = SimpleProfiler()
    with pytest.raises(ValueError, match="never started"):
        profiler.stop("a")
    profiler.start("a")
    with pytest.raises(ValueError, match="already started"):
        profiler.start("a")


_EVENTS = [
    (0.5, "start", "run_training_epoch"),
    (0.75, "start", "run_training_batch"),
    (1.0, "start", "[LightningModule]BoringModel.training_step"),
    (1.5, "stop", "[LightningModule]BoringModel.training_step"),
    (2.25, "stop", "run_training_batch"),
    (2.5, "start", "run_training_batch"),
    (2.75, "start", "[LightningModule]BoringModel.training_step"),
    (3.0, "stop", "[LightningModule]BoringModel.training_step"),
    (3.5, "stop", "run_training_batch"),
    (4.0, "stop", "run_training_epoch"),
    (4.25, "start", "[Callback]ModelCheckpoint{'monitor': None}.on_train_end"),
    (4.5, "stop", "[Callback]ModelCheckpoint{'monitor': None}.on_train_end"),
]


def _replay(profiler, clock):
    for when, what, action in _EVENTS:
        clock.now = when
        getattr(profiler, what)(action)
    clock.now = 8.0


def _expected_extended_report():
    sep = os.linesep
    width = len("[Callback]ModelCheckpoint{'monitor': None}.on_train_end")

    def row(*cells):
        return f"{sep}|  {cells[0]:<{width}s}\t|" + "".join(f"  {c:<15}\t|" for c in cells[1:])

    header = row("Action", "Mean duration (s)", "Num calls", "Total time (s)", "Percentage %")
    rule = sep + "-" * len(header.expandtabs())
    return (
        f"FIT Profiler Report{sep}{rule}{header}{rule}"
        + row("Total", "-", "6", "8.0", "100 %")
        + rule
        + row("run_training_epoch", "3.5", "1", "3.5", "43.75")
        + row("run_training_batch", "1.25", "2", "2.5", "31.25")
        + row("[LightningModule]BoringModel.training_step", "0.375", "2", "0.75", "9.375")
        + row("[Callback]ModelCheckpoint{'monitor': None}.on_train_end", "0.25", "1", "0.25", "3.125")
        + rule
        + sep
    )


def test_simple_profiler_extended_report(clock):
    profiler = SimpleProfiler()
    profiler.setup("fit")
    _replay(profiler, clock)
    assert profiler.summary() == _expected_extended_report()


def test_simple_profiler_report_sorted_by_mean(clock):
    profiler = SimpleProfiler(extended=False)
    profiler.setup("validate")
    _replay(profiler, clock)
    report = profiler.summary()
    assert report.startswith("VALIDATE Profiler Report")
    assert "Num calls" not in report and "Percentage" not in report
    rows = [line.split("|")[1].strip() for line in report.splitlines() if line.startswith("|  ")][1:]
    assert rows == [
        "run_training_epoch",
        "run_training_batch",
        "[LightningModule]BoringModel.training_step",
        "[Callback]ModelCheckpoint{'monitor': None}.on_train_end",
    ]


@pytest.mark.parametrize("extended", [True, False])
def test_simple_profiler_report_matches_lightning(clock, extended):
    lightning_profilers = pytest.importorskip("lightning.pytorch.profilers")
    ours = SimpleProfiler(extended=extended)
    theirs = lightning_profilers.SimpleProfiler(extended=extended)
    for profiler in (ours, theirs):
        profiler.setup("fit")
    for when, what, action in _EVENTS:
        clock.now = when
        getattr(ours, what)(action)
        getattr(theirs, what)(action)
    clock.now = 8.0
    assert ours.summary() == theirs.summary()


def test_simple_profiler_empty_summary():
    profiler = SimpleProfiler()
    profiler.setup("fit")
    assert profiler.summary() == ""


def test_describe_logs_once_per_stage(caplog):
    profiler = SimpleProfiler()
    with caplog.at_level(logging.INFO, logger=_PROFILER_LOGGER):
        profiler.setup("fit")
        with profiler.profile("fit_action"):
            pass
        profiler.describe()
        profiler.teardown("fit")
        profiler.describe()  # nothing new: no second report
        profiler.setup("test")
        with profiler.profile("test_action"):
            pass
        profiler.describe()
        profiler.teardown("test")
    reports = [r.getMessage() for r in caplog.records if "Profiler Report" in r.getMessage()]
    assert len(reports) == 2
    assert reports[0].startswith("FIT Profiler Report") and "fit_action" in reports[0]
    assert reports[1].startswith("TEST Profiler Report") and "test_action" in reports[1]
    assert "fit_action" not in reports[1]


def test_describe_only_logs_on_local_rank_zero(caplog):
    profiler = SimpleProfiler()
    profiler.setup("fit", local_rank=1)
    with profiler.profile("a"):
        pass
    with caplog.at_level(logging.INFO, logger=_PROFILER_LOGGER):
        profiler.describe()
    assert caplog.records == []


def test_describe_writes_report_file_per_stage(tmp_path, caplog):
    profiler = SimpleProfiler(dirpath=tmp_path, filename="perf")
    with caplog.at_level(logging.INFO, logger=_PROFILER_LOGGER):
        for stage in ("fit", "test"):
            profiler.setup(stage)
            with profiler.profile(f"{stage}_action"):
                pass
            profiler.describe()
            profiler.teardown(stage)
    assert caplog.records == []  # written to the file instead of being logged
    assert sorted(os.listdir(tmp_path)) == ["fit-perf.txt", "test-perf.txt"]
    fit_report = (tmp_path / "fit-perf.txt").read_text()
    test_report = (tmp_path / "test-perf.txt").read_text()
    assert fit_report.startswith("FIT Profiler Report") and "fit_action" in fit_report
    assert "fit_action" not in test_report and "test_action" in test_report


def test_describe_with_local_rank_in_filename(tmp_path):
    profiler = SimpleProfiler(filename="perf")
    profiler.setup("fit", local_rank=2, log_dir=str(tmp_path / "logs"))
    with profiler.profile("a"):
        pass
    profiler.describe()
    assert os.listdir(tmp_path / "logs") == ["fit-perf-2.txt"]


# ----------------------------------------------------------------------------------------------------------------------
# AdvancedProfiler
# ----------------------------------------------------------------------------------------------------------------------


def _outer_work():
    return sum(range(1000))


def _inner_work():
    return sum(range(1000))


def test_advanced_profiler_attributes_calls_to_innermost_action():
    profiler = AdvancedProfiler()
    profiler.setup("fit")
    with profiler.profile("outer"):
        _outer_work()
        with profiler.profile("inner"):
            _inner_work()
        _outer_work()  # the outer action resumes after the inner one stops

    def functions(action):
        stats = pstats.Stats(profiler.profiled_actions[action]).stats
        return {name: calls for (_, _, name), (_, calls, *_rest) in stats.items()}

    outer, inner = functions("outer"), functions("inner")
    assert outer.get("_outer_work") == 2 and "_inner_work" not in outer
    assert inner.get("_inner_work") == 1 and "_outer_work" not in inner

    report = profiler.summary()
    assert report.startswith("FIT Profiler Report")
    assert "Profile stats for: outer" in report and "Profile stats for: inner" in report
    assert "Ordered by: cumulative time" in report


def test_advanced_profiler_line_count_restriction():
    profiler = AdvancedProfiler(line_count_restriction=2)
    with profiler.profile("a"):
        _outer_work()
        _inner_work()
        time.sleep(0)
    assert "due to restriction <2>" in profiler.summary()


def test_advanced_profiler_errors():
    profiler = AdvancedProfiler()
    with pytest.raises(ValueError, match="never started"):
        profiler.stop("a")
    profiler.start("a")
    with pytest.raises(ValueError, match="already started"):
        profiler.start("a")
    profiler.stop("a")


def test_advanced_profiler_dump_stats_and_teardown(tmp_path):
    profiler = AdvancedProfiler(dirpath=tmp_path, filename="adv", dump_stats=True)
    profiler.setup("fit")
    with profiler.profile("[LightningModule]M.training_step"):
        _outer_work()
    profiler.describe()
    files = sorted(os.listdir(tmp_path))
    assert files == ["fit-adv-[LightningModule]M.training_step.prof", "fit-adv.txt"]
    stats = pstats.Stats(str(tmp_path / files[0]))
    assert any(name == "_outer_work" for (_, _, name) in stats.stats)
    assert profiler.profiled_actions == {}  # describe() tore the stage down
    assert profiler.summary() == ""


def test_advanced_profiler_is_picklable():
    profiler = AdvancedProfiler(line_count_restriction=3)
    with profiler.profile("a"):
        _outer_work()
    clone = pickle.loads(pickle.dumps(profiler))
    assert clone.line_count_restriction == 3
    assert clone.profiled_actions == {}


# ----------------------------------------------------------------------------------------------------------------------
# PyTorchProfiler
# ----------------------------------------------------------------------------------------------------------------------


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 4)
        self.act = torch.nn.ReLU()

    def forward(self, x):
        return self.act(self.layer(x))


def _run_steps(profiler, model, n, stage_action="training_step"):
    for _ in range(n):
        with profiler.profile("run_training_batch"):
            with profiler.profile(f"[LightningModule]_Net.{stage_action}"):
                model(torch.randn(2, 4)).sum().backward()


def test_pytorch_profiler_summary_and_trace(tmp_path):
    model = _Net()
    profiler = PyTorchProfiler(filename="pt", row_limit=-1)
    profiler._lightning_module = model
    profiler.setup("fit", log_dir=str(tmp_path))
    with profiler.profile("run_training_epoch"):  # before the first step: not recorded
        _run_steps(profiler, model, 3)
    report = profiler.summary()
    assert report.startswith("FIT Profiler Report")
    assert "[pl][profile][LightningModule]_Net.training_step" in report
    assert "[pl][profile]run_training_batch" in report
    assert "[pl][profile]run_training_epoch" not in report
    assert "[pl][module]torch.nn.modules.linear.Linear: layer" in report
    assert "aten::addmm" in report or "aten::linear" in report

    assert os.listdir(tmp_path) == ["fit-pt.pt.trace.json"]
    with open(tmp_path / "fit-pt.pt.trace.json") as f:
        trace = json.load(f)
    names = {event.get("name") for event in trace["traceEvents"]}
    assert "[pl][profile][LightningModule]_Net.training_step" in names


def test_pytorch_profiler_default_schedule_records_first_steps_only():
    model = _Net()
    profiler = PyTorchProfiler(export_to_chrome=False)
    profiler.setup("fit")
    _run_steps(profiler, model, 9)
    profiler.summary()
    averages = {avg.key: avg.count for avg in profiler.function_events.key_averages()}
    assert averages["[pl][profile][LightningModule]_Net.training_step"] == 5


def test_pytorch_profiler_custom_schedule():
    from torch.profiler import schedule

    model = _Net()
    profiler = PyTorchProfiler(export_to_chrome=False, schedule=schedule(wait=1, warmup=1, active=2, repeat=1))
    profiler.setup("fit")
    _run_steps(profiler, model, 6)
    profiler.summary()
    averages = {avg.key: avg.count for avg in profiler.function_events.key_averages()}
    assert averages["[pl][profile][LightningModule]_Net.training_step"] == 2


def test_pytorch_profiler_profiles_every_stage_step():
    model = _Net()
    profiler = PyTorchProfiler(export_to_chrome=False, record_module_names=False)
    profiler.setup("test")
    with torch.no_grad():
        for _ in range(2):
            with profiler.profile("[LightningModule]_Net.test_step"):
                model(torch.randn(2, 4))
    report = profiler.summary()
    assert report.startswith("TEST Profiler Report")
    assert "[pl][profile][LightningModule]_Net.test_step" in report
    assert "[pl][module]" not in report


def test_pytorch_profiler_teardown_removes_hooks_and_allows_next_stage(tmp_path):
    model = _Net()
    profiler = PyTorchProfiler(dirpath=tmp_path)
    profiler._lightning_module = model
    profiler.setup("fit")
    _run_steps(profiler, model, 2)
    assert model.layer._forward_pre_hooks
    profiler.describe()
    assert not model.layer._forward_pre_hooks and not model.layer._forward_hooks
    assert profiler.profiler is None
    report = profiler.summary()  # still readable after the report was emitted (Lightning's tests read it)
    assert "training_step" in report
    profiler.teardown("fit")
    assert profiler.summary() == report
    assert profiler.function_events is not None

    profiler.setup("validate")
    with torch.no_grad():
        with profiler.profile("[LightningModule]_Net.validation_step"):
            model(torch.randn(2, 4))
    assert "validation_step" in profiler.summary()
    profiler.teardown("validate")
    assert sorted(os.listdir(tmp_path)) == ["fit.pt.trace.json", "validate.pt.trace.json"]


def test_pytorch_profiler_without_steps_reports_nothing():
    profiler = PyTorchProfiler()
    profiler.setup("fit")
    with profiler.profile("run_training_epoch"):
        pass
    assert profiler.summary() == ""  # the default schedule traces nothing before the first step


def test_pytorch_profiler_group_by_input_shapes():
    model = _Net()
    profiler = PyTorchProfiler(group_by_input_shapes=True, export_to_chrome=False, record_module_names=False)
    profiler.setup("fit")
    _run_steps(profiler, model, 1)
    assert "Input Shapes" in profiler.summary()


def test_pytorch_profiler_validation():
    with pytest.raises(ValueError, match="sort_by_key"):
        PyTorchProfiler(sort_by_key="nope")
    with pytest.raises(ValueError, match="schedule"):
        PyTorchProfiler(schedule=3)
    PyTorchProfiler(sort_by_key="self_cpu_memory_usage")


def test_pytorch_profiler_sort_key():
    model = _Net()
    profiler = PyTorchProfiler(sort_by_key="count", export_to_chrome=False, record_module_names=False, row_limit=6)
    profiler.setup("fit")
    _run_steps(profiler, model, 2)
    lines = profiler.summary().splitlines()
    header_index = next(i for i, line in enumerate(lines) if "# of Calls" in line)
    rows = [line for line in lines[header_index + 2 :] if line.strip() and not line.startswith("---")]
    rows = [line for line in rows if not line.startswith("Self CPU time total")]
    counts = [int(line.split()[-1]) for line in rows]
    assert len(counts) == 6
    assert counts == sorted(counts, reverse=True)
    assert counts[0] > counts[-1]


def test_importing_profilers_is_cheap():
    code = (
        "import sys, featherlight.profilers; "
        "print([m for m in ('cProfile', 'pstats', 'rich', 'tensorboard') if m in sys.modules])"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=_REPO_ROOT)
    out = run.stdout
    assert out.strip() == "[]"


def test_pytorch_profiler_standalone_with_schedule_none_traces_every_action():
    profiler = PyTorchProfiler(schedule=None, export_to_chrome=False)
    with profiler.profile("a"):
        a = torch.ones(3)
        with profiler.profile("b"):
            _ = a + 1
    profiler.describe()
    names = {event.name for event in profiler.function_events}
    assert {"[pl][profile]a", "[pl][profile]b", "aten::ones", "aten::add"} <= names


def test_register_record_function_labels_each_submodule():
    from featherlight.profilers.pytorch import RegisterRecordFunction

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    profiler = PyTorchProfiler(schedule=None, export_to_chrome=False)
    with profiler.profile("a"), RegisterRecordFunction(model):
        model(torch.randn(1, 2))
    profiler.describe()
    names = {event.name for event in profiler.function_events}
    assert "[pl][module]torch.nn.modules.linear.Linear: 0" in names
    assert "[pl][module]torch.nn.modules.activation.ReLU: 1" in names
    assert not model[0]._forward_pre_hooks  # the hooks are gone after the block


def test_pytorch_profiler_table_kwargs():
    for key in ("sort_by", "row_limit"):
        with pytest.raises(KeyError, match=f"Found invalid table_kwargs key: {key}. This is already a positional"):
            PyTorchProfiler(table_kwargs={key: None})
    with pytest.raises(KeyError, match="Found invalid table_kwargs key: nope"):
        PyTorchProfiler(table_kwargs={"nope": 1})

    widths = []
    for width in (5, 30):
        profiler = PyTorchProfiler(schedule=None, export_to_chrome=False, table_kwargs={"max_name_column_width": width})
        with profiler.profile("a"):
            torch.ones(1)
        widths.append(profiler.summary().count("-"))
    assert widths[0] < widths[1]


def test_pytorch_profiler_default_schedule_traces_each_kind_of_step():
    model = _Net()
    profiler = PyTorchProfiler(export_to_chrome=False, record_module_names=False)
    profiler.setup("fit")
    _run_steps(profiler, model, 7)  # past the training budget: tracing has stopped
    with torch.no_grad():
        for _ in range(2):
            with profiler.profile("[LightningModule]_Net.validation_step"):
                model(torch.randn(2, 4))
    profiler.summary()
    counts = {avg.key: avg.count for avg in profiler.function_events.key_averages()}
    assert counts["[pl][profile][LightningModule]_Net.validation_step"] == 2  # both, the first one included


def test_trainer_profiler_report_file_and_results_after_fit(tmp_path):
    import featherlight as L
    from featherlight.demos.boring_classes import BoringModel

    simple = SimpleProfiler(filename="perf")
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                        profiler=simple, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(BoringModel())
    assert (tmp_path / "fit-perf.txt").exists()  # no "-0": one process writes one report, as in Lightning
    assert len(simple.recorded_durations["[Strategy]SingleDeviceStrategy.training_step"]) == 2

    pytorch = PyTorchProfiler(filename="ops")
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                        profiler=pytorch, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(BoringModel())
    assert (tmp_path / "fit-ops.txt").read_text()
    assert any(e.name.endswith("SingleDeviceStrategy.validation_step") for e in pytorch.function_events)
    report = pytorch.summary()  # still there after the run
    assert report.startswith("FIT Profiler Report") and "aten::" in report


def test_datamodule_hooks_are_profiled(tmp_path):
    import featherlight as L
    from featherlight.demos.boring_classes import BoringDataModule, BoringModel

    class DataModule(BoringDataModule):
        def prepare_data(self):
            pass

        def state_dict(self):
            return {"seen": 1}

    profiler = SimpleProfiler()
    trainer = L.Trainer(default_root_dir=tmp_path, max_steps=1, limit_val_batches=0, profiler=profiler, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(BoringModel(), datamodule=DataModule())
    for hook in ("prepare_data", "setup", "state_dict", "teardown"):
        assert len(profiler.recorded_durations[f"[LightningDataModule]DataModule.{hook}"]) == 1, hook
