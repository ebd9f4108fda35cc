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


def not_a_torch_file(path: object) -> CheckpointError:
    """The sentence for a file that ``torch.load`` cannot read (said before torch loads, where the bytes show it)."""
    return CheckpointError(f"{path} is not a PyTorch model file (torch.load cannot read it); expected a file written "
                           "by torch.save, torch.jit.save or edgernn.save")


def looks_like_torch_file(head: bytes) -> bool:
    """Whether a file's first bytes can start a ``torch.save`` / ``torch.jit.save`` file: a zip
    archive (the format since PyTorch 1.6) or a pickle (the legacy format, protocol 2 and up)."""
    return head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"
