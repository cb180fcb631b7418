"""Interruptions: a signal (SIGTERM by default, e.g. SIGUSR1 for SLURM) saves a resumable checkpoint and
ends the run with a non-zero exit status.

The handler only records the signal; the loop acts on it at the next batch boundary (training or
validation), where the state is consistent: it writes ``interrupted.ckpt`` next to the other
checkpoints, calls the handler the user had installed (if any), and raises ``SystemExit(128 + signum)``
so teardown and ``on_exception`` run and the process exits as a killed one would.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Union

from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.rank_zero import rank_zero_info

if TYPE_CHECKING:
    from featherlight.trainer.trainer import Trainer

INTERRUPTED_NAME = "interrupted.ckpt"


def _parse_signals(signals: Iterable[Union[str, int]]) -> tuple[int, ...]:
    out = []
    for sig in signals or ():
        if isinstance(sig, str):
            num = getattr(signal, sig.upper() if sig.upper().startswith("SIG") else f"SIG{sig.upper()}", None)
            if num is None:
                raise MisconfigurationException(
                    f"`interrupt_signals` names an unknown signal {sig!r}; use names like 'SIGTERM' or 'SIGUSR1'."
                )
            out.append(int(num))
        else:
            out.append(int(sig))
    return tuple(out)


@contextlib.contextmanager
def _signal_handlers(trainer: "Trainer") -> Iterator[None]:
    """Install the handlers for the fit's duration (main thread only), then put the old ones back."""
    if not trainer._interrupt_signals or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        trainer._signal_received = signum

    for sig in trainer._interrupt_signals:
        previous[sig] = signal.getsignal(sig)
        signal.signal(sig, handler)
    trainer._previous_signal_handlers = previous
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def _checkpoint_path(trainer: "Trainer") -> str:
    cb = trainer.checkpoint_callback
    dirpath = getattr(cb, "dirpath", None) if cb is not None else None
    if not dirpath:
        dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
    return os.path.join(dirpath, INTERRUPTED_NAME)


def _save_and_raise(trainer: "Trainer") -> None:
    signum = trainer._signal_received
    trainer._signal_received = None
    trainer._received_sigterm = True
    name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else str(signum)
    if trainer.state.fn == "fit":
        path = _checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        rank_zero_info(f"Received {name}: saved a resumable checkpoint to {path}. Resume with "
                       f"`trainer.fit(..., ckpt_path={path!r})` (or ckpt_path='last').")
    previous = getattr(trainer, "_previous_signal_handlers", {}).get(signum)
    if callable(previous):
        previous(signum, None)  # the user's own handler runs too, after the checkpoint is safe
    raise SystemExit(128 + signum)
