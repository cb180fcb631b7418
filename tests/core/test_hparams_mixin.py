import copy
import pickle
import threading
from argparse import Namespace
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from featherlight.core.mixins import HyperparametersMixin
from featherlight.core.mixins.hparams_mixin import checkpoint_hparams, drop_unpicklable_hparams
from featherlight.utilities.parsing import AttributeDict


class SaveAll(HyperparametersMixin, nn.Module):
    def __init__(self, a, b=2, *args, c=3, **kwargs):
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.save_hyperparameters()


def test_save_all_init_args():
    m = SaveAll(1, 5, "dropped", "varargs", c=4, extra="e")
    assert isinstance(m.hparams, AttributeDict)
    assert m.hparams == {"a": 1, "b": 5, "c": 4, "extra": "e"}
    assert m.hparams.a == 1
    assert m._hparams_name == "kwargs"
    assert m._log_hyperparams is True
    assert set(m.state_dict()) == {"layer.weight", "layer.bias"}


def test_defaults_before_saving():
    class Plain(HyperparametersMixin, nn.Module):
        def __init__(self, a):
            super().__init__()

    m = Plain(1)
    assert m.hparams == {} and isinstance(m.hparams, AttributeDict)
    assert m.hparams_initial == {}
    assert m._log_hyperparams is False
    assert not hasattr(m, "_hparams_name")


def test_logger_flag():
    class NoLog(HyperparametersMixin):
        def __init__(self, a):
            super().__init__()
            self.save_hyperparameters(logger=False)

    assert NoLog(1)._log_hyperparams is False


def test_no_init_args():
    class Empty(HyperparametersMixin):
        def __init__(self):
            super().__init__()
            self.save_hyperparameters()

    m = Empty()
    assert m.hparams == {}
    assert m._hparams_name is None


def test_save_selected_names():
    class Some(HyperparametersMixin):
        def __init__(self, a, b, c):
            super().__init__()
            self.save_hyperparameters("a", "c")

    m = Some(1, 2, 3)
    assert m.hparams == {"a": 1, "c": 3}
    assert m._hparams_name == "kwargs"


def test_unknown_name_is_clear_error():
    class Typo(HyperparametersMixin):
        def __init__(self, lr):
            super().__init__()
            self.save_hyperparameters("learning_rate")

    with pytest.raises(ValueError, match=r"\['learning_rate'\] not among the __init__ arguments \['lr'\]"):
        Typo(0.1)


class FromConfig(HyperparametersMixin):
    def __init__(self, cfg, other=1):
        super().__init__()
        self.save_hyperparameters(cfg)


def test_save_dict_container():
    cfg = {"lr": 0.1, "layers": 2}
    m = FromConfig(cfg)
    assert isinstance(m.hparams, AttributeDict)
    assert m.hparams == cfg
    assert m.hparams is not cfg  # copied into an AttributeDict
    assert m._hparams_name == "cfg"


def test_save_namespace_container():
    m = FromConfig(Namespace(lr=0.1))
    assert isinstance(m.hparams, AttributeDict)
    assert m.hparams == {"lr": 0.1}
    assert m._hparams_name == "cfg"


def test_save_container_not_an_init_arg():
    class Literal(HyperparametersMixin):
        def __init__(self):
            super().__init__()
            self.save_hyperparameters({"x": 1})

    m = Literal()
    assert m.hparams == {"x": 1}
    assert m._hparams_name is None


@pytest.mark.parametrize("arg", [None, {}])
def test_empty_container_is_noop(arg):
    class Noop(HyperparametersMixin):
        def __init__(self, a):
            super().__init__()
            self.save_hyperparameters(arg)

    assert Noop(1).hparams == {}


@pytest.mark.parametrize("args", [(5,), (1.5,), (True,), ("a", {"x": 1}), ({"x": 1}, {"y": 2}), ([1, 2],)])
def test_invalid_positional_args(args):
    class Bad(HyperparametersMixin):
        def __init__(self, a):
            super().__init__()
            self.save_hyperparameters(*args)

    with pytest.raises(ValueError, match="save_hyperparameters"):
        Bad(1)


