"""Wall-clock profiler: how long each action took, how often it ran."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional, Union

from featherlight.profilers.profiler import Profiler

__all__ = ["SimpleProfiler"]


class SimpleProfiler(Profiler):
    """Record the wall-clock duration of every profiled action and report per-action totals for each stage.

    Only a call count and a running total are kept per action, so memory does not grow with the number of steps.

    Args:
        dirpath: Directory for the report file (see :class:`~featherlight.profilers.Profiler`).
        filename: Report file name stem; without it the report is logged.
        extended: Report mean duration, number of calls, total time and percentage of the stage's wall time, sorted
            by total time; otherwise only mean and total time, sorted by mean.

    Raises:
        ValueError: If an action is started while already running, or stopped without having been started.
    """

    def __init__(
        self,
        dirpath: Optional[Union[str, Path]] = None,
        filename: Optional[str] = None,
        extended: bool = True,
    ) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.extended = extended
        self.current_actions: dict[str, float] = {}
        self._stats: dict[str, list] = {}  # action -> [num_calls, total_seconds]
        self.start_time = time.perf_counter()

    def setup(self, stage: str, local_rank: Optional[int] = None, log_dir: Optional[str] = None) -> None:
        super().setup(stage, local_rank=local_rank, log_dir=log_dir)
        if not self._stats and not self.current_actions:
            self.start_time = time.perf_counter()

    def start(self, action_name: str) -> None:
        if action_name in self.current_actions:
            raise ValueError(f"Attempted to start {action_name} which has already started.")
        self.current_actions[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        end = time.perf_counter()
        start = self.current_actions.pop(action_name, None)
        if start is None:
            raise ValueError(f"Attempting to stop recording an action ({action_name}) which was never started.")
        stats = self._stats.get(action_name)
        if stats is None:
            self._stats[action_name] = [1, end - start]
        else:
            stats[0] += 1
            stats[1] += end - start

    def teardown(self, stage: Optional[str]) -> None:
        """Forget the recorded durations so that the next stage gets a report of its own."""
        super().teardown(stage)
        self._stats = {}
        self.start_time = time.perf_counter()

    def summary(self) -> str:
        """The ``"{STAGE} Profiler Report"`` table, or ``""`` if nothing was recorded."""
        if not self._stats:
            return ""
        sep = os.linesep
        width = max(len(action) for action in self._stats)
        title = f"{self._stage.upper()} Profiler Report" if self._stage else "Profiler Report"

        def row(*cells: str) -> str:
            first, rest = cells[0], cells[1:]
            return f"{sep}|  {first:<{width}s}\t|" + "".join(f"  {cell:<15}\t|" for cell in rest)

        if self.extended:
            header = row("Action", "Mean duration (s)", "Num calls", "Total time (s)", "Percentage %")
        else:
            header = row("Action", "Mean duration (s)", "Total time (s)")
        rule = sep + "-" * len(header.expandtabs())
        out = [title, sep, rule, header, rule]

        if self.extended:
            stage_time = time.perf_counter() - self.start_time
            total_calls = sum(calls for calls, _ in self._stats.values())
            out += [row("Total", "-", f"{total_calls}", f"{stage_time:.5}", "100 %"), rule]
            ranked = sorted(self._stats.items(), key=lambda item: item[1][1], reverse=True)
            for action, (calls, total) in ranked:
                percent = 100.0 * total / stage_time if stage_time > 0 else 0.0
                out.append(row(action, f"{total / calls:.5}", f"{calls}", f"{total:.5}", f"{percent:.5}"))
        else:
            ranked = sorted(self._stats.items(), key=lambda item: item[1][1] / item[1][0], reverse=True)
            for action, (calls, total) in ranked:
                out.append(row(action, f"{total / calls:.5}", f"{total:.5}"))
        out += [rule, sep]
        return "".join(out)
