import copy
import functools
import inspect
import pickle
import threading

import pytest
import torch

from featherlight.utilities.parsing import AttributeDict, collect_init_args, get_init_args, init_args_of, is_picklable


def test_attribute_dict_access():
    ad = AttributeDict(a=1)
    ad.b = 2
    assert ad == {"a": 1, "b": 2}
    assert ad.a == 1 and ad["b"] == 2
    del ad.a
    assert "a" not in ad
    ad.update(c=3)
    assert ad.c == 3
    assert "c" in dir(ad)


def test_attribute_dict_missing_key_is_attribute_error():
    ad = AttributeDict(lr=0.1)
    with pytest.raises(AttributeError, match="no attribute or key 'lrr'.*Available keys: \\['lr'\\]"):
        ad.lrr
    assert not hasattr(ad, "missing")
    assert getattr(ad, "missing", "default") == "default"
    with pytest.raises(AttributeError, match="missing"):
        del ad.missing
    with pytest.raises(KeyError):
        ad["missing"]


def test_attribute_dict_repr():
    ad = AttributeDict({"ccc": "x", "a": 1, "bb": [1, 2]})
    assert repr(ad) == '"a":   1\n"bb":  [1, 2]\n"ccc": x'
    assert repr(AttributeDict()) == ""


def test_attribute_dict_copy_and_pickle():
    ad = AttributeDict(a=[1, 2], b="x")
    for clone in (copy.copy(ad), copy.deepcopy(ad), pickle.loads(pickle.dumps(ad))):
        assert type(clone) is AttributeDict
        assert clone == ad
        assert clone.a == [1, 2]
    assert copy.deepcopy(ad).a is not ad.a


def test_is_picklable():
    assert is_picklable({"a": [1, 2.0, "x"], "t": torch.ones(2)})
    assert is_picklable(torch.nn.ReLU)
    assert not is_picklable(lambda x: x)
    assert not is_picklable(threading.Lock())
    assert not is_picklable((i for i in range(3)))

    class Local:
        pass

    assert not is_picklable(Local())


class _Recorder:
    def __init__(self, a, b=2, *args, c=3, **kwargs):
        self.result = init_args_of(inspect.currentframe())
        self.lightning_form = get_init_args(inspect.currentframe())


def test_get_init_args_collects_named_and_kwargs():
    rec = _Recorder(1, 5, 6, 7, c=8, extra="e")
    obj, args = rec.result
    assert obj is rec
    assert args == {"a": 1, "b": 5, "c": 8, "extra": "e"}  # *args dropped, **kwargs expanded, no self
    assert rec.lightning_form == args  # Lightning's get_init_args returns the dict alone


def test_get_init_args_reports_current_values():
    class Rebinds:
        def __init__(self, a):
            a = a * 10
            self.result = get_init_args(inspect.currentframe())

    assert Rebinds(2).result == {"a": 20}


def test_get_init_args_outside_init():
    def not_init(self, a):
        return init_args_of(inspect.currentframe()), get_init_args(inspect.currentframe())

    assert not_init(object(), 1) == ((None, {}), {})


def test_get_init_args_without_super_or_class_cell():
    # No super() call means no __class__ cell in the frame; the owner is found through the MRO.
    class NoCell:
        def __init__(self, a, b):
            self.result = init_args_of(inspect.currentframe())

    obj = NoCell(1, 2)
    assert obj.result == (obj, {"a": 1, "b": 2})


def test_get_init_args_decorated_init():
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return fn(*args, **kwargs)

        return wrapper

    class Decorated:
        @deco
        def __init__(self, a):
            self.result = init_args_of(inspect.currentframe())

    obj = Decorated(4)
    assert obj.result == (obj, {"a": 4})


class _Base:
    def __init__(self, shared=0, base_only="b", **kwargs):
        self.chain = collect_init_args(inspect.currentframe(), [])


class _Child(_Base):
    def __init__(self, child_only, shared=1, **kwargs):
        super().__init__(shared=shared * 100, **kwargs)


def test_collect_init_args_walks_super_chain():
    obj = _Child("c", shared=2, extra="x")
    # innermost (the class that called collect) first, most-derived last
    assert obj.chain == [
        {"shared": 200, "base_only": "b", "extra": "x"},
        {"child_only": "c", "shared": 2, "extra": "x"},
    ]
    merged = {}
    for args in obj.chain:
        merged.update(args)
    assert merged == {"shared": 2, "base_only": "b", "extra": "x", "child_only": "c"}


def test_collect_init_args_skips_leading_non_init_frames():
    class Helper:
        def __init__(self, a):
            self.chain = self._collect()

        def _collect(self):
            return collect_init_args(inspect.currentframe(), [])

    assert Helper(1).chain == [{"a": 1}]


def test_collect_init_args_stops_at_other_object():
    class Inner:
        def __init__(self, x):
            self.chain = collect_init_args(inspect.currentframe(), [], obj=self)

    class Outer:
        def __init__(self, y):
            self.inner = Inner(x=y + 1)

    assert Outer(1).inner.chain == [{"x": 2}]

    class InnerLater:
        def collect(self):
            return collect_init_args(inspect.currentframe(), [], obj=self)

    class OuterCollects:
        def __init__(self, y):
            self.inner = InnerLater()
            self.chain = self.inner.collect()

    # Called outside the inner object's __init__: the outer object's arguments must not be picked up.
    assert OuterCollects(1).chain == []


def test_collect_init_args_class_filter():
    class Marker:
        pass

    class NotMarked:
        def __init__(self, a):
            self.chain = collect_init_args(inspect.currentframe(), [], classes=(Marker,))

    class Marked(Marker):
        def __init__(self, a):
            self.chain = collect_init_args(inspect.currentframe(), [], classes=(Marker,))

    assert NotMarked(1).chain == []
    assert Marked(1).chain == [{"a": 1}]
