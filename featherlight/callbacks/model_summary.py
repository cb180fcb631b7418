"""Print a table of the model's layers and parameter counts when ``fit`` starts."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

from featherlight.callbacks.callback import Callback
from featherlight.utilities.model_summary import NOT_APPLICABLE, get_human_readable_count

if TYPE_CHECKING:
    from featherlight.core.module import LightningModule

log = logging.getLogger(__name__)


class ModelSummary(Callback):
    """Log a summary of the LightningModule's layers when ``fit`` starts (on global rank 0).

    The summary is built by :func:`featherlight.utilities.model_summary.summarize`; with an
    ``example_input_array`` on the module it includes input/output sizes and FLOPs.

    Args:
        max_depth: how many levels of nested submodules to list; ``0`` turns the summary off, ``-1`` lists all.
        **summarize_kwargs: passed on to :meth:`summarize` (used by subclasses such as ``RichModelSummary``).

    Example::

        trainer = Trainer(callbacks=[ModelSummary(max_depth=2)])
    """

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        self._max_depth: int = max_depth
        self._summarize_kwargs: dict[str, Any] = summarize_kwargs

    def on_fit_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if not self._max_depth:
            return
        summary = self._summary(trainer, pl_module)
        data = _lightning_columns(summary.get_summary_data())
        if trainer.is_global_zero:
            self.summarize(
                data,
                summary.total_parameters,
                summary.trainable_parameters,
                summary.model_size,
                summary.total_training_modes,
                total_flops=summary.total_flops,
                **self._summarize_kwargs,
            )

    def _summary(self, trainer: "Trainer", pl_module: "LightningModule") -> Any:
        from featherlight.utilities.model_summary import summarize

        return summarize(pl_module, max_depth=self._max_depth)

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: Optional[int] = None,
        **summarize_kwargs: Any,
    ) -> None:
        """Log the table built from the summary's columns and totals (override to render it differently).

        ``summary_data`` has Lightning's columns: ``" "``, ``Name``, ``Type``, ``Params``, ``Mode``, ``FLOPs`` (``"0"``
        when nothing was measured, as in Lightning), then ``In sizes``/``Out sizes`` with an ``example_input_array``.
        ``total_flops`` is None when the module has no ``example_input_array``; the table then has no FLOPs column.
        """
        table = _format_summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes, total_flops,
            *_measured_columns(summary_data, total_flops)
        )
        log.info("\n" + table)


def _lightning_columns(columns: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """The summary's columns in Lightning's layout, which overriding ``summarize`` methods index (``summary_data[5]``
    is FLOPs): without an example input the summary has no FLOPs column, so one is added after ``Mode`` with
    Lightning's cells ("0" per layer, "n/a" on the row of parameters outside the listed layers)."""
    headers = [header for header, _ in columns]
    if "FLOPs" in headers or "Mode" not in headers:
        return columns
    index = dict(columns).get(" ", [])
    flops = ("FLOPs", ["0" if cell else NOT_APPLICABLE for cell in index])
    at = headers.index("Mode") + 1
    return [*columns[:at], flops, *columns[at:]]


def _measured_columns(columns: Any, total_flops: Optional[int]) -> Any:
    """The columns to show: without a measurement (``total_flops`` None) the FLOPs column says nothing."""
    if total_flops is not None:
        return columns
    return [column for column in columns if column[0] != "FLOPs"]


def _format_summary_table(
    total_parameters: int,
    trainable_parameters: int,
    model_size: float,
    total_training_modes: dict[str, int],
    total_flops: Optional[int],
    *columns: tuple[str, list[str]],
) -> str:
    """The plain-text table: one ``|``-separated row per layer, then the totals."""
    lines: list[str] = []
    if columns:
        widths = [max([len(header), *(len(cell) for cell in cells)]) for header, cells in columns]
        n_rows = len(columns[0][1])

        def row(cells: list[str]) -> str:
            return " | ".join(cell.ljust(width) for cell, width in zip(cells, widths))

        header = row([h for h, _ in columns])
        rule = "-" * len(header)
        lines = [header, rule, *(row([cells[i] for _, cells in columns]) for i in range(n_rows)), rule]
    lines += [
        f"{get_human_readable_count(trainable_parameters):<9} Trainable params",
        f"{get_human_readable_count(total_parameters - trainable_parameters):<9} Non-trainable params",
        f"{get_human_readable_count(total_parameters):<9} Total params",
        f"{model_size:<9.3f} Total estimated model params size (MB)",
        f"{total_training_modes['train']:<9} Modules in train mode",
        f"{total_training_modes['eval']:<9} Modules in eval mode",
    ]
    if total_flops is not None:
        lines.append(f"{get_human_readable_count(total_flops):<9} Total Flops")
    return "\n".join(lines)
