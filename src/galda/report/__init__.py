"""Rebuild the paper's Table 1 and Figure 1 from run folders.

``python -m galda.report DIR [DIR ...] [--out OUTDIR] [--paper] [--seeds 1-10] [--no-figures]``
or :func:`build_report`. See docs/report.md.
"""

from .collect import Group, Run, Stat, aggregate, find_results, load_runs, parse_seeds
from .core import NoResultsError, build_report

__all__ = [
    "Group",
    "NoResultsError",
    "Run",
    "Stat",
    "aggregate",
    "build_report",
    "find_results",
    "load_runs",
    "parse_seeds",
]
