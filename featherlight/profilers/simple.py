"""Wall-clock profiler: how long each action took, how often it ran."""

from __future__ import annotations

import math
import os
import time
from array import array
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

from featherlight.profilers.profiler import Profiler

__all__ = ["SimpleProfiler"]


class SimpleProfiler(Profiler):
    """Record the wall-clock duration of every profiled action and report per-action totals for each stage.

    Every duration is kept, as Lightning does, in :attr:`recorded_durations` (action name -> the seconds of each call,
    in order; an ``array('d')``, 8 bytes per call). The report is computed from it, so a duration changed or added
    there shows in :meth:`summary`. What was recorded stays readable after the stage ends (``trainer.profiler`` after
    ``fit``) and is forgotten when the next stage is set up, so each stage gets a report of its own.

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
        #: action name -> the duration of each call in seconds (a list given here works as well)
        self.recorded_durations: dict[str, Sequence[float]] = defaultdict(_durations)
        self.start_time = time.perf_counter()
        self._stage_ended = False

    def setup(self, stage: str, local_rank: Optional[int] = None, log_dir: Optional[str] = None) -> None:
        super().setup(stage, local_rank=local_rank, log_dir=log_dir)
        if self._stage_ended:  # the previous stage's durations were reported: this stage starts afresh
            self.recorded_durations = defaultdict(_durations)
            self._stage_ended = False
        if not self.recorded_durations and not self.current_actions:
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
        self.recorded_durations[action_name].append(end - start)  # type: ignore[attr-defined]

    def teardown(self, stage: Optional[str]) -> None:
        """End the stage: its durations stay readable (and in :meth:`summary`) until the next :meth:`setup`."""
        super().teardown(stage)
        self._stage_ended = True

    def _stats(self) -> dict[str, tuple[int, float]]:
        """action -> (number of calls, total seconds), from :attr:`recorded_durations`."""
        return {action: (len(d), math.fsum(d)) for action, d in self.recorded_durations.items() if len(d)}

    def summary(self) -> str:
        """The ``"{STAGE} Profiler Report"`` table, or ``""`` if nothing was recorded."""
        stats = self._stats()
        if not stats:
            return ""
        sep = os.linesep
        width = max(len(action) for action in stats)
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
            total_calls = sum(calls for calls, _ in stats.values())
            out += [row("Total", "-", f"{total_calls}", f"{stage_time:.5}", "100 %"), rule]
            ranked = sorted(stats.items(), key=lambda item: item[1][1], reverse=True)
            for action, (calls, total) in ranked:
                percent = 100.0 * total / stage_time if stage_time > 0 else 0.0
                out.append(row(action, f"{total / calls:.5}", f"{calls}", f"{total:.5}", f"{percent:.5}"))
        else:
            ranked = sorted(stats.items(), key=lambda item: item[1][1] / item[1][0], reverse=True)
            for action, (calls, total) in ranked:
                out.append(row(action, f"{total / calls:.5}", f"{total:.5}"))
        out += [rule, sep]
        return "".join(out)


def _durations() -> array:
    return array("d")
