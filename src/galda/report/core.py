"""``build_report``: collect results, write tables and Figure 1."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from galda.errors import GaldaError, os_error_hint
from galda.results import atomic_write_text

from . import tables
from .collect import Group, Run, aggregate, find_sweeps, load_runs, parse_seeds, sweep_expectations


class NoResultsError(GaldaError, RuntimeError):
    """No usable results.json was found under the given folders."""


class ReportWriteError(GaldaError):
    """The report's output folder or one of its files cannot be written."""


def _write_text(path: Path, text: str) -> Path:
    try:
        return atomic_write_text(path, text)
    except OSError as err:
        raise ReportWriteError(f"{path}: cannot write: {os_error_hint(err)} (--out)") from err


def _output_folder(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise ReportWriteError(f"{out}: --out is a file; give a folder for the report")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ReportWriteError(
            f"{out}: cannot create the report folder: {os_error_hint(err)} (--out)"
        ) from err
    return out


def smoke_note(smoke: list[Run], limit: int = 20) -> str:
    """A paragraph naming the smoke runs left out of every table ("" when there are none)."""
    if not smoke:
        return ""
    lines = [
        f"- {r.run_dir} ({', '.join(r.raw.get('smoke_reasons') or ['status: smoke'])})"
        for r in smoke[:limit]
    ]
    if len(smoke) > limit:
        lines.append(f"- ... and {len(smoke) - limit} more")
    return (
        f"\n{len(smoke)} smoke run(s) left out of every table (fast_dev_run, "
        "limit_*_batches or max_steps: not full runs):\n" + "\n".join(lines) + "\n"
    )


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _no_results_message(
    folders: list[Path], runs: list[Run], smoke: list[Run], problems: list[str]
) -> str:
    """Why there is nothing to report: no results, or only smoke runs; plus what was unreadable."""
    where = ", ".join(str(d) for d in folders) or "(no folders given)"
    msg = (
        f"no results.json found under: {where}"
        if not runs
        else (
            f"only smoke runs under {where} ({len(smoke)}: fast_dev_run, limit_*_batches or "
            "max_steps); tables hold full runs only"
        )
    )
    absent = [str(d) for d in folders if not d.exists()]
    if absent:
        msg += f" (does not exist: {', '.join(absent)})"
    if problems:
        msg += f"; {len(problems)} unreadable: " + "; ".join(problems[:5])
    return msg


def _write_tables(
    out: Path,
    groups: list[Group],
    seeds: list[int] | None,
    notes: str,
    smoke: list[Run],
    paper: bool,
) -> tuple[dict[str, Path], str, str | None]:
    """Table 1 and the metrics table (md, csv, tex), the paper comparison with ``paper``.

    ``notes`` (unreadable files, sweep problems, smoke runs) follow Table 1's markdown. Returns
    the files written, Table 1's markdown and the paper comparison's markdown (None without
    ``paper``).
    """
    files: dict[str, Path] = {}
    md = tables.table1_markdown(groups, seeds) + notes
    files["table1.md"] = _write_text(out / "table1.md", md)
    files["table1.csv"] = _write_text(out / "table1.csv", tables.table1_csv(groups))
    files["table1.tex"] = _write_text(out / "table1.tex", tables.table1_latex(groups, seeds))
    files["metrics.md"] = _write_text(
        out / "metrics.md", tables.metrics_markdown(groups) + smoke_note(smoke)
    )
    files["metrics.csv"] = _write_text(out / "metrics.csv", tables.metrics_csv(groups))
    paper_md = None
    if paper:
        paper_md = tables.paper_markdown(groups)
        files["table1_vs_paper.md"] = _write_text(out / "table1_vs_paper.md", paper_md)
        files["table1_vs_paper.csv"] = _write_text(
            out / "table1_vs_paper.csv", tables.paper_csv(groups)
        )
    return files, md, paper_md


def _write_figures(out: Path, groups: list[Group]) -> dict[str, Path]:
    """Figure 1 (png and pdf) per data set with results: ``figure1`` or ``figure1_<data>``."""
    from .figures import write_figure1

    files: dict[str, Path] = {}
    datas = sorted({g.data for g in groups if g.used})
    for data in datas:
        stem = "figure1" if len(datas) == 1 else f"figure1_{_safe(data)}"
        try:
            png, pdf = write_figure1(groups, out, data, stem)
        except OSError as err:
            raise ReportWriteError(
                f"{out / stem}.png: cannot write: {os_error_hint(err)} (--out)"
            ) from err
        files[png.name], files[pdf.name] = png, pdf
    return files


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

    Expected seeds are per group (see :func:`galda.report.collect.aggregate`); smoke runs are
    left out of every table and named; an unreadable ``results.json`` is named (and, when its
    job folder says which group it belongs to, counted as a failed seed there).

    Returns ``{"groups", "runs", "problems", "smoke", "files", "markdown", "paper_markdown",
    "incomplete"}``. Raises :class:`ReportWriteError` when ``out`` cannot be written.
    """
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    folders = [Path(d) for d in dirs]
    seeds = parse_seeds(expected_seeds)  # type: ignore[arg-type]
    present = [d for d in folders if d.exists()]
    runs, problems = load_runs(present)
    sweeps, sweep_problems = sweep_expectations(find_sweeps(present))
    smoke = [r for r in runs if r.smoke]
    if len(smoke) == len(runs) and not sweeps:
        raise NoResultsError(_no_results_message(folders, runs, smoke, problems))
    problems += [f"folder does not exist: {d}" for d in folders if not d.exists()]

    groups = aggregate(runs, seeds, sweeps)
    out = _output_folder(Path(out))
    notes = ""
    if problems:
        notes += "\nFiles that could not be read:\n" + "".join(f"- {p}\n" for p in problems)
    notes += smoke_note(smoke)
    if sweep_problems:
        notes += "\n" + "".join(f"- {p}\n" for p in sweep_problems)
    files, md, paper_md = _write_tables(out, groups, seeds, notes, smoke, paper)
    from .calibration import write_calibration

    files.update(write_calibration([r for r in runs if not r.smoke], out))
    if figures:
        files.update(_write_figures(out, groups))
    return {
        "groups": groups,
        "runs": runs,
        "problems": problems,
        "smoke": smoke,
        "files": files,
        "markdown": md,
        "paper_markdown": paper_md,
        "incomplete": [g.key for g in groups if g.incomplete],
    }
