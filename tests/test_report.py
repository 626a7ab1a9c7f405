"""galda.report: tables, notes on missing/failed seeds, paper comparison, figures, CLI."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from galda.metrics import binary_confusion, binary_metrics
from galda.report import build_report, parse_seeds
from galda.report.__main__ import main

MODELS = ("deepmerge", "resnet18")
METHODS = ("baseline", "mmd", "dann")
SEEDS = (1, 2, 3)
# target quality per method (probit of the accuracy), roughly the paper's picture
QUALITY = {"baseline": (1.0, 0.15), "mmd": (1.1, 0.7), "dann": (1.15, 0.8), "oracle": (1.1, 1.2)}
MISSING = ("deepmerge", "mmd", 3)  # never written
FAILED = ("resnet18", "dann", 2)  # status "failed"


def write_run(
    root: Path,
    data: str,
    model: str,
    method: str,
    seed: int,
    *,
    failed: bool = False,
    target_labels: bool = True,
    n: int = 240,
) -> Path:
    run = root / f"data={data},method={method},model={model},seed={seed}"
    run.mkdir(parents=True, exist_ok=True)
    base = {
        "schema_version": 1,
        "data": data,
        "model": model,
        "method": method,
        "seed": seed,
        "uses_target_labels": method == "oracle",
        "run_dir": str(run),
        "overrides": [f"data={data}", f"model={model}", f"method={method}", f"seed={seed}"],
    }
    if failed:
        base.update(status="failed", error="RuntimeError: CUDA out of memory\nTraceback ...")
        (run / "results.json").write_text(json.dumps(base))
        return run
    rng = np.random.default_rng(zlib.crc32(f"{data}/{model}/{method}/{seed}".encode()))
    res = dict(
        base,
        status="complete",
        error=None,
        selection={"monitor": "val/source/acc", "mode": "max"},
        epochs_run=3,
        best_epoch=2,
        wall_time_s=1.0,
        device="cpu",
        git_commit=None,
        versions={},
        checkpoint=None,
        predictions="predictions.npz",
        confusion={},
    )
    arrays = {}
    for dom, q in zip(("source", "target"), QUALITY[method]):
        y = rng.integers(0, 2, n)
        logit = (q + 0.1 * rng.standard_normal()) * (2 * y - 1) + rng.standard_normal(n)
        p = 1 / (1 + np.exp(-logit))
        arrays[f"{dom}_probs"] = p.astype(np.float32)
        if dom == "target" and not target_labels:
            for k in ("acc", "precision", "recall", "f1", "brier", "auroc"):
                res[f"test/{dom}/{k}"] = None
            continue
        arrays[f"{dom}_labels"] = y
        for k, v in binary_metrics(p, y).items():
            res[f"test/{dom}/{k}"] = v
        res["confusion"][dom] = binary_confusion(p, y)
    np.savez(run / "predictions.npz", **arrays)
    (run / "results.json").write_text(json.dumps(res))
    return run


def write_sweep(
    folder: Path, data: str, model: str, params: dict[str, str], task: tuple[str, ...] = ()
) -> Path:
    """The parts of a Hydra ``multirun.yaml`` the report reads (the sweep's grid)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    basic = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    cfg = {
        "hydra": {
            "sweeper": {"_target_": basic, "params": params},
            "overrides": {"task": list(task)},
        },
        "data": {"name": data},
        "model": {"name": model},
        "method": {"name": "baseline"},
        "seed": 1,
    }
    path = folder / "multirun.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def make_runs(root: Path, data: str = "small", oracle: bool = True) -> Path:
    for model in MODELS:
        # each model's sweep asked for every method and seed (one of them never wrote results)
        write_sweep(
            root / "multirun" / model,
            data,
            model,
            {"method": "baseline,mmd,dann"},
            task=(f"model={model}", "seed=1,2,3"),
        )
        for method in METHODS:
            for seed in SEEDS:
                if (model, method, seed) == MISSING:
                    continue
                write_run(
                    root / "multirun" / model,
                    data,
                    model,
                    method,
                    seed,
                    failed=(model, method, seed) == FAILED,
                )
    if oracle:
        for seed in SEEDS:
            write_run(root / "oracle_runs", data, "deepmerge", "oracle", seed)
    return root


def read_json_runs(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("results.json"))]


