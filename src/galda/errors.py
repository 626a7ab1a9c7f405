"""The package's user-facing error type: caught by the command-line entry points, which print
its message (naming the file or setting at fault) and exit non-zero without a traceback."""


class GaldaError(Exception):
    """A problem the user can fix: bad input, a missing file, an invalid setting."""


class ConfigError(GaldaError):
    """A setting (config key) has a value this run cannot use; the message names the key."""


class DataError(GaldaError):
    """A data file does not fit this run (role, labels, size); the message names the file."""
