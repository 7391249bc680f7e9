"""Exceptions a user can act on. The CLI prints their message as one line and exits non-zero."""

from __future__ import annotations


class RefsegError(Exception):
    """Base class: the message says what went wrong and what to do about it."""


class CheckpointError(RefsegError):
    """A model checkpoint could not be used."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint is neither on disk nor in the download cache (and cannot be downloaded)."""


class CheckpointFormatError(CheckpointError, ValueError):
    """The file exists but is not a checkpoint we can read, or its shapes do not match."""


class ImageError(RefsegError, ValueError):
    """An image is missing, corrupt, or in a form we cannot convert to RGB."""


class InputError(RefsegError, ValueError):
    """Bad user input other than images: empty text, bad option values, and the like."""


class OptionError(InputError):
    """A bad value for a named option: an unknown method, an out-of-range parameter. The
    service answers it 422 (a valid request with a bad parameter)."""


class DatasetError(RefsegError):
    """A dataset file is missing or malformed."""
