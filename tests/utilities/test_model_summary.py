import pytest
import torch
from torch import nn

from featherlight.utilities.model_summary import (
    LayerSummary,
    ModelSummary,
    get_human_readable_count,
    summarize,
)


class Net(nn.Module):
    def __init__(self, example=None):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(10))  # owned by the root: "other params"
        self.l1 = nn.Linear(32, 64)
        self.seq = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
        self.bn = nn.BatchNorm1d(2)
        self.bn.requires_grad_(False)
        self.example_input_array = example
        self.training_during_forward = []

    def forward(self, x):
        self.training_during_forward.append([m.training for m in self.modules()])
        return self.bn(self.seq(self.l1(x)))


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (0, "0"),
        (5, "5"),
        (999, "999"),
        (1000, "1.0 K"),
        (1049, "1.0 K"),
        (1234, "1.2 K"),
        (99_999, "100 K"),
        (123_456, "123 K"),
        (999_999, "1.0 M"),
        (1_234_567, "1.2 M"),
        (12_345_678_901, "12.3 B"),
        (10**12, "1.0 T"),
        (4_500 * 10**12, "4,500 T"),
    ],
)
def test_get_human_readable_count(number, expected):
    assert get_human_readable_count(number) == expected


def test_get_human_readable_count_negative():
    with pytest.raises(ValueError):
        get_human_readable_count(-1)


def test_layers_by_depth():
    model = Net()
    assert ModelSummary(model, max_depth=0).layer_names == []
    assert ModelSummary(model).layer_names == ["l1", "seq", "bn"]
    assert ModelSummary(model, max_depth=2).layer_names == ["l1", "seq", "seq.0", "seq.1", "seq.2", "bn"]
    assert ModelSummary(model, max_depth=-1).layer_names == ModelSummary(model, max_depth=5).layer_names
    summary = ModelSummary(model, max_depth=2)
    assert summary.layer_types == ["Linear", "Sequential", "Linear", "ReLU", "Linear", "BatchNorm1d"]
    assert summary.param_nums == [2112, 4290, 4160, 0, 130, 4]
    assert summary.total_layer_params == sum(summary.param_nums)
    assert summary.max_depth == 2
    assert [name for name, _ in summary.named_modules] == summary.layer_names


@pytest.mark.parametrize("depth", [-2, 1.5, True, "1"])
def test_invalid_max_depth(depth):
    with pytest.raises(ValueError, match="max_depth"):
        ModelSummary(Net(), max_depth=depth)


def test_totals():
    model = Net()
    summary = ModelSummary(model)
    total = sum(p.numel() for p in model.parameters())
    assert summary.total_parameters == total == 6416
    assert summary.trainable_parameters == total - 4
    assert summary.other_parameters == 10
    assert summary.model_size == pytest.approx(total * 4 / 1e6)
    model.half()
    assert ModelSummary(model).model_size == pytest.approx(total * 2 / 1e6)


def test_str_without_example_input():
    model = Net()
    model.seq[1].eval()
    text = str(ModelSummary(model))
    lines = text.splitlines()
    assert lines[0].split("|")[1:] == [" Name         ", " Type        ", " Params ", " Mode "]
    assert set(lines[1]) == {"-"} and len(lines[1]) == len(lines[0])
    assert lines[2].split(" | ") == ["0", "l1          ", "Linear     ", "2.1 K ", "train"]
    assert lines[5].split(" | ") == [" ", "other params", "n/a        ", "10    ", "n/a  "]
    assert "In sizes" not in text and "FLOPs" not in text
    assert lines[7:] == [
        "6.4 K     Trainable params",
        "4         Non-trainable params",
        "6.4 K     Total params",
        "0.026     Total estimated model params size (MB)",
        "5         Modules in train mode",
        "1         Modules in eval mode",
    ]
    assert model.training_during_forward == []  # no example input: the model is not run


def test_max_depth_zero_shows_only_other_params():
    lines = str(ModelSummary(Net(), max_depth=0)).splitlines()
    assert lines[2].split(" | ")[1].strip() == "other params"
    assert lines[2].split(" | ")[3].strip() == "6.4 K"
    assert lines[3] == lines[1]


def test_other_params_row_absent_when_all_covered():
    text = str(ModelSummary(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))))
    assert "other params" not in text


def test_example_input_sizes_flops_and_modes():
    model = Net(example=torch.randn(3, 32))
    model.seq[1].eval()
    modes_before = [m.training for m in model.modules()]
    summary = ModelSummary(model, max_depth=2)
    assert summary.in_sizes == [[3, 32], [3, 64], [3, 64], [3, 64], [3, 64], [3, 2]]
    assert summary.out_sizes == [[3, 64], [3, 2], [3, 64], [3, 64], [3, 2], [3, 2]]
    assert summary.flop_counts == [2 * 3 * 32 * 64, 2 * 3 * 64 * 66, 2 * 3 * 64 * 64, 0, 2 * 3 * 64 * 2, 0]
    assert summary.total_flops == 2 * 3 * 32 * 64 + 2 * 3 * 64 * 66
    # the forward ran once, in eval mode, and every module's own mode was restored afterwards
    assert model.training_during_forward == [[False] * len(modes_before)]
    assert [m.training for m in model.modules()] == modes_before
    assert summary.training_modes == [True, True, True, False, True, True]
    assert all(not m._forward_hooks for m in model.modules())

    lines = str(summary).splitlines()
    assert [h.strip() for h in lines[0].split("|")] == [
        "", "Name", "Type", "Params", "Mode", "FLOPs", "In sizes", "Out sizes"
    ]
    assert [c.strip() for c in lines[2].split("|")] == [
        "0", "l1", "Linear", "2.1 K", "train", "12.3 K", "[3, 32]", "[3, 64]"
    ]
    assert lines[-1] == "37.6 K    Total Flops"


