"""Base class for profilers and the no-op :class:`PassThroughProfiler`."""

from __future__ import annotations

import logging
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Optional, Union

log = logging.getLogger(__name__)

__all__ = ["Profiler", "PassThroughProfiler"]


class _ProfileContext:
    """Context manager returned by :meth:`Profiler.profile`.

    A plain class rather than ``@contextmanager``: the trainer opens one around every hook of every batch, so the
    generator machinery would be measurable overhead.
    """

    __slots__ = ("_profiler", "_action_name")

    def __init__(self, profiler: Profiler, action_name: str) -> None:
        self._profiler = profiler
        self._action_name = action_name

    def __enter__(self) -> str:
        self._profiler.start(self._action_name)
        return self._action_name

    def __exit__(self, *exc_info: Any) -> None:
        self._profiler.stop(self._action_name)


class Profiler(ABC):
    """Base class for profilers.

    Subclasses implement :meth:`start` / :meth:`stop` (and usually :meth:`summary` and :meth:`teardown`). The trainer
    drives a profiler through one stage (``"fit"``, ``"validate"``, ``"test"``, ``"predict"``) at a time::

        profiler.setup(stage, local_rank, log_dir)
        with profiler.profile("run_training_batch"):
            ...
        profiler.describe()  # report this stage, then teardown(stage)
        profiler.teardown(stage)

    Args:
        dirpath: Directory for the report file. If ``None``, :meth:`setup`'s ``log_dir`` is used.
        filename: If given (and a directory is known), :meth:`describe` appends the report to
            ``dirpath/{stage}-{filename}[-{local_rank}].txt`` instead of logging it.
    """

    def __init__(self, dirpath: Optional[Union[str, Path]] = None, filename: Optional[str] = None) -> None:
        self.dirpath = dirpath
        self.filename = filename
        self._stage: Optional[str] = None
        self._local_rank: Optional[int] = None
        self._log_dir: Optional[str] = None
        self._described = False  # this stage's report was emitted

    @abstractmethod
    def start(self, action_name: str) -> None:
        """Start recording ``action_name``."""

    @abstractmethod
    def stop(self, action_name: str) -> None:
        """Stop recording ``action_name``."""

    def summary(self) -> str:
        """Return the report of what was recorded since the last teardown (``""`` if there is nothing to report)."""
        return ""

    def profile(self, action_name: str) -> _ProfileContext:
        """Return a context manager that records ``action_name`` around its block; it yields ``action_name``."""
        return _ProfileContext(self, action_name)

    @property
    def local_rank(self) -> int:
        """The local rank given to :meth:`setup` (0 if none was given)."""
        return 0 if self._local_rank is None else self._local_rank

    def setup(self, stage: str, local_rank: Optional[int] = None, log_dir: Optional[str] = None) -> None:
        """Prepare for ``stage``. ``local_rank`` is only set when several processes run (it then appears in file
        names); ``log_dir`` becomes :attr:`dirpath` if none was given."""
        self._stage = stage
        self._local_rank = local_rank
        self._log_dir = log_dir
        self.dirpath = self.dirpath or log_dir
        self._described = False

    def teardown(self, stage: Optional[str]) -> None:
        """Release what was recorded for ``stage``. Safe to call more than once."""

    def describe(self) -> None:
        """Emit :meth:`summary` once per stage, then :meth:`teardown`. Calling ``describe()`` again before the
        next :meth:`setup` emits nothing, so a stage's report is never repeated; :meth:`summary` itself stays
        readable after the stage (as in Lightning).

        With a ``filename`` the report is appended to ``dirpath/{stage}-{filename}[-{local_rank}].txt``; otherwise
        it is logged at INFO level (local rank 0 only) on the ``featherlight`` logger.
        """
        summary = "" if self._described else self.summary()
        self._described = True
        if summary:
            path = self._report_path()
            if path is not None:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "a") as file:
                    file.write(summary)
            elif self._local_rank in (None, 0):
                log.info(summary)
        self.teardown(stage=self._stage)

    def _report_path(self) -> Optional[str]:
        if not (self.filename and self.dirpath):
            return None
        return os.path.join(os.fspath(self.dirpath), self._prepare_filename())

    def _prepare_filename(self, action_name: Optional[str] = None, extension: str = ".txt") -> str:
        """Build ``{stage}-{filename}-{local_rank}-{action_name}{extension}`` from the parts that are set, with
        characters that are unsafe in file names replaced by ``_``."""
        parts = [self._stage, self.filename, None if self._local_rank is None else str(self._local_rank), action_name]
        base = "-".join(part for part in parts if part)
        base = re.sub(r"_+", "_", re.sub(r"[\\/:*?\"<>|\n\r\t]", "_", base)).strip()
        return (base or "profile") + extension

    def _stats_to_str(self, stats: dict[str, str]) -> str:
        """Render per-action report sections under a ``"{STAGE} Profiler Report"`` title."""
        lines = [f"{self._stage.upper()} Profiler Report" if self._stage else "Profiler Report"]
        for action, text in stats.items():
            header = f"Profile stats for: {action}"
            if self._local_rank is not None:
                header += f" rank: {self._local_rank}"
            lines.append(header)
            lines.append(text)
        return os.linesep.join(lines)


class PassThroughProfiler(Profiler):
    """A profiler that records nothing; the trainer's default."""

    def start(self, action_name: str) -> None:
        pass

    def stop(self, action_name: str) -> None:
        pass