@pytest.mark.parametrize("ignore", ["b", ["b"], ("b", 3)])
def test_ignore(ignore):
    class Ign(HyperparametersMixin):
        def __init__(self, a, b, c):
            super().__init__()
            self.save_hyperparameters(ignore=ignore)

    assert Ign(1, 2, 3).hparams == {"a": 1, "c": 3}


def test_ignore_name_also_given_explicitly():
    class Both(HyperparametersMixin):
        def __init__(self, a, b):
            super().__init__()
            self.save_hyperparameters("a", "b", ignore="b")

    assert Both(1, 2).hparams == {"a": 1}


class Parent(HyperparametersMixin, nn.Module):
    def __init__(self, shared=0, parent_only="p", **kwargs):
        super().__init__()
        self.save_hyperparameters()


class Child(Parent):
    def __init__(self, child_only, shared=1, **kwargs):
        super().__init__(shared=shared * 100, **kwargs)


class ChildSaves(Parent):
    def __init__(self, child_only, shared=1):
        super().__init__(shared=shared)
        self.save_hyperparameters(ignore="parent_only")


def test_inheritance_merges_child_args():
    m = Child("c", shared=2, extra="x")
    # the most-derived class's value wins for a name both levels have
    assert m.hparams == {"shared": 2, "parent_only": "p", "extra": "x", "child_only": "c"}


def test_child_ignore_removes_parent_saved_key():
    m = ChildSaves("c", shared=5)
    assert m.hparams == {"shared": 5, "child_only": "c"}
    assert m.hparams_initial == {"shared": 5, "child_only": "c"}


def test_repeated_calls_merge():
    class Twice(HyperparametersMixin):
        def __init__(self, a, b):
            super().__init__()
            self.save_hyperparameters("a")
            self.save_hyperparameters("b")

    assert Twice(1, 2).hparams == {"a": 1, "b": 2}


def test_inner_object_does_not_capture_outer_args():
    class Inner(HyperparametersMixin):
        def __init__(self):
            super().__init__()

        def setup(self):
            self.save_hyperparameters()

    class Outer(HyperparametersMixin):
        def __init__(self, outer_arg):
            super().__init__()
            self.inner = Inner()
            self.inner.setup()

    assert Outer(7).inner.hparams == {}


class WithModule(HyperparametersMixin, nn.Module):
    def __init__(self, model, lr=0.1, ignore=None):
        super().__init__()
        self.model = model
        self.save_hyperparameters(ignore=ignore)


def test_module_argument_warns_as_lightning_and_stays_in_hparams():
    # Lightning's warning (text and category), then what featherlight does with the module
    with pytest.warns(UserWarning, match=r"Attribute 'model' is an instance of `nn.Module` and is already saved during "
                                         r"checkpointing. It is recommended to ignore them using "
                                         r"`self.save_hyperparameters\(ignore=\['model'\]\)`") as record:
        m = WithModule(nn.Linear(2, 2))
    assert "keeps it out of the checkpoint" in str(record[0].message)
    assert isinstance(m.hparams.model, nn.Linear)  # in memory, as in Lightning


def test_module_argument_ignored_is_fine():
    m = WithModule(nn.Linear(2, 2), ignore=["model", "ignore"])
    assert m.hparams == {"lr": 0.1}


def test_module_inside_container_warns():
    with pytest.warns(UserWarning, match="Attribute 'model' is an instance of `nn.Module`"):
        WithModule([nn.Linear(2, 2)], ignore="ignore")


def test_module_inside_positional_dict_warns():
    with pytest.warns(UserWarning, match="'net' is an instance of `nn.Module`.*remove it from the object"):
        FromConfig({"net": nn.ReLU()})


