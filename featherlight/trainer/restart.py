"""Resuming by itself after a restart: torchrun's elastic agent (``--max-restarts``) or a SLURM requeue.

Lightning removed its fault-tolerant training; featherlight keeps the useful part. When the job was started
again after a failure (``TORCHELASTIC_RESTART_COUNT`` or ``SLURM_RESTART_COUNT`` above 0) and ``fit`` is called
without ``ckpt_path``, the run resumes from the newest checkpoint that every rank sees complete: the checkpoint
callbacks' files (written atomically: a file under its final name is whole) and the one a signal wrote
(``interrupted.ckpt``, SIGTERM/SIGUSR1 before a requeue). With a periodic checkpoint
(``ModelCheckpoint(every_n_train_steps=K)``) the resumed run continues exactly where that checkpoint was taken,
so it ends with the weights an uninterrupted run would have.
"""
from __future__ import annotations

import glob
import os
from typing import Any, Optional

from featherlight.io.load import checkpoint_mtime, is_checkpoint_path
from featherlight.trainer.interrupt import _checkpoint_path
from featherlight.utilities.rank_zero import rank_zero_info, rank_zero_warn

_RESTART_VARS = ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT")


def restart_count() -> int:
    """How many times the launcher has restarted this job (0 for a first start)."""
    for name in _RESTART_VARS:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 0


def _local_candidates(trainer: Any) -> dict[str, int]:
    """This rank's complete checkpoints: path -> modification time (ns)."""
    paths = set()
    for cb in trainer.checkpoint_callbacks:
        dirpath = getattr(cb, "dirpath", None)
        if dirpath and os.path.isdir(dirpath):
            paths.update(glob.glob(os.path.join(glob.escape(dirpath), "*.ckpt")))
    paths.add(_checkpoint_path(trainer))
    out = {}
    for path in paths:
        try:
            if is_checkpoint_path(path):
                out[os.path.abspath(path)] = checkpoint_mtime(path)
        except OSError:  # removed meanwhile (top-k pruning on another node)
            continue
    return out


def agreed_checkpoint(trainer: Any) -> Optional[str]:
    """The newest checkpoint every rank has, or None. Every rank must call this (one collective)."""
    local = _local_candidates(trainer)
    seen = trainer.strategy.all_gather_object(local)
    common = set(local)
    for other in seen:
        common &= set(other)
    if not common:
        if any(seen):
            rank_zero_warn("The job was restarted, but no checkpoint is visible to every rank: training starts over. "
                           "Write checkpoints to storage all nodes share.")
        return None
    # newest by the latest time any rank saw (the same file on a shared disk)
    return max(common, key=lambda p: (max(o[p] for o in seen), os.path.basename(p).startswith("last"), p))


def resume_path(trainer: Any) -> Optional[str]:
    """Where a restarted fit resumes from (None: not restarted, or nothing to resume from)."""
    count = restart_count()
    if not count:
        return None
    path = agreed_checkpoint(trainer)
    if path is not None:
        rank_zero_info(f"Restart {count} of this job: resuming from {path} (the newest checkpoint every rank has).")
    return path