def md_row(md: str, label: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in\n{md}")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = make_runs(tmp_path_factory.mktemp("runs"))
    out = root / "report"
    rep = build_report([root], out, paper=True)
    return root, out, rep


def test_table1_values_match_numpy(report):
    root, out, rep = report
    raw = [r for r in read_json_runs(root) if r["status"] == "complete"]
    with open(out / "table1.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * (2 * 3 + 1)  # (models × methods + oracle) × domains
    md = (out / "table1.md").read_text()
    for model in MODELS:
        for method in (*METHODS, "oracle"):
            vals = {
                d: np.array(
                    [
                        r[f"test/{d}/acc"]
                        for r in raw
                        if r["model"] == model and r["method"] == method
                    ]
                )
                for d in ("source", "target")
            }
            if vals["source"].size == 0:
                continue
            for dom, v in vals.items():
                row = next(
                    r
                    for r in rows
                    if (r["model"], r["method"], r["domain"]) == (model, method, dom)
                )
                assert int(row["n"]) == v.size
                assert float(row["acc_mean"]) == pytest.approx(v.mean(), abs=1e-12)
                assert float(row["acc_std"]) == pytest.approx(v.std(ddof=1), abs=1e-12)
                expected = [int(s) for s in row["seeds"].split()]
                assert len(expected) == v.size
    # the Markdown cell for DeepMerge / MMD (seed 3 missing): n=2 and marked
    v = np.array(
        [r["test/source/acc"] for r in raw if r["model"] == "deepmerge" and r["method"] == "mmd"]
    )
    cell = md_row(md, "MMD")[1]
    assert cell == f"{100 * v.mean():.1f} ± {100 * v.std(ddof=1):.1f} (n=2) †"
    assert md_row(md, "No domain adaptation")[1].endswith("(n=3)")
    header = md_row(md, "Method")
    assert header == [
        "Method",
        "Source DeepMerge",
        "Source ResNet18",
        "Target DeepMerge",
        "Target ResNet18",
    ]
    assert [
        r[0] for r in (md_row(md, m) for m in ("No domain adaptation", "MMD", "Adversarial (DANN)"))
    ]  # paper's row labels
    # full metrics table: six metrics per group and domain
    with open(out / "metrics.csv", newline="") as fh:
        mrows = list(csv.DictReader(fh))
    assert len(mrows) == 7 * 2 * 6
    auc = [
        r
        for r in mrows
        if (r["model"], r["method"], r["domain"], r["metric"])
        == ("resnet18", "baseline", "target", "auroc")
    ][0]
    v = np.array(
        [
            r["test/target/auroc"]
            for r in raw
            if r["model"] == "resnet18" and r["method"] == "baseline"
        ]
    )
    assert float(auc["mean"]) == pytest.approx(v.mean())
    assert "Brier" in (out / "metrics.md").read_text()


def test_missing_and_failed_seeds_are_named(report):
    _, out, rep = report
    md = (out / "table1.md").read_text()
    notes = md.split("Notes:")[1]
    assert re.search(r"DeepMerge · MMD †: seed\(s\) 3 missing", notes)
    assert re.search(
        r"ResNet18 · Adversarial \(DANN\) †: seed 2 failed: RuntimeError: CUDA out of "
        r"memory",
        notes,
    )
    assert "ResNet18 · Oracle (trained with target labels) ‡: not run" in notes
    assert md_row(md, "Adversarial (DANN)")[2].endswith("(n=2) †")
    assert not md_row(md, "Adversarial (DANN)")[1].endswith("†")
    with open(out / "table1.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    mmd = next(r for r in rows if (r["model"], r["method"]) == ("deepmerge", "mmd"))
    assert mmd["missing_seeds"] == "3" and mmd["complete"] == "false"
    dann = next(r for r in rows if (r["model"], r["method"]) == ("resnet18", "dann"))
    assert dann["failed_seeds"] == "2" and dann["seeds"] == "1 3"
    assert len(rep["incomplete"]) == 2


def test_oracle_visibly_labelled(report):
    _, out, _ = report
    md = (out / "table1.md").read_text()
    row = md_row(md, "Oracle (trained with target labels) ‡")
    assert row[1].endswith("(n=3)") and row[2] == "—"
    assert "‡ uses target labels" in md
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert lines[-1].startswith("| Oracle")  # ceiling row last
    tex = (out / "table1.tex").read_text()
    assert r"Oracle (trained with target labels) $^\ddagger$" in tex
    assert "Oracle" in (out / "metrics.md").read_text()


def test_latex_and_csv_parse(report):
    _, out, _ = report
    tex = (out / "table1.tex").read_text()
    for env in ("table", "tabular"):
        assert tex.count(rf"\begin{{{env}}}") == tex.count(rf"\end{{{env}}}") == 1
    assert all(k in tex for k in (r"\toprule", r"\midrule", r"\bottomrule", r"\cmidrule"))
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule")[0]
    rows = [ln for ln in body.splitlines() if ln.rstrip().endswith(r"\\")]
    assert len(rows) == 4
    for ln in rows:
        assert len(re.findall(r"(?<!\\)&", ln)) == 4, ln
    assert r"\pm" in tex and "_" not in tex.replace(r"\_", "")
    for name in ("table1.csv", "metrics.csv", "table1_vs_paper.csv"):
        with open(out / name, newline="") as fh:
            rows = list(csv.reader(fh))
        assert len(rows) > 1 and len({len(r) for r in rows}) == 1, name


def test_paper_numbers_beside_ours(report):
    _, out, rep = report
    md = (out / "table1_vs_paper.md").read_text()
    assert rep["paper_markdown"] == md
    paper_row = md_row(md, "No domain adaptation — paper, Table 1")
    assert paper_row[1:] == ["84.8", "81.1", "52.0", "60.5"]
    assert md_row(md, "Adversarial (DANN) — paper, 10 seeds")[3] == "78.9 ± 0.5 (n=10)"
    assert md_row(md, "MMD — ours")[1].endswith("(n=2) †")
    assert "— paper" not in md_row(md, "Oracle (trained with target labels) ‡ — ours")[0]
    assert "Oracle (trained with target labels) ‡ — paper, Table 1" not in md
    with open(out / "table1_vs_paper.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    r = next(
        r
        for r in rows
        if (r["method"], r["domain"], r["model"]) == ("baseline", "source", "deepmerge")
    )
    assert float(r["paper_table1_pct"]) == 84.8 and float(r["paper_10seed_mean_pct"]) == 83.6
    assert float(r["ours_minus_table1_pct"]) == pytest.approx(float(r["ours_mean_pct"]) - 84.8)


def test_figures_written(report):
    _, out, rep = report
    for name in ("figure1.png", "figure1.pdf"):
        p = out / name
        assert p.stat().st_size > 10_000 and name in rep["files"]
    assert (out / "figure1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "figure1.pdf").read_bytes()[:5] == b"%PDF-"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_expected_seeds_and_duplicates(tmp_path):
    root = tmp_path / "runs"
    for seed in (1, 2):
        write_run(root / "a", "small", "deepmerge", "baseline", seed)
    write_run(root / "b", "small", "deepmerge", "baseline", 2)  # a rerun of seed 2
    write_run(root / "a", "small", "deepmerge", "baseline", 7)  # outside --seeds
    rep = build_report([root], tmp_path / "out", expected_seeds="1-3", figures=False)
    (g,) = rep["groups"]
    assert g.stats[("source", "acc")].n == 2 and g.missing == [3] and g.ignored == [7]
    md = rep["markdown"]
    assert "seed(s) 3 missing" in md and "seed 2: 2 complete results found" in md
    assert "seed(s) 7 outside the expected seeds, ignored" in md
    assert "Expected seeds: 1 2 3 (--seeds)" in md


def test_several_data_sets_and_unlabelled_target(tmp_path):
    root = tmp_path / "runs"
    for seed in (1, 2):
        write_run(root, "small", "deepmerge", "dann", seed)
        write_run(root, "paper", "deepmerge", "dann", seed, target_labels=(seed == 1))
    rep = build_report([root], tmp_path / "out", figures=False)
    md = rep["markdown"]
    assert "data: `small`" in md and "data: `paper`" in md
    assert md.count("| Method |") == 2
    g = next(g for g in rep["groups"] if g.data == "paper")
    assert g.stats[("target", "acc")].n == 1 and g.stats[("source", "acc")].n == 2
    assert math.isnan(g.stats[("target", "acc")].std)
    assert "target accuracy available for 1 of 2 runs" in md
    tex = (tmp_path / "out" / "table1.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 2


def test_cli(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no results.json found" in err and str(empty) in err
    root = tmp_path / "runs"
    write_run(root, "small", "deepmerge", "baseline", 1)
    write_run(root, "small", "deepmerge", "mmd", 2)
    code = main([str(root), "--out", str(tmp_path / "o"), "--no-figures", "--paper"])
    captured = capsys.readouterr()
    assert code == 0
    assert "| Method |" in captured.out and "84.8" in captured.out
    assert str(tmp_path / "o" / "table1.tex") in captured.out
    assert not (tmp_path / "o" / "figure1.png").exists()
    # each group has the one seed it ran: complete, so --strict passes
    assert main([str(root), "--out", str(tmp_path / "o"), "--no-figures", "--strict"]) == 0
    write_run(root, "small", "deepmerge", "mmd", 3, failed=True)
    assert main([str(root), "--out", str(tmp_path / "o"), "--no-figures", "--strict"]) == 2
    with pytest.raises(SystemExit):
        main([str(root), "--seeds", "x-y"])


def test_module_entry_point_on_empty_dir(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "galda.report", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "no results.json found" in res.stderr


def test_parse_seeds():
    assert parse_seeds("1-10") == list(range(1, 11))
    assert parse_seeds("1,2,5") == [1, 2, 5]
    assert parse_seeds("1-3, 7") == [1, 2, 3, 7]
    assert parse_seeds([3, 1]) == [1, 3]
    assert parse_seeds(None) is None
    with pytest.raises(ValueError):
        parse_seeds("5-1")


# ------------------------------------------------------- unreadable files, smoke runs, seed groups


def _job_config(run: Path, data: str, model: str, method: str, seed: int) -> None:
    """Hydra's saved config of a job folder (what the report falls back on)."""
    import yaml

    (run / ".hydra").mkdir(parents=True, exist_ok=True)
    (run / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "data": {"name": data},
                "model": {"name": model},
                "method": {"name": method, "needs_target_labels": False},
                "seed": seed,
                "selection": {"monitor": "val/source/acc"},
            }
        )
    )


def make_smoke(run: Path) -> None:
    res = json.loads((run / "results.json").read_text())
    res["status"] = "smoke"
    res["smoke_reasons"] = ["trainer.fast_dev_run=True"]
    (run / "results.json").write_text(json.dumps(res))


def test_corrupt_file_named_smoke_excluded_strict_fails(tmp_path, capsys):
    root = tmp_path / "sweep"
    write_sweep(root, "small", "deepmerge", {"method": "baseline,mmd", "seed": "1,2"})
    for method in ("baseline", "mmd"):
        for seed in (1, 2):
            run = write_run(root, "small", "deepmerge", method, seed)
            _job_config(run, "small", "deepmerge", method, seed)
    corrupt = root / "data=small,method=mmd,model=deepmerge,seed=2" / "results.json"
    corrupt.write_text(corrupt.read_text()[:100])  # truncated mid-write by hand
    smoke = write_run(tmp_path / "debug", "small", "deepmerge", "dann", 1)
    make_smoke(smoke)
    out = tmp_path / "out"
    rep = build_report([root, tmp_path / "debug"], out, figures=False)
    md = (out / "table1.md").read_text()
    # the corrupt file is named, and its seed counts as failed in the MMD row (not dropped)
    assert str(corrupt) in md and "Files that could not be read" in md
    assert md_row(md, "MMD")[1].endswith("(n=1) †")
    assert re.search(r"MMD †: seed 2 failed: unreadable results.json", md)
    # the smoke run is in no table, and the report says which and why
    assert "Adversarial (DANN)" not in md.split("smoke run(s)")[0]
    assert "Adversarial" not in (out / "table1.csv").read_text()
    assert "Adversarial" not in (out / "metrics.md").read_text().split("smoke run(s)")[0]
    assert "1 smoke run(s) left out of every table" in md and str(smoke) in md
    assert "trainer.fast_dev_run=True" in md
    assert [r.run_dir for r in rep["smoke"]] == [smoke]
    args = [str(root), str(tmp_path / "debug"), "--out", str(out), "--no-figures"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert str(corrupt) in err and "1 smoke run(s)" in err
    assert main([*args, "--strict"]) == 2
    # with the corrupt file repaired and the seed complete, --strict passes
    write_run(root, "small", "deepmerge", "mmd", 2)
    assert main([*args, "--strict"]) == 0


def test_unreadable_file_without_job_config_still_named(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "small", "deepmerge", "baseline", 1)
    bad = root / "elsewhere" / "results.json"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xfe not json")
    rep = build_report([root], tmp_path / "out", figures=False)
    assert any(str(bad) in p for p in rep["problems"])
    assert str(bad) in rep["markdown"]
    assert main([str(root), "--out", str(tmp_path / "out"), "--no-figures", "--strict"]) == 2


def test_expected_seeds_are_per_group(tmp_path):
    root = tmp_path / "runs"
    for seed in (1, 2, 3):
        write_run(root / "a", "small", "deepmerge", "baseline", seed)
    write_run(root / "b", "small", "deepmerge", "mmd", 1)  # asked for seed 1 only
    rep = build_report([root], tmp_path / "out", figures=False)
    assert rep["incomplete"] == []
    groups = {g.method: g for g in rep["groups"]}
    assert groups["baseline"].expected == [1, 2, 3] and groups["mmd"].expected == [1]
    assert "missing" not in rep["markdown"]
    assert "Expected seeds per group" in rep["markdown"]
    # a sweep that asked for mmd seeds 1-3 makes 2 and 3 missing for mmd only
    write_sweep(root / "b", "small", "deepmerge", {"method": "mmd", "seed": "range(1,4)"})
    rep = build_report([root], tmp_path / "out", figures=False)
    groups = {g.method: g for g in rep["groups"]}
    assert groups["mmd"].missing == [2, 3] and groups["baseline"].missing == []


def test_swept_method_without_any_results_keeps_its_row(tmp_path):
    root = tmp_path / "sweep"
    write_sweep(root, "small", "deepmerge", {"method": "baseline,dann"}, task=("seed=1,2",))
    for seed in (1, 2):
        write_run(root, "small", "deepmerge", "baseline", seed)
    rep = build_report([root], tmp_path / "out", figures=True)
    md = rep["markdown"]
    assert md_row(md, "Adversarial (DANN)")[1] == "— †"
    assert "Adversarial (DANN) †: seed(s) 1, 2 missing" in md
    assert (tmp_path / "out" / "figure1.png").exists()


def test_target_label_mark_follows_the_flag(tmp_path):
    root = tmp_path / "runs"
    for seed in (1, 2):
        run = write_run(root, "small", "deepmerge", "dann", seed)
        res = json.loads((run / "results.json").read_text())
        res["uses_target_labels"] = True  # e.g. selected on val/target/acc
        res["uses_target_images"] = True
        (run / "results.json").write_text(json.dumps(res))
        run = write_run(root / "old", "small", "deepmerge", "mmd", seed)
        res = json.loads((run / "results.json").read_text())
        del res["uses_target_labels"]  # written before the flag existed
        res["selection"]["monitor"] = "val/target/acc"
        (run / "results.json").write_text(json.dumps(res))
        write_run(root, "small", "deepmerge", "baseline", seed)
    rep = build_report([root], tmp_path / "out", figures=False)
    md = rep["markdown"]
    assert md_row(md, "Adversarial (DANN) (uses target labels) ‡")[1].endswith("(n=2)")
    assert md_row(md, "MMD (uses target labels) ‡")[1].endswith("(n=2)")
    assert md_row(md, "No domain adaptation")[1].endswith("(n=2)")
    runs = {r.method: r for r in rep["runs"]}
    assert runs["dann"].uses_target_images and not runs["baseline"].uses_target_images


def test_old_smoke_runs_recognised_from_overrides(tmp_path):
    root = tmp_path / "runs"
    for seed in (1, 2):
        write_run(root, "small", "deepmerge", "baseline", seed)
    run = write_run(root / "old", "small", "deepmerge", "baseline", 3)
    res = json.loads((run / "results.json").read_text())
    res["overrides"] += ["trainer.limit_train_batches=2"]  # status "complete", written before
    (run / "results.json").write_text(json.dumps(res))
    rep = build_report([root], tmp_path / "out", figures=False)
    (g,) = rep["groups"]
    assert g.stats[("source", "acc")].n == 2 and g.expected == [1, 2]
    assert "trainer.limit_train_batches=2" in rep["markdown"]


def test_only_smoke_runs_is_an_error(tmp_path, capsys):
    run = write_run(tmp_path / "runs", "small", "deepmerge", "baseline", 1)
    make_smoke(run)
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2
    assert "only smoke runs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
