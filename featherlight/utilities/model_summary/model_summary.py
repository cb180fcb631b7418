"""A per-layer table of a model: parameter counts, train/eval mode and, given an example input, sizes and FLOPs.

Any ``nn.Module`` works. If it has a non-``None`` ``example_input_array`` (a tensor, a tuple/list of positional
arguments or a dict of keyword arguments), one forward pass runs under ``torch.no_grad()`` with every module in
eval mode (each module's own train/eval flag is restored afterwards) to record the input/output sizes of each
listed layer (first call only) and the FLOPs per layer (all calls, via ``torch.utils.flop_counter``).
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from featherlight.utilities.rank_zero import rank_zero_warn

UNKNOWN_SIZE = "?"
NOT_APPLICABLE = "n/a"

_UNITS = ("", "K", "M", "B", "T")


def get_human_readable_count(number: int) -> str:
    """Abbreviate a non-negative count with K (thousand), M (million), B (billion) or T (trillion).

    Values below 100 of their unit keep one decimal, larger ones are whole; below 1000 the number is unchanged.

    >>> get_human_readable_count(123)
    '123'
    >>> get_human_readable_count(1234)
    '1.2 K'
    >>> get_human_readable_count(123_456)
    '123 K'
    >>> get_human_readable_count(2e6)
    '2.0 M'
    >>> get_human_readable_count(3_000_000_000)
    '3.0 B'
    >>> get_human_readable_count(5e15)
    '5,000 T'
    """
    if number < 0:
        raise ValueError(f"get_human_readable_count() expects a non-negative number, got {number}")
    if number < 1000:
        return f"{int(number):,d}"

    def fmt(value: float) -> str:
        return f"{value:,.1f}" if value < 99.95 else f"{value:,.0f}"

    value = float(number)
    unit = 0
    # Step up while the *displayed* value would reach 1000 (999_999 shows as "1.0 M", not "1,000 K").
    while unit < len(_UNITS) - 1 and float(fmt(value).replace(",", "")) >= 1000:
        value /= 1000
        unit += 1
    return f"{fmt(value)} {_UNITS[unit]}"


def _is_lazy(param: torch.Tensor) -> bool:
    return isinstance(param, nn.parameter.UninitializedParameter)


def parse_batch_shape(batch: Any) -> Any:
    """The size shown for ``batch``: ``list(shape)`` for tensors (and anything with ``.shape``), nested lists for
    lists/tuples, else :data:`UNKNOWN_SIZE` (``"?"``)."""
    return _shape_of(batch)


def get_formatted_model_size(total_model_size: float) -> str:
    """A size in MB as the summary prints it (three decimals)."""
    return f"{total_model_size:,.3f}"


def _shape_of(obj: Any) -> Any:
    """``list(shape)`` for tensors (and anything with ``.shape``), nested lists for lists/tuples, else ``"?"``."""
    if isinstance(obj, nn.parameter.UninitializedParameter):
        return UNKNOWN_SIZE
    shape = getattr(obj, "shape", None)
    if shape is not None and not isinstance(obj, type):
        try:
            return list(shape)
        except TypeError:
            return UNKNOWN_SIZE
    if isinstance(obj, (list, tuple)):
        return [_shape_of(item) for item in obj]
    return UNKNOWN_SIZE


class LayerSummary:
    """Summary of one submodule. Until :meth:`detach_hook` a forward hook records the input/output sizes of its
    first call (positional arguments followed by keyword-argument values; a single input is unwrapped)."""

    def __init__(self, module: nn.Module) -> None:
        self._module = module
        self._in_size: Any = None
        self._out_size: Any = None
        self._hook_handle: RemovableHandle | None = self._register_hook()

    def __del__(self) -> None:
        self.detach_hook()

    def _register_hook(self) -> RemovableHandle | None:
        if isinstance(self._module, torch.jit.ScriptModule):
            return None  # scripted modules do not run Python hooks

        def hook(_module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if self._in_size is not None:
                return
            inputs = [*args, *kwargs.values()]
            self._in_size = _shape_of(inputs[0] if len(inputs) == 1 else inputs)
            self._out_size = _shape_of(output)

        return self._module.register_forward_hook(hook, with_kwargs=True)

    def detach_hook(self) -> None:
        """Remove the forward hook (idempotent)."""
        handle = getattr(self, "_hook_handle", None)
        if handle is not None:
            handle.remove()
            self._hook_handle = None

    @property
    def in_size(self) -> Any:
        """Input size(s) of the first recorded call, or ``"?"`` when none was recorded or it is empty (no arguments,
        a 0-dim tensor), as in Lightning."""
        return self._in_size if self._in_size not in (None, []) else UNKNOWN_SIZE

    @property
    def out_size(self) -> Any:
        """Output size(s) of the first recorded call, or ``"?"`` (as for :attr:`in_size`)."""
        return self._out_size if self._out_size not in (None, []) else UNKNOWN_SIZE

    @property
    def layer_type(self) -> str:
        """The module's class name."""
        return type(self._module).__name__

    @property
    def num_parameters(self) -> int:
        """Number of (initialised) parameter elements of the module, including its submodules."""
        return sum(p.numel() for p in self._module.parameters() if not _is_lazy(p))

    @property
    def training(self) -> bool:
        """Whether the module is in train mode."""
        return self._module.training


