"""User-facing errors.

The CLI prints these without a traceback and exits with status 2. Library code raises them
for problems the user can fix (bad input files, impossible settings); programming errors stay
ordinary exceptions.
"""

from __future__ import annotations


class CemkitError(Exception):
    """Base class of errors the user can act on."""


class InputError(CemkitError, ValueError):
    """Bad input data: the message names the file or folder and the problem."""


class ConfigError(CemkitError, ValueError):
    """A configuration value that cannot work (wrong combination, out of range)."""


class RunCancelled(CemkitError):
    """A run stopped on the user's request (a GUI's Cancel button); it left no output behind."""
