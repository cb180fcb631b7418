"""Interruptions: a signal (SIGTERM by default, e.g. SIGUSR1 for SLURM) saves a resumable checkpoint and
ends the run with a non-zero exit status.

The handler only records the signal; the loop acts on it at the next batch boundary (training or
validation), where the state is consistent: it writes ``interrupted.ckpt`` next to the other
checkpoints, calls the handler the user had installed (if any), and raises ``SystemExit(128 + signum)``
so teardown and ``on_exception`` run and the process exits as a killed one would.

Ctrl-C (SIGINT) keeps Python's behaviour, a ``KeyboardInterrupt`` where the program is, with one guarantee
more: the interpreter raises it in whatever code runs when the signal arrives, and when that is a finalizer
(``__del__`` of a dataloader iterator, a progress bar, any object collected then) the exception is printed as
"ignored" and lost, and the run trains on. During a fit featherlight's SIGINT handler also records the signal,
and the loop raises the ``KeyboardInterrupt`` again at the next batch boundary if the first one was lost.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Iterable, Iterator, Optional, Union

from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.rank_zero import rank_zero_info

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


class Interrupts:
    """The signals that interrupt a fit (``trainer.interrupts``) and whether one was received.

    ``received`` is set by the handler (nothing else happens in it); the fit loop calls :meth:`check` at batch
    boundaries: every batch in one process, every ``every`` training batches (one collective) in several.
    """

    def __init__(self, signals: Iterable[Union[str, int]]) -> None:
        self.signals = _parse_signals(signals)
        self.received: Optional[int] = None
        self.every = 0  # 0: one process reads its own flag every batch; N: ranks agree every N training batches
        self.received_sigterm = False
        self.previous_handlers: dict[int, Any] = {}

    def start(self, world_size: int) -> None:
        """A run starts: how often ranks agree on a signal (a collective, so not every batch)."""
        self.every = 0 if world_size == 1 else 50
        self.received = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Install the handlers for the fit's duration (main thread only), then put the old ones back."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous: dict[int, Any] = {}

        def handler(signum: int, frame: Any) -> None:
            self.received = signum

        def keyboard_interrupt(signum: int, frame: Any) -> None:
            self.received = signum  # remembered: a KeyboardInterrupt raised inside a finalizer is lost, this is not
            raise KeyboardInterrupt

        for sig in self.signals:
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)
        if signal.SIGINT not in self.signals and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            previous[signal.SIGINT] = signal.default_int_handler
            signal.signal(signal.SIGINT, keyboard_interrupt)
        self.previous_handlers = previous
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old if old is not None else signal.SIG_DFL)

    def check(self, trainer: "Trainer") -> None:
        """At a batch boundary where a signal is due: save where the run is (fit only) and leave with a non-zero
        status. With several processes every rank calls this at the same batch: they agree whether any of them
        was signalled, then all save and exit together."""
        if self.received == signal.SIGINT and signal.SIGINT not in self.signals:
            self.received = None
            raise KeyboardInterrupt  # the interpreter raised one and lost it (in a finalizer): this one is not lost
        if self.every:
            received = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
            if not received:
                return
            if self.received is None:
                self.received = int(signal.SIGTERM)
        _save_and_raise(trainer, self)


def _checkpoint_path(trainer: "Trainer") -> str:
    cb = trainer.checkpoint_callback
    dirpath = getattr(cb, "dirpath", None) if cb is not None else None
    if not dirpath:
        dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
    return os.path.join(dirpath, INTERRUPTED_NAME)


def _save_and_raise(trainer: "Trainer", interrupts: Interrupts) -> None:
    signum = interrupts.received
    interrupts.received = None
    interrupts.received_sigterm = True
    name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else str(signum)
    if trainer.state.fn == "fit":
        path = _checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        rank_zero_info(f"Received {name}: saved a resumable checkpoint to {path}. Resume with "
                       f"`trainer.fit(..., ckpt_path={path!r})` (or ckpt_path='last').")
    previous = interrupts.previous_handlers.get(signum)
    if callable(previous):
        previous(signum, None)  # the user's own handler runs too, after the checkpoint is safe
    raise SystemExit(128 + signum)
