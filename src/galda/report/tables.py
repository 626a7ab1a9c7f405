"""Render aggregated groups as Table 1 (Markdown, CSV, LaTeX), the full metrics table, and the
comparison with the paper's numbers."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable

from . import paper as P
from .collect import (
    DOMAINS,
    INCOMPLETE_MARK,
    METHOD_LABELS,
    METRIC_LABELS,
    METRICS,
    MODEL_FREE,
    TARGET_LABEL_MARK,
    Group,
    Stat,
    method_label,
    method_sort_key,
    model_label,
    model_sort_key,
)

# --------------------------------------------------------------------------------------- helpers


def _by_data(groups: list[Group]) -> dict[str, list[Group]]:
    out: dict[str, list[Group]] = {}
    for g in groups:
        out.setdefault(g.data, []).append(g)
    return out


def _models(groups: Iterable[Group]) -> list[str]:
    """Network columns; a model-free row (MODEL_FREE) gets a column only when it is alone."""
    models = {g.model for g in groups}
    networks = models - set(MODEL_FREE)
    return sorted(networks or models, key=model_sort_key)


def _rows(groups: Iterable[Group]) -> list[tuple[str, bool]]:
    return sorted(
        {(g.method, g.uses_target_labels) for g in groups}, key=lambda k: method_sort_key(*k)
    )


def _index(groups: Iterable[Group]) -> dict[tuple[str, str, bool], Group]:
    """(model, method, flag) → group; a model-free group answers for every model."""
    groups = list(groups)
    models = {g.model for g in groups} - set(MODEL_FREE)
    idx = {(g.model, g.method, g.uses_target_labels): g for g in groups}
    for g in groups:
        if g.model in MODEL_FREE:
            for model in models:
                idx.setdefault((model, g.method, g.uses_target_labels), g)
    return idx


def fmt_pct(st: Stat | None, with_n: bool = True) -> str:
    """``84.8 ± 0.7 (n=3)``; ``84.8 (n=1)``; ``—`` when there is nothing to average."""
    if st is None or st.n == 0 or math.isnan(st.mean):
        return "—"
    s = f"{100 * st.mean:.1f}"
    if st.n > 1:
        s += f" ± {100 * st.std:.1f}"
    return s + (f" (n={st.n})" if with_n else "")


def fmt_frac(st: Stat | None) -> str:
    if st is None or st.n == 0 or math.isnan(st.mean):
        return "—"
    return f"{st.mean:.3f}" + (f" ± {st.std:.3f}" if st.n > 1 else "")


def _num(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))


def _seedlist(seeds: Iterable[int | None]) -> str:
    return " ".join(
        "?" if s is None else str(s) for s in sorted(seeds, key=lambda s: (s is None, s or 0))
    )


def _md_table(header: list[str], rows: list[list[str]], align: str = "l") -> str:
    esc = [[c.replace("|", "\\|") for c in r] for r in [header, *rows]]
    lines = [
        "| " + " | ".join(esc[0]) + " |",
        "|" + "|".join([":---"] + ["---:" if align == "r" else ":---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines)


def _columns(models: list[str]) -> list[tuple[str, str]]:
    return [(dom, m) for dom in DOMAINS for m in models]


def _col_title(dom: str, model: str) -> str:
    return f"{dom.capitalize()} {model_label(model)}"


def _notes(groups: list[Group], models: list[str], rows: list[tuple[str, bool]]) -> list[str]:
    idx = _index(groups)
    notes = []
    for model in models:
        for method, utl in rows:
            g = idx.get((model, method, utl))
            name = f"{model_label(model)} · {method_label(method, utl)}"
            if g is None:
                notes.append(f"{name}: not run")
                continue
            mark = f" {INCOMPLETE_MARK}" if g.incomplete else ""
            if g.notes:
                notes.append(f"{name}{mark}: " + "; ".join(g.notes))
    return notes


def expected_seeds_line(groups: list[Group], given: list[int] | None) -> str:
    if given is not None:
        return f"Expected seeds: {_seedlist(given) or 'none'} (--seeds)."
    sets = {tuple(g.expected) for g in groups}
    if len(sets) == 1:
        return (
            f"Expected seeds: {_seedlist(next(iter(sets))) or 'none'} (per group: those its "
            "sweep asked for, or that ran)."
        )
    per = "; ".join(
        f"{model_label(g.model)} · {g.method_label}: {_seedlist(g.expected) or 'none'}"
        for g in groups
    )
    return f"Expected seeds per group (those its sweep asked for, or that ran): {per}."


# --------------------------------------------------------------------------------------- Table 1


def table1_markdown(groups: list[Group], expected_seeds: list[int] | None = None) -> str:
    parts = []
    for data, gs in _by_data(groups).items():
        models, rows, idx = _models(gs), _rows(gs), _index(gs)
        cols = _columns(models)
        body = []
        for method, utl in rows:
            cells = [method_label(method, utl)]
            for dom, model in cols:
                g = idx.get((model, method, utl))
                cell = fmt_pct(g.stats[(dom, "acc")]) if g else "—"
                if g and g.incomplete:
                    cell += f" {INCOMPLETE_MARK}"
                cells.append(cell)
            body.append(cells)
        parts.append(f"## Table 1 — test accuracy (%), data: `{data}`\n")
        parts.append("Mean ± sample standard deviation over seeds (n = seeds averaged).\n")
        parts.append(_md_table(["Method"] + [_col_title(d, m) for d, m in cols], body))
        parts.append("")
        parts.append(expected_seeds_line(gs, expected_seeds))
        notes = _notes(gs, models, rows)
        legend = []
        if any(g.incomplete for g in gs):
            legend.append(
                f"{INCOMPLETE_MARK} some expected seeds are missing or failed; "
                "the mean is over the n seeds that finished"
            )
        if any(g.uses_target_labels for g in gs):
            legend.append(
                f"{TARGET_LABEL_MARK} uses target labels (trained or selected with them): "
                "an upper reference, not unsupervised domain adaptation"
            )
        if notes or legend:
            parts.append("")
            parts.append("Notes:")
            parts += [f"- {x}" for x in legend + notes]
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


#: the columns of :func:`_csv_key` and :func:`_csv_stat` (the stat ones prefixed in Table 1's CSV)
_KEY_COLUMNS = ["data", "model", "method", "method_label", "uses_target_labels", "domain"]
_STAT_COLUMNS = ["mean", "std", "n", "seeds", "missing_seeds", "failed_seeds"]


def _csv_key(g: Group, dom: str) -> list[str]:
    """data, model, method, method_label, uses_target_labels, domain: the first CSV columns."""
    label = METHOD_LABELS.get(g.method, g.method)
    return [g.data, g.model, g.method, label, str(g.uses_target_labels).lower(), dom]


def _csv_stat(g: Group, st: Stat) -> list[object]:
    """mean, std, n, seeds, missing_seeds, failed_seeds."""
    return [
        _num(st.mean),
        _num(st.std),
        st.n,
        _seedlist(st.seeds),
        _seedlist(g.missing),
        _seedlist(g.failed),
    ]


def table1_csv(groups: list[Group]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    stat_columns = [f"acc_{c}" if c in ("mean", "std") else c for c in _STAT_COLUMNS]
    w.writerow([*_KEY_COLUMNS, *stat_columns, "complete"])
    for g in groups:
        for dom in DOMAINS:
            st = g.stats[(dom, "acc")]
            w.writerow([*_csv_key(g, dom), *_csv_stat(g, st), str(not g.incomplete).lower()])
    return buf.getvalue()


_TEX_ESC = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "†": r"$^\dagger$",
    "‡": r"$^\ddagger$",
    "±": r"$\pm$",
    "·": r"$\cdot$",
    "—": "---",
    "Ć": r"\'C",
}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESC.get(c, c) for c in text)


def _tex_cell(st: Stat | None, mark: str = "") -> str:
    if st is None or st.n == 0 or math.isnan(st.mean):
        return "---" + mark
    s = f"${100 * st.mean:.1f}"
    if st.n > 1:
        s += rf" \pm {100 * st.std:.1f}"
    return s + f"$ ({st.n})" + mark


def table1_latex(groups: list[Group], expected_seeds: list[int] | None = None) -> str:
    out = ["% Table 1 (galda.report). Needs \\usepackage{booktabs}.", ""]
    for data, gs in _by_data(groups).items():
        models, rows, idx = _models(gs), _rows(gs), _index(gs)
        k = len(models)
        out.append(r"\begin{table}[ht]")
        out.append(r"\centering")
        out.append(
            r"\caption{Test accuracy (\%) on source and target, mean $\pm$ sample standard "
            r"deviation over seeds (number of seeds in parentheses); data: "
            + tex_escape(data)
            + ".}"
        )
        out.append(r"\label{tab:table1-" + "".join(c if c.isalnum() else "-" for c in data) + "}")
        out.append(r"\begin{tabular}{l" + "c" * (2 * k) + "}")
        out.append(r"\toprule")
        out.append(
            " & " + rf"\multicolumn{{{k}}}{{c}}{{Source}} & \multicolumn{{{k}}}{{c}}{{Target}} \\"
        )
        out.append(rf"\cmidrule(lr){{2-{k + 1}}}\cmidrule(lr){{{k + 2}-{2 * k + 1}}}")
        out.append(
            "Method & " + " & ".join(tex_escape(model_label(m)) for m in models * 2) + r" \\"
        )
        out.append(r"\midrule")
        prev_utl = None
        for method, utl in rows:
            if utl and prev_utl is False:  # rule off the rows that used target labels
                out.append(r"\midrule")
            prev_utl = utl
            cells = [tex_escape(method_label(method, utl))]
            for dom, model in _columns(models):
                g = idx.get((model, method, utl))
                mark = r"$^\dagger$" if g and g.incomplete else ""
                cells.append(_tex_cell(g.stats[(dom, "acc")] if g else None, mark))
            out.append(" & ".join(cells) + r" \\")
        out.append(r"\bottomrule")
        out.append(r"\end{tabular}")
        notes = _notes(gs, models, rows)
        foot = [tex_escape(expected_seeds_line(gs, expected_seeds))]
        if any(g.incomplete for g in gs):
            foot.append(r"$^\dagger$ some expected seeds are missing or failed.")
        if any(g.uses_target_labels for g in gs):
            foot.append(
                r"$^\ddagger$ uses target labels: an upper reference, not unsupervised "
                r"domain adaptation."
            )
        foot += [tex_escape(n) for n in notes]
        out.append(r"\par\smallskip\parbox{\linewidth}{\footnotesize " + r" \\ ".join(foot) + "}")
        out.append(r"\end{table}")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------- full metrics


def metrics_markdown(groups: list[Group]) -> str:
    parts = []
    for data, gs in _by_data(groups).items():
        header = ["Model", "Method", "Domain"] + [METRIC_LABELS[m] for m in METRICS] + ["n"]
        body = []
        for g in gs:
            for dom in DOMAINS:
                mark = f" {INCOMPLETE_MARK}" if g.incomplete else ""
                body.append(
                    [model_label(g.model), g.method_label + mark, dom]
                    + [fmt_frac(g.stats[(dom, m)]) for m in METRICS]
                    + [str(g.stats[(dom, "acc")].n)]
                )
        parts.append(f"## All test metrics, data: `{data}`\n")
        parts.append(
            "Fractions (not percent), mean ± sample std over seeds; Brier: lower is "
            "better. Positive class = merger, threshold 0.5.\n"
        )
        parts.append(_md_table(header, body))
        notes = _notes(gs, _models(gs), _rows(gs))
        if notes:
            parts.append("\nNotes:")
            parts += [f"- {n}" for n in notes]
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def metrics_csv(groups: list[Group]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*_KEY_COLUMNS, "metric", *_STAT_COLUMNS])
    for g in groups:
        for dom in DOMAINS:
            for m in METRICS:
                w.writerow([*_csv_key(g, dom), m, *_csv_stat(g, g.stats[(dom, m)])])
    return buf.getvalue()


# ------------------------------------------------------------------------------ paper comparison


def _paper_rows(gs: list[Group]) -> list[tuple[str, bool]]:
    rows = set(_rows(gs)) | {(m, False) for m in P.TABLE1}
    return sorted(rows, key=lambda k: method_sort_key(*k))


def paper_markdown(groups: list[Group]) -> str:
    parts = []
    for data, gs in _by_data(groups).items():
        models = sorted(set(_models(gs)) | {"deepmerge", "resnet18"}, key=model_sort_key)
        idx, cols = _index(gs), _columns(models)
        body = []
        for method, utl in _paper_rows(gs):
            label = method_label(method, utl)
            ours = [label + " — ours"]
            t1 = [label + " — paper, Table 1"]
            ten = [label + " — paper, 10 seeds"]
            for dom, model in cols:
                g = idx.get((model, method, utl))
                cell = fmt_pct(g.stats[(dom, "acc")]) if g else "—"
                ours.append(cell + (f" {INCOMPLETE_MARK}" if g and g.incomplete else ""))
                v = None if utl else P.table1(method, dom, model)
                t1.append("—" if v is None else f"{v:.1f}")
                ms = None if utl else P.ten_seeds(method, dom, model)
                ten.append("—" if ms is None else f"{ms[0]:.1f} ± {ms[1]:.1f} (n=10)")
            body.append(ours)
            if method in P.TABLE1 and not utl:
                body.append(t1)
                if any(c != "—" for c in ten[1:]):
                    body.append(ten)
        parts.append(f"## Ours vs the paper — test accuracy (%), data: `{data}`\n")
        parts.append(
            f"Paper: {P.CITATION}, Table 1 (one run per cell) and the 10-seed DeepMerge "
            "means. The paper trained on its own full-size data; runs on a smaller preset "
            "are not expected to match.\n"
        )
        parts.append(_md_table(["Method"] + [_col_title(d, m) for d, m in cols], body))
        ref = P.DEEPMERGE_I
        parts.append(
            f"\nReference (DeepMerge I, no adaptation, trained and tested within one domain): "
            f"pristine {ref['pristine']['acc']:.1f} % (AUC {ref['pristine']['auroc']:.3f}), "
            f"noisy {ref['noisy']['acc']:.1f} % (AUC {ref['noisy']['auroc']:.3f}).\n"
        )
    return "\n".join(parts).rstrip() + "\n"


def paper_csv(groups: list[Group]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "data",
            "method",
            "uses_target_labels",
            "domain",
            "model",
            "ours_mean_pct",
            "ours_std_pct",
            "n",
            "paper_table1_pct",
            "paper_10seed_mean_pct",
            "paper_10seed_std_pct",
            "ours_minus_table1_pct",
        ]
    )
    for data, gs in _by_data(groups).items():
        models = sorted(set(_models(gs)) | {"deepmerge", "resnet18"}, key=model_sort_key)
        idx = _index(gs)
        for method, utl in _paper_rows(gs):
            for dom, model in _columns(models):
                g = idx.get((model, method, utl))
                st = g.stats[(dom, "acc")] if g else None
                mean = 100 * st.mean if st and st.n else math.nan
                std = 100 * st.std if st and st.n > 1 else math.nan
                t1 = None if utl else P.table1(method, dom, model)
                ten = None if utl else P.ten_seeds(method, dom, model)
                w.writerow(
                    [
                        data,
                        method,
                        str(utl).lower(),
                        dom,
                        model,
                        _num(mean),
                        _num(std),
                        st.n if st else 0,
                        _num(t1),
                        _num(ten[0] if ten else None),
                        _num(ten[1] if ten else None),
                        _num(mean - t1 if t1 is not None else None),
                    ]
                )
    return buf.getvalue()
