"""Exceptions the library raises on purpose.

Every one carries a message written for the user: what is wrong and how to fix it, on one line.
Front ends (the CLI, the HTTP server) translate them once, at the edge; anything else is a bug
and keeps its traceback.
"""


class ParleyError(Exception):
    """Base class: a user-facing, one-line problem."""


class ModelLoadError(ParleyError):
    """A model spec that cannot be turned into a model (unknown, missing, offline, corrupt)."""


class CacheError(ParleyError):
    """$PARLEY_HOME or the model cache cannot be used (unwritable, out of space)."""


class ConfigError(ParleyError):
    """A bad parameter or config value; the message names the key and the allowed values."""


class ContextError(ParleyError):
    """Input that cannot fit the model's context window even after dropping history."""


class DataError(ParleyError):
    """A malformed data source or record; the message starts with `file:line:` where known."""
