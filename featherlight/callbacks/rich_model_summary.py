"""The model summary as a ``rich`` table (``rich`` is imported only when the summary is printed)."""
from __future__ import annotations

import importlib.util
from typing import Any, Optional

from featherlight.callbacks.model_summary import ModelSummary, _measured_columns
from featherlight.utilities.model_summary import get_human_readable_count


class RichModelSummary(ModelSummary):
    """Like :class:`ModelSummary`, rendered as a `rich <https://github.com/Textualize/rich>`_ table.

    Args:
        max_depth: how many levels of nested submodules to list; ``0`` turns the summary off.
        **summarize_kwargs: ``header_style`` (default ``"bold magenta"``) sets the style of the table header.

    Raises:
        ModuleNotFoundError: if ``rich`` is not installed.
    """

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        if importlib.util.find_spec("rich") is None:
            raise ModuleNotFoundError("`RichModelSummary` requires `rich`: pip install rich")
        super().__init__(max_depth, **summarize_kwargs)

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
        from rich import get_console
        from rich.table import Table

        console = get_console()
        summary_data = _measured_columns(summary_data, total_flops)
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        right = {"Params", "FLOPs", "In sizes", "Out sizes"}
        for header, _ in summary_data:
            if header == " ":
                table.add_column(header, style="dim")
            elif header == "Name":
                table.add_column(header, justify="left", no_wrap=True)
            else:
                table.add_column(header, justify="right" if header in right else "left")
        rows = zip(*(cells for _, cells in summary_data)) if summary_data else []
        for row in rows:
            table.add_row(*row)
        console.print(table)

        grid = Table.grid(expand=True)
        grid.add_column()
        grid.add_row(f"[bold]Trainable params[/]: {get_human_readable_count(trainable_parameters)}")
        grid.add_row(
            f"[bold]Non-trainable params[/]: {get_human_readable_count(total_parameters - trainable_parameters)}"
        )
        grid.add_row(f"[bold]Total params[/]: {get_human_readable_count(total_parameters)}")
        grid.add_row(f"[bold]Total estimated model params size (MB)[/]: {model_size:.3f}")
        grid.add_row(f"[bold]Modules in train mode[/]: {total_training_modes['train']}")
        grid.add_row(f"[bold]Modules in eval mode[/]: {total_training_modes['eval']}")
        if total_flops is not None:
            grid.add_row(f"[bold]Total FLOPs[/]: {get_human_readable_count(total_flops)}")
        console.print(grid)