class ModelSummary:
    """Summarise ``model`` down to ``max_depth`` levels of submodules.

    Args:
        model: any ``nn.Module``; a non-``None`` ``example_input_array`` attribute enables the size/FLOPs columns.
        max_depth: ``1`` lists the direct children, ``n`` lists submodules nested up to ``n`` levels, ``-1``
            lists every submodule, ``0`` lists none (only the totals, plus an "other params" row).

    ``str(summary)`` renders the table followed by the totals block. Parameters that belong to none of the
    listed layers (e.g. an ``nn.Parameter`` set directly on the model) appear in an ``other params`` row.
    ``model_size`` is the parameters' actual storage (``numel * element_size``) in MB (10**6 bytes).
    """

    def __init__(self, model: nn.Module, max_depth: int = 1) -> None:
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < -1:
            raise ValueError(f"`max_depth` can be -1, 0 or > 0, got {max_depth}.")
        self._model = model
        self._max_depth = max_depth
        self._flop_counts: dict[str, int] | None = None
        self._total_flops: int | None = None
        self._example_run = False
        self._warned_lazy = False
        self._layer_summary = self.summarize()

    @property
    def max_depth(self) -> int:
        return self._max_depth

    @property
    def named_modules(self) -> list[tuple[str, nn.Module]]:
        """``(qualified name, module)`` of every listed layer, in registration order."""
        if self._max_depth == 0:
            return []
        if self._max_depth == 1:
            return list(self._model.named_children())
        return [
            (name, module)
            for name, module in self._model.named_modules()
            if name and (self._max_depth == -1 or name.count(".") < self._max_depth)
        ]

    @property
    def layer_names(self) -> list[str]:
        return list(self._layer_summary)

    @property
    def layer_types(self) -> list[str]:
        return [layer.layer_type for layer in self._layer_summary.values()]

    @property
    def in_sizes(self) -> list[Any]:
        return [layer.in_size for layer in self._layer_summary.values()]

    @property
    def out_sizes(self) -> list[Any]:
        return [layer.out_size for layer in self._layer_summary.values()]

    @property
    def param_nums(self) -> list[int]:
        return [layer.num_parameters for layer in self._layer_summary.values()]

    @property
    def training_modes(self) -> list[bool]:
        return [layer.training for layer in self._layer_summary.values()]

    @property
    def total_training_modes(self) -> dict[str, int]:
        """How many submodules (the model itself excluded) are in train and in eval mode."""
        modes = [module.training for module in self._model.modules() if module is not self._model]
        return {"train": sum(modes), "eval": len(modes) - sum(modes)}

    @property
    def total_parameters(self) -> int:
        """Parameter elements of the model; uninitialised (lazy) parameters count as 0, with a warning (once per
        summary)."""
        total = 0
        for p in self._model.parameters():
            if _is_lazy(p):
                if self._warned_lazy:
                    continue
                self._warned_lazy = True
                rank_zero_warn(
                    "The total number of parameters detected may be inaccurate because the model contains"
                    " uninitialized (lazy) parameters, counted as 0. Set `example_input_array` on the model so the"
                    " summary's forward pass materializes them."
                )
            else:
                total += p.numel()
        return total

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self._model.parameters() if p.requires_grad and not _is_lazy(p))

    @property
    def total_layer_params(self) -> int:
        """Sum of :attr:`param_nums` (nested layers count again inside their parents when ``max_depth > 1``)."""
        return sum(self.param_nums)

    @property
    def model_size(self) -> float:
        """Storage of the parameters in MB (10**6 bytes)."""
        return sum(p.numel() * p.element_size() for p in self._model.parameters() if not _is_lazy(p)) / 1e6

    @property
    def flop_counts(self) -> list[int] | None:
        """FLOPs of each listed layer during the example forward (all calls), or ``None`` without one."""
        if self._flop_counts is None:
            return None
        return [self._flop_counts.get(name, 0) for name in self._layer_summary]

    @property
    def total_flops(self) -> int | None:
        """FLOPs of the whole example forward, or ``None`` without an example input."""
        return self._total_flops

    @property
    def other_parameters(self) -> int:
        """Parameter elements of the model owned by none of the listed layers."""
        covered = {id(p) for _, module in self.named_modules for p in module.parameters()}
        return sum(p.numel() for p in self._model.parameters() if id(p) not in covered and not _is_lazy(p))

    def summarize(self) -> dict[str, LayerSummary]:
        """Build the per-layer summaries, running the example input (if any) to record sizes and FLOPs."""
        summary = {name: LayerSummary(module) for name, module in self.named_modules}
        try:
            example = getattr(self._model, "example_input_array", None)
            if example is not None:
                self._forward_example_input(example)
        finally:
            for layer in summary.values():
                layer.detach_hook()
        return summary

    def _forward_example_input(self, example: Any) -> None:
        model = self._model
        device = next(
            (t.device for t in itertools.chain(model.parameters(), model.buffers()) if not _is_lazy(t)), None
        )
        if device is not None:
            from featherlight.utilities.apply_func import move_data_to_device

            example = move_data_to_device(example, device)

        counter: Any
        try:
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
        except Exception:  # FLOPs are a nicety; an older or stripped torch must not break the summary
            counter = None

        modes = {module: module.training for module in model.modules()}
        model.eval()
        try:
            with torch.no_grad(), (counter if counter is not None else contextlib.nullcontext()):
                if isinstance(example, (list, tuple)):
                    model(*example)
                elif isinstance(example, dict):
                    model(**example)
                else:
                    model(example)
        finally:
            # Assign the flags directly: model.train(mode) would flatten deliberate per-module eval modes.
            for module, training in modes.items():
                module.training = training
        self._example_run = True

        if counter is not None:
            counts = counter.get_flop_counts()
            # torch names the root by its class and each submodule by "<root class>.<qualified name>".
            prefix = type(model).__name__ + "."
            self._flop_counts = {
                key[len(prefix) :]: sum(ops.values()) for key, ops in counts.items() if key.startswith(prefix)
            }
            self._total_flops = sum(counts.get("Global", {}).values())

    def get_summary_data(self) -> list[tuple[str, list[str]]]:
        """The table as ``(header, cells)`` columns, including the "other params" row if any."""
        n = len(self._layer_summary)
        columns: list[tuple[str, list[str]]] = [
            (" ", [str(i) for i in range(n)]),
            ("Name", self.layer_names),
            ("Type", self.layer_types),
            ("Params", [get_human_readable_count(x) for x in self.param_nums]),
            ("Mode", ["train" if mode else "eval" for mode in self.training_modes]),
        ]
        flops = self.flop_counts
        if flops is not None:
            columns.append(("FLOPs", [get_human_readable_count(x) for x in flops]))
        if self._example_run:
            columns.append(("In sizes", [str(x) for x in self.in_sizes]))
            columns.append(("Out sizes", [str(x) for x in self.out_sizes]))

        other = self.other_parameters
        if other > 0:
            extra = {" ": "", "Name": "other params", "Params": get_human_readable_count(other)}
            for header, cells in columns:
                cells.append(extra.get(header, NOT_APPLICABLE))
        return columns


    _get_summary_data = get_summary_data  # Lightning's name, which libraries call
    def __str__(self) -> str:
        columns = self.get_summary_data()
        widths = [max([len(header), *(len(c) for c in cells)]) for header, cells in columns]
        n_rows = len(columns[0][1])

        def line(cells: list[str]) -> str:
            return " | ".join(cell.ljust(width) for cell, width in zip(cells, widths))

        header = line([h for h, _ in columns])
        rule = "-" * len(header)
        rows = [line([cells[i] for _, cells in columns]) for i in range(n_rows)]

        modes = self.total_training_modes
        totals = [
            f"{get_human_readable_count(self.trainable_parameters):<9} Trainable params",
            f"{get_human_readable_count(self.total_parameters - self.trainable_parameters):<9} Non-trainable params",
            f"{get_human_readable_count(self.total_parameters):<9} Total params",
            f"{self.model_size:<9.3f} Total estimated model params size (MB)",
            f"{modes['train']:<9} Modules in train mode",
            f"{modes['eval']:<9} Modules in eval mode",
        ]
        if self._total_flops is not None:
            totals.append(f"{get_human_readable_count(self._total_flops):<9} Total Flops")
        return "\n".join([header, rule, *rows, rule, *totals])

    def __repr__(self) -> str:
        return str(self)


def summarize(lightning_module: nn.Module, max_depth: int = 1) -> ModelSummary:
    """Return the :class:`ModelSummary` of ``lightning_module`` (any ``nn.Module``) down to ``max_depth``."""
    return ModelSummary(lightning_module, max_depth=max_depth)
