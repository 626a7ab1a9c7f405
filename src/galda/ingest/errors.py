"""The one exception type for user errors in ``galda.ingest``."""

from __future__ import annotations

import os


class IngestError(ValueError):
    """Bad input for an import: the message names the file and the problem.

    ``python -m galda.ingest`` prints it as ``galda.ingest: error: <file>: <problem>`` and exits
    with status 2, without a traceback.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{self.path}: {problem}")