def test_checkpoint_hparams_leave_modules_out():
    hparams = {"lr": 0.1, "net": nn.ReLU(), "nets": [nn.ReLU()]}
    kept, left_out = checkpoint_hparams(hparams)
    assert kept == {"lr": 0.1}
    assert left_out == {"net": "torch.nn.modules.activation.ReLU", "nets": "builtins.list"}
    assert checkpoint_hparams({"lr": 0.1}) == ({"lr": 0.1}, {})


@pytest.mark.parametrize("value", [lambda x: x, threading.Lock()])
def test_unpicklable_argument_is_dropped_with_lightnings_warning_when_a_run_starts(value):
    class Unpicklable(HyperparametersMixin):
        def __init__(self, fn, lr=0.1):
            super().__init__()
            self.save_hyperparameters()

    m = Unpicklable(value)  # saving does not probe it (as in Lightning)
    assert m.hparams.fn is value
    with pytest.warns(UserWarning, match=r"Attribute 'fn' removed from hparams because it cannot be pickled. You can "
                                         r"suppress this warning by setting `self.save_hyperparameters\(ignore=\['fn'\]\)`"):
        drop_unpicklable_hparams(m)
    assert m.hparams == {"lr": 0.1}


def test_primitive_config_is_lightnings_error():
    class Primitive(HyperparametersMixin):
        def __init__(self, arg1, arg2):
            super().__init__()
            self.save_hyperparameters(arg1, arg2)

    with pytest.raises(ValueError, match=r"Primitives \(<class 'bool'>"):
        Primitive(3.14, "abc")


def test_hparams_initial_is_frozen_copy():
    class Lists(HyperparametersMixin):
        def __init__(self, layers, lr):
            super().__init__()
            self.save_hyperparameters()

    layers = [1, 2]
    m = Lists(layers, 0.1)
    layers.append(3)  # hparams holds the caller's object, like Lightning
    assert m.hparams.layers == [1, 2, 3]
    assert m.hparams_initial.layers == [1, 2]
    m.hparams.lr = 1.0
    m.hparams.new = "x"
    assert m.hparams_initial == {"layers": [1, 2], "lr": 0.1}
    snapshot = m.hparams_initial
    snapshot.layers.append(99)
    snapshot.lr = -1
    assert m.hparams_initial == {"layers": [1, 2], "lr": 0.1}
    assert isinstance(snapshot, AttributeDict)


class NoDeepcopy:
    """Stands for a large object (a dataset, a tokenizer) that must not be deep-copied."""

    def __deepcopy__(self, memo):
        raise AssertionError("deep-copied")


def test_hparams_initial_does_not_deepcopy_objects():
    class Holder(HyperparametersMixin):
        def __init__(self, data):
            super().__init__()
            self.save_hyperparameters()

    data = NoDeepcopy()
    m = Holder(data)
    assert m.hparams.data is data
    assert m.hparams_initial.data is data


def test_dataclass_fields_are_hparams():
    @dataclass
    class DC(HyperparametersMixin):
        lr: float = 0.1
        width: int = 4

        def __post_init__(self):
            super().__init__()
            self.save_hyperparameters()

    assert DC(width=8).hparams == {"lr": 0.1, "width": 8}


def test_module_with_hparams_pickles_and_deepcopies():
    m = SaveAll(1, c=4)
    for clone in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert clone.hparams == m.hparams
        assert clone.hparams_initial == m.hparams_initial
        assert isinstance(clone.hparams, AttributeDict)
    assert torch.equal(pickle.loads(pickle.dumps(m)).layer.weight, m.layer.weight)


def test_explicit_frame_argument():
    import inspect

    class Explicit(HyperparametersMixin):
        def __init__(self, a, b):
            super().__init__()
            self.init_frame = inspect.currentframe()

    m = Explicit(1, 2)
    m.save_hyperparameters()  # called outside __init__: nothing to collect
    assert m.hparams == {}
    m.save_hyperparameters(frame=m.init_frame)
    assert m.hparams == {"a": 1, "b": 2}
