"""Errors raised by imaging: one line each, naming the file or field and the problem."""

from __future__ import annotations


class ImagingError(Exception):
    """Base class: the CLI prints ``str(error)`` as a single line, never a traceback."""


class InputError(ImagingError):
    """The input scan cannot be used as given (unreadable, inconsistent, too large...)."""


class SegmentationError(ImagingError):
    """A segmentation produced nothing usable (for example an empty skin mask)."""


class OutputError(ImagingError):
    """The ``--out`` folder cannot be written or replaced without losing someone's files."""
