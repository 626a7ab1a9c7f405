"""The package's user-facing error type: caught by the command-line entry points, which print
its message (naming the file or setting at fault) and exit non-zero without a traceback."""


class GaldaError(Exception):
    """A problem the user can fix: bad input, a missing file, an invalid setting."""


class ConfigError(GaldaError):
    """A setting (config key) has a value this run cannot use; the message names the key."""


class DataError(GaldaError):
    """A data file does not fit this run (role, labels, size); the message names the file."""


class WriteError(GaldaError):
    """An output cannot be written (permission, read-only file system, disk full); names it."""


#: the config keys that place a training run's folder
RUN_FOLDER_KEYS = "paths.log_dir, or hydra.run.dir / hydra.sweep.dir"


def cannot_write(path: object, err: OSError, what: str = "", keys: str = "") -> WriteError:
    """``<path>: cannot write[ what]: <hint with the fix>[ (keys)]`` as a WriteError."""
    where = f" ({keys})" if keys else ""
    return WriteError(
        f"{path}: cannot write{' ' + what if what else ''}: {os_error_hint(err)}{where}"
    )


def os_error_hint(err: OSError) -> str:
    """What a failed write means for the user, in a few words with the fix (no traceback)."""
    import errno

    hints = {
        errno.EACCES: "permission denied; choose a folder you can write to or fix its permissions",
        errno.EPERM: "permission denied; choose a folder you can write to or fix its permissions",
        errno.EROFS: "read-only file system; choose another output folder",
        errno.ENOSPC: "no space left on the device; free some space or choose another disk",
        errno.EDQUOT: "disk quota exceeded; free some space or choose another disk",
        errno.ENOTDIR: "a parent of this path is a file, not a folder; choose another path",
        errno.EISDIR: "this path is a folder; give a file name",
        errno.EEXIST: "a file is in the way of the output folder; choose another path",
    }
    return hints.get(err.errno or 0, err.strerror or str(err) or type(err).__name__)