def test_example_runs_without_grad():
    grads = []

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(2, 2)
            self.example_input_array = torch.randn(1, 2)

        def forward(self, x):
            grads.append(torch.is_grad_enabled())
            return self.l(x)

    ModelSummary(M())
    assert grads == [False]


class MultiInput(nn.Module):
    def forward(self, a, b, scale=None):
        return a * scale, [b, "text"]


class Wrapper(nn.Module):
    def __init__(self, example):
        super().__init__()
        self.multi = MultiInput()
        self.lin = nn.Linear(2, 2)
        self.unused = nn.Linear(2, 2)
        self.example_input_array = example

    def forward(self, x, y=None):
        self.lin(x)
        self.lin(torch.zeros(7, 2))  # second call: sizes of the first call are kept
        return self.multi(x, x[0], scale=2.0)


@pytest.mark.parametrize("kind", ["tuple", "dict", "tensor"])
def test_example_input_forms(kind):
    x = torch.randn(4, 2)
    example = {"tuple": (x, None), "dict": {"x": x}, "tensor": x}[kind]
    summary = ModelSummary(Wrapper(example))
    assert summary.layer_names == ["multi", "lin", "unused"]
    assert summary.in_sizes == [[[4, 2], [2], "?"], [4, 2], "?"]
    assert summary.out_sizes == [[[4, 2], [[2], "?"]], [4, 2], "?"]
    assert summary.flop_counts[1] == 2 * (4 + 7) * 2 * 2


def test_lazy_module_materialized_by_example():
    model = nn.Sequential(nn.LazyLinear(3))
    with pytest.warns(UserWarning, match="uninitialized"):
        assert ModelSummary(model).total_parameters == 0
    model.example_input_array = torch.randn(2, 5)
    summary = ModelSummary(model)
    assert summary.param_nums == [18]
    assert summary.total_parameters == 18


def test_shared_parameters_counted_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, shared)
    assert ModelSummary(model).total_parameters == 20


def test_layer_summary_detach():
    layer = nn.Linear(2, 3)
    summary = LayerSummary(layer)
    layer(torch.randn(5, 2))
    assert summary.in_size == [5, 2] and summary.out_size == [5, 3]
    assert summary.layer_type == "Linear" and summary.num_parameters == 9 and summary.training
    summary.detach_hook()
    summary.detach_hook()
    assert not layer._forward_hooks


def test_summarize():
    summary = summarize(Net(), max_depth=2)
    assert isinstance(summary, ModelSummary)
    assert summary.max_depth == 2


def test_lightning_module_paths():
    import importlib

    package = importlib.import_module("featherlight.utilities.model_summary")
    module = importlib.import_module("featherlight.utilities.model_summary.model_summary")
    assert module.UNKNOWN_SIZE == "?"
    for name in ("ModelSummary", "LayerSummary", "summarize", "get_human_readable_count", "parse_batch_shape",
                 "get_formatted_model_size"):
        assert getattr(package, name) is getattr(module, name)
    from featherlight.pytorch.utilities.model_summary.model_summary import ModelSummary as Aliased

    assert Aliased is module.ModelSummary


def test_parse_batch_shape_and_formatted_size():
    from featherlight.utilities.model_summary import get_formatted_model_size, parse_batch_shape

    assert parse_batch_shape(torch.zeros(2, 3)) == [2, 3]
    assert parse_batch_shape((torch.zeros(1), [torch.zeros(4, 5)])) == [[1], [[4, 5]]]
    assert parse_batch_shape("text") == "?" and parse_batch_shape(None) == "?"
    assert get_formatted_model_size(1234.56789) == "1,234.568"


def test_unknown_input_sizes_are_question_marks():
    class Anything(nn.Module):
        def forward(self, *args):
            return args

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = Anything()
            self.unused = nn.Linear(1, 1)

        def forward(self, *args):
            return self.layer(*args)

    model = Model()
    model.example_input_array = (1, 2)  # no shapes: one "?" per argument
    summary = ModelSummary(model)
    assert summary.in_sizes == [["?", "?"], "?"]  # the unused layer never ran
    assert summary.out_sizes == [["?", "?"], "?"]


def test_max_depth_error_shows_the_value():
    with pytest.raises(ValueError, match="`max_depth` can be -1, 0 or > 0, got temp"):
        ModelSummary(nn.Linear(1, 1), max_depth="temp")


def test_lazy_warning_when_total_is_read_once_per_summary():
    import warnings

    summary = ModelSummary(nn.Sequential(nn.LazyLinear(3)))
    with pytest.warns(UserWarning, match="The total number of parameters detected may be inaccurate"):
        assert summary.total_parameters == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert summary.trainable_parameters == 0
        assert summary.total_parameters == 0  # warned once for this summary
    with pytest.warns(UserWarning, match="inaccurate"):
        ModelSummary(nn.Sequential(nn.LazyLinear(3))).total_parameters  # noqa: B018 - a new summary warns again
