"""Every error the library raises on purpose, rooted in one class.

The CLI turns an :class:`AllSparkError` into one clear line and exit code 2; anything else is a
bug and keeps its traceback. Each class also subclasses the builtin it really is, as TorchGeo's
``datasets/errors.py`` does, so ``except ValueError`` / ``except OSError`` callers keep working.
"""

from __future__ import annotations


class AllSparkError(Exception):
    """Root of the library's errors: bad input or an unusable environment, never a bug."""


class ConfigError(AllSparkError, ValueError):
    """A run configuration that cannot be used; the message names the file and the key."""


class InputError(AllSparkError, ValueError):
    """An input file, table, catalog or AOI that cannot be used; the message names it and what was expected."""


class CatalogError(InputError):
    """A STAC catalog, its config, or an item in it that cannot be used."""


class NoDataError(InputError):
    """The inputs hold nothing to work on: no item found, or not a single valid pixel or row."""


class CheckpointError(InputError):
    """A model checkpoint that is missing, unreadable or not for this run."""


class StorageError(AllSparkError, OSError):
    """A folder a run must write that cannot be written or lacks room; the message names the folder."""


class TrainingError(AllSparkError, RuntimeError):
    """Fine-tuning that gave no usable model: no epoch's validation figure was finite (training diverged)."""
