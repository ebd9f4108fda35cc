"""Errors that reach users as one sentence (the CLI prints them without a traceback)."""

from __future__ import annotations


class EdgernnError(Exception):
    """A problem with the user's input, stated as one sentence: what was wrong, what was expected."""


class ExportError(EdgernnError):
    """The model cannot be exported as asked."""


class ParityError(EdgernnError):
    """The exported graph does not match PyTorch within tolerance."""


class CheckpointError(EdgernnError):
    """A model file cannot be read safely, or is not what it claims to be."""
