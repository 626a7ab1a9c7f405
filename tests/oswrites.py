"""Make writes under a folder fail as the OS would, for tests that must also run as root.

Root ignores file permissions, so a ``chmod 0o555`` folder stays writable to it. :func:`deny`
patches the calls galda's writers go through (``os.open`` with a write flag, ``os.mkdir``,
``os.access`` for W_OK) to raise ``OSError(code)`` for paths under the folder; tests use it
in-process, and :data:`PRELUDE` installs it in a ``python -c`` child from the environment
(``GALDA_TEST_DENY=<folder>``, ``GALDA_TEST_DENY_ERRNO=<errno>``,
``GALDA_TEST_DENY_SKIP=<name prefixes that still succeed, comma-separated>``).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def deny(folder: str | os.PathLike, code: int = errno.EACCES, skip: str = "", patch=None) -> None:
    """Writes under ``folder`` raise ``OSError(code)``; names starting with one of the
    comma-separated prefixes of ``skip`` (and what lies in such folders) still work.

    ``patch``: pytest's ``monkeypatch.setattr`` (undone after the test); default: setattr.
    """
    root = Path(folder).absolute()
    prefixes = tuple(s for s in skip.split(",") if s)
    setter = patch or setattr
    real_open, real_mkdir, real_access = os.open, os.mkdir, os.access

    def inside(path: Any, or_root: bool = False) -> bool:
        """``path`` is an entry inside the folder (or the folder itself, with ``or_root``)."""
        try:
            p = Path(os.fsdecode(path)).absolute()
        except TypeError:  # a file descriptor
            return False
        if not p.is_relative_to(root) or (p == root and not or_root):
            return False
        return not any(part.startswith(prefixes) for part in p.relative_to(root).parts)

    def fail(path: Any) -> OSError:
        return OSError(code, os.strerror(code), os.fsdecode(path))

    def fake_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if flags & _WRITE_FLAGS and inside(path):
            raise fail(path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def fake_mkdir(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        if inside(path):
            raise fail(path)
        real_mkdir(path, mode, dir_fd=dir_fd)

    def fake_access(path: Any, mode: int, **kwargs: Any) -> bool:
        if mode & os.W_OK and code != errno.ENOSPC and inside(path, or_root=True):
            return False  # a full disk still grants permission
        return real_access(path, mode, **kwargs)

    setter(os, "open", fake_open)
    setter(os, "mkdir", fake_mkdir)
    setter(os, "access", fake_access)


#: ``python -c PRELUDE + "..."``: install :func:`deny` from the environment, if asked
PRELUDE = (
    "import os, sys\n"
    "if os.environ.get('GALDA_TEST_DENY'):\n"
    "    from tests.oswrites import deny\n"
    "    deny(os.environ['GALDA_TEST_DENY'], int(os.environ.get('GALDA_TEST_DENY_ERRNO', '13')),"
    " os.environ.get('GALDA_TEST_DENY_SKIP', ''))\n"
)
