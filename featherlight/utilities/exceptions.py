"""Exceptions raised by featherlight."""
from __future__ import annotations


class MisconfigurationException(Exception):
    """Raised when the user configured the Trainer, a module or a callback in a way that cannot work."""
