"""``build_report``: collect results, write tables and Figure 1."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from galda.results import atomic_write_text

from . import tables
from .collect import aggregate, load_runs, parse_seeds


class NoResultsError(RuntimeError):
    """No results.json was found under the given folders."""


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def build_report(
    dirs: Iterable[str | os.PathLike] | str | os.PathLike,
    out: str | os.PathLike,
    paper: bool = False,
    expected_seeds: Iterable[int] | str | None = None,
    figures: bool = True,
) -> dict[str, Any]:
    """Collect every ``results.json`` under ``dirs`` and write the report into ``out``.

    Writes ``table1.md``, ``table1.csv``, ``table1.tex``, ``metrics.md``, ``metrics.csv``; with
    ``paper`` also ``table1_vs_paper.md`` / ``.csv``; with ``figures`` ``figure1.png`` and
    ``figure1.pdf`` (``figure1_<data>.*`` per data set when several data sets are present).

    ``expected_seeds``: seeds each group should have (list or ``"1-10"``); None → per data set,
    the union of the seeds seen. Raises :class:`NoResultsError` when nothing is found.

    Returns ``{"groups", "runs", "problems", "files", "markdown", "paper_markdown",
    "incomplete"}``.
    """
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    dirs = [Path(d) for d in dirs]
    seeds = parse_seeds(expected_seeds)  # type: ignore[arg-type]
    runs, problems = load_runs([d for d in dirs if d.exists()])
    absent = [str(d) for d in dirs if not d.exists()]
    if not runs:
        where = ", ".join(str(d) for d in dirs) or "(no folders given)"
        msg = f"no results.json found under: {where}"
        if absent:
            msg += f" (does not exist: {', '.join(absent)})"
        if problems:
            msg += f"; {len(problems)} unreadable: " + "; ".join(problems[:5])
        raise NoResultsError(msg)
    problems += [f"folder does not exist: {a}" for a in absent]

    groups = aggregate(runs, seeds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    md = tables.table1_markdown(groups, seeds)
    if problems:
        md += "\nFiles that could not be read:\n" + "".join(f"- {p}\n" for p in problems)
    files["table1.md"] = atomic_write_text(out / "table1.md", md)
    files["table1.csv"] = atomic_write_text(out / "table1.csv", tables.table1_csv(groups))
    files["table1.tex"] = atomic_write_text(out / "table1.tex", tables.table1_latex(groups, seeds))
    files["metrics.md"] = atomic_write_text(out / "metrics.md", tables.metrics_markdown(groups))
    files["metrics.csv"] = atomic_write_text(out / "metrics.csv", tables.metrics_csv(groups))
    paper_md = None
    if paper:
        paper_md = tables.paper_markdown(groups)
        files["table1_vs_paper.md"] = atomic_write_text(out / "table1_vs_paper.md", paper_md)
        files["table1_vs_paper.csv"] = atomic_write_text(out / "table1_vs_paper.csv",
                                                          tables.paper_csv(groups))
    if figures:
        from .figures import write_figure1

        datas = sorted({g.data for g in groups})
        for data in datas:
            stem = "figure1" if len(datas) == 1 else f"figure1_{_safe(data)}"
            png, pdf = write_figure1(groups, out, data, stem)
            files[png.name], files[pdf.name] = png, pdf

    return {
        "groups": groups,
        "runs": runs,
        "problems": problems,
        "files": files,
        "markdown": md,
        "paper_markdown": paper_md,
        "incomplete": [g.key for g in groups if g.incomplete],
    }
