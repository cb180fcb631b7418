"""Function-level profiler built on :mod:`cProfile`, one profile per action."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from featherlight.profilers.profiler import Profiler
from featherlight.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    import cProfile

__all__ = ["AdvancedProfiler"]


class AdvancedProfiler(Profiler):
    """Profile every function call made while an action runs, with one :class:`cProfile.Profile` per action.

    Only one profile is active at a time (Python allows a single active profiler): starting a nested action pauses
    the enclosing one, and stopping it resumes the enclosing one, so each call is attributed to the innermost action.
    The report lists, per action, the ``pstats`` table sorted by cumulative time. Very verbose; use it to dig into a
    hot spot found with :class:`~featherlight.profilers.SimpleProfiler`.

    Args:
        dirpath: Directory for the report file and the ``.prof`` dumps (see :class:`~featherlight.profilers.Profiler`).
        filename: Report file name stem; without it the report is logged.
        line_count_restriction: Rows of each table to keep: an int is a count, a float in ``[0, 1]`` a fraction.
        dump_stats: Also write each action's raw stats to ``dirpath/{stage}-{filename}-{action}.prof`` (loadable
            with :mod:`pstats` or snakeviz). Needs a ``dirpath`` (or a ``log_dir`` from :meth:`setup`).

    Raises:
        ValueError: If an action is started while already running, or stopped without having been started.
    """

    def __init__(
        self,
        dirpath: Optional[Union[str, Path]] = None,
        filename: Optional[str] = None,
        line_count_restriction: float = 1.0,
        dump_stats: bool = False,
    ) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.line_count_restriction = line_count_restriction
        self.dump_stats = dump_stats
        self.profiled_actions: dict[str, cProfile.Profile] = {}
        self._active: list[str] = []  # stack of running actions; only the last one's profile is enabled

    def start(self, action_name: str) -> None:
        import cProfile

        if action_name in self._active:
            raise ValueError(f"Attempted to start {action_name} which has already started.")
        if self._active:
            self.profiled_actions[self._active[-1]].disable()
        profile = self.profiled_actions.get(action_name)
        if profile is None:
            profile = self.profiled_actions[action_name] = cProfile.Profile()
        self._active.append(action_name)
        profile.enable()

    def stop(self, action_name: str) -> None:
        if action_name not in self._active:
            raise ValueError(f"Attempting to stop recording an action ({action_name}) which was never started.")
        self.profiled_actions[action_name].disable()
        was_innermost = self._active[-1] == action_name
        self._active.remove(action_name)
        if was_innermost and self._active:
            self.profiled_actions[self._active[-1]].enable()

    def summary(self) -> str:
        """One ``pstats`` table per action (sorted by cumulative time), or ``""`` if nothing was recorded."""
        import pstats

        if not self.profiled_actions:
            return ""
        if self.dump_stats:
            self._dump_all()
        tables = {}
        for action_name, profile in self.profiled_actions.items():
            stream = io.StringIO()
            stats = pstats.Stats(profile, stream=stream)
            stats.strip_dirs().sort_stats("cumulative").print_stats(self.line_count_restriction)
            tables[action_name] = stream.getvalue()
        return self._stats_to_str(tables)

    def _dump_all(self) -> None:
        if not self.dirpath:
            rank_zero_warn("AdvancedProfiler(dump_stats=True) needs a `dirpath` to write to; no stats were dumped.")
            return
        dirpath = os.fspath(self.dirpath)
        os.makedirs(dirpath, exist_ok=True)
        for action_name, profile in self.profiled_actions.items():
            profile.dump_stats(os.path.join(dirpath, self._prepare_filename(action_name, extension=".prof")))

    def teardown(self, stage: Optional[str]) -> None:
        """Stop any running profile and forget all recorded stats."""
        super().teardown(stage)
        for action_name in self._active:
            self.profiled_actions[action_name].disable()
        self._active = []
        self.profiled_actions = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # cProfile.Profile objects cannot be pickled (e.g. when the trainer is sent to spawned workers).
        state["profiled_actions"] = {}
        state["_active"] = []
        return state
