"""Exceptions raised by featherlight."""
from __future__ import annotations


class MisconfigurationException(Exception):
    """Raised when the user configured the Trainer, a module or a callback in a way that cannot work."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be read: truncated, corrupt, not a checkpoint, or needing arbitrary unpickling.

    ``reason`` says which: ``"corrupt"`` (damaged or not a checkpoint), ``"unsafe"`` (needs
    ``weights_only=False``) or ``"other"``.
    """

    def __init__(self, message: str, reason: str = "other") -> None:
        super().__init__(message)
        self.reason = reason


class WeightsOnlyCheckpointError(CheckpointError, KeyError):
    """A fit was asked to resume from a checkpoint that holds only the model's weights (saved with
    ``weights_only=True``): it has no optimizer, scheduler or loop state to resume.

    It is also a ``KeyError``, the type Lightning raises here, but prints its message as a sentence (a plain
    ``KeyError`` shows it quoted, like a missing key). ``reason`` is ``"weights_only"``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="weights_only")

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class _TunerExitException(Exception):
    """Raised by a tuner callback (``BatchSizeFinder``, ``LearningRateFinder``) that ``Tuner`` started, to end the
    run as soon as its search is done: teardown hooks run, the status is FINISHED and the entry point returns."""


class TrainingInterrupted(KeyboardInterrupt, SystemExit):
    """What ``fit``/``validate``/``test``/``predict`` raise after Ctrl-C, once ``on_exception`` and teardown ran.

    It is both exceptions a caller may expect: a ``KeyboardInterrupt`` (what Python raised; ``except
    KeyboardInterrupt`` around ``trainer.fit`` keeps working, and the interrupt is never swallowed) and a
    ``SystemExit`` (what Lightning raises here, ``sys.exit(1)``), so left uncaught the program ends quietly with
    exit status ``code``: 130, the shell's 128 + SIGINT, as a SIGTERM ends with 128 + 15. The original
    ``KeyboardInterrupt`` is the ``__cause__``.
    """

    def __init__(self, code: int = 130) -> None:
        super().__init__()
        self.code = code
