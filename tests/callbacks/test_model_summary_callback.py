import logging
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import featherlight as L
from featherlight.callbacks import ModelSummary, RichModelSummary
from featherlight.utilities.model_summary import summarize


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
        self.head = torch.nn.Linear(8, 1)
        self.example_input_array = torch.zeros(2, 4)

    def forward(self, x):
        return self.head(self.encoder(x))

    def training_step(self, batch, batch_idx):
        return self(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader():
    return DataLoader(TensorDataset(torch.randn(4, 4)), batch_size=2)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def summary_log():
    logger = logging.getLogger("featherlight.callbacks.model_summary")
    handler = _Records()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def fit(callbacks, **kwargs):
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        callbacks=callbacks, **kwargs)
    model = Net()
    trainer.fit(model, loader())
    return model


@pytest.mark.parametrize("max_depth", [1, 2, -1])
def test_logs_the_summary_table_on_fit_start(summary_log, max_depth):
    model = fit([ModelSummary(max_depth=max_depth)])
    assert len(summary_log) == 1
    message = summary_log[0]
    assert message == "\n" + str(summarize(model, max_depth=max_depth))
    assert "encoder" in message and "Trainable params" in message and "Total Flops" in message
    assert ("encoder.0" in message) == (max_depth != 1)


def test_default_summary_and_switching_it_off(summary_log):
    fit(None)
    assert len(summary_log) == 1 and "head" in summary_log[0]
    summary_log.clear()
    fit(None, enable_model_summary=False)
    assert summary_log == []
    fit([ModelSummary(max_depth=0)])
    assert summary_log == []


def test_only_global_zero_logs(summary_log):
    trainer = SimpleNamespace(is_global_zero=False, strategy=None)
    ModelSummary().on_fit_start(trainer, Net())
    assert summary_log == []
    trainer.is_global_zero = True
    ModelSummary().on_fit_start(trainer, Net())
    assert len(summary_log) == 1


def test_summarize_kwargs_reach_summarize(summary_log):
    received = {}

    class Custom(ModelSummary):
        @staticmethod
        def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                      total_flops=None, **kwargs):
            received.update(kwargs, total=total_parameters, trainable=trainable_parameters,
                            columns=[h for h, _ in summary_data])

    fit([Custom(max_depth=1, flavour="x")])
    assert received["flavour"] == "x"
    assert received["total"] == received["trainable"] == sum(p.numel() for p in Net().parameters())
    assert received["columns"][:5] == [" ", "Name", "Type", "Params", "Mode"]


@pytest.mark.parametrize("example", [True, False])
def test_summarize_gets_lightnings_columns_and_the_log_shows_what_was_measured(summary_log, example):
    """An overriding ``summarize`` indexes Lightning's columns (``summary_data[5]`` is FLOPs, with or without an
    example input); the default table still shows a FLOPs column only when FLOPs were measured."""
    received = {}

    class Custom(ModelSummary):
        @staticmethod
        def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                      **kwargs):
            received.update(columns=[h for h, _ in summary_data], flops=summary_data[5][1],
                            total_flops=kwargs.get("total_flops"))
            ModelSummary.summarize(summary_data, total_parameters, trainable_parameters, model_size,
                                   total_training_modes, **kwargs)

    class Model(Net):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Parameter(torch.zeros(3))  # a row of parameters outside the listed layers
            if not example:
                self.example_input_array = None

    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        callbacks=[Custom()])
    model = Model()
    trainer.fit(model, loader())
    assert received["columns"][:6] == [" ", "Name", "Type", "Params", "Mode", "FLOPs"]
    assert len(received["flops"]) == 3 and received["flops"][-1] == "n/a"
    if example:
        assert received["total_flops"] > 0 and received["flops"][0] != "0"
        assert received["columns"][6:] == ["In sizes", "Out sizes"]
    else:
        assert received["total_flops"] is None and received["flops"][:2] == ["0", "0"]
        assert received["columns"][6:] == []
    assert summary_log == ["\n" + str(summarize(model, max_depth=1))]
    assert ("FLOPs" in summary_log[0]) == example


def test_rich_model_summary():
    pytest.importorskip("rich")
    from rich import get_console

    console = get_console()
    with console.capture() as capture:
        fit([RichModelSummary(max_depth=2, header_style="bold")])
    out = capture.get()
    assert "encoder.0" in out and "Linear" in out and "Trainable params" in out and "Total FLOPs" in out


def test_rich_model_summary_requires_rich(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rich" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="requires `rich`"):
        RichModelSummary()
