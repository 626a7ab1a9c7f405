"""Find ``results.json`` files, read them, and aggregate runs over seeds.

Groups are keyed by (data, model, method, uses_target_labels): a run that used target labels (the
oracle, or target-label checkpoint selection) is never averaged with label-free runs of the same
method. Per group and seed the newest complete run is used; a seed with only failed (or unreadable)
runs is *failed*; an expected seed with no results at all is *missing*. Both are named in the notes.

Expected seeds are per group: those the group's sweep asked for (read from the sweep's
``multirun.yaml``) and those it ran, unless ``--seeds`` fixes them for every group. Smoke runs
(``status: smoke``: fast_dev_run, limit_*_batches, max_steps) are left out of every group.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from galda.results import RESULTS_FILE, read_results

SWEEP_FILE = "multirun.yaml"
DOMAINS = ("source", "target")
METRICS = ("acc", "precision", "recall", "f1", "brier", "auroc")

# Table rows and Figure 1 bars follow this order; methods not listed come after, by name.
METHOD_ORDER = (
    "baseline",
    "mmd",
    "dann",
    "adabn",
    "bnmix",
    "coral",
    "cdan",
    "mcc",
    "selftrain",
    "gini_m20_a",
    "oracle_joint",
    "oracle",
)
METHOD_LABELS = {
    "baseline": "No domain adaptation",
    "mmd": "MMD",
    "dann": "Adversarial (DANN)",
    "adabn": "AdaBN",
    "bnmix": "Mixed-batch BN, no transfer loss (control)",
    "gini_m20_a": "Gini–M20 + A (classical)",
    "coral": "Deep CORAL",
    "cdan": "Conditional adversarial (CDAN)",
    "mcc": "Minimum class confusion (MCC)",
    "selftrain": "Self-training (pseudo-labels)",
    "oracle": "Oracle (trained with target labels)",
    "oracle_joint": "Joint oracle (source + target labels)",
}
MODEL_ORDER = ("deepmerge", "resnet18")
#: rows that belong to no network (the classical Gini–M20 + A row): shown in every model column
MODEL_FREE = ("classical",)
MODEL_LABELS = {"deepmerge": "DeepMerge", "resnet18": "ResNet18"}
METRIC_LABELS = {
    "acc": "Accuracy",
    "precision": "Precision",
    "recall": "Recall",
    "f1": "F1",
    "brier": "Brier",
    "auroc": "AUC",
}

TARGET_LABEL_MARK = "‡"
INCOMPLETE_MARK = "†"

# overrides that legitimately differ between seeds of one group
_SEED_LIKE = re.compile(r"^\+*(seed|hydra\.|paths\.|logger|trainer\.devices|trainer\.accelerator)")


@dataclass
class Run:
    path: Path  # the results.json
    data: str
    model: str
    method: str
    seed: int | None
    status: str
    error: str | None
    uses_target_labels: bool
    metrics: dict[tuple[str, str], float]
    raw: dict[str, Any]
    mtime: float
    uses_target_images: bool = True

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def smoke(self) -> bool:
        """A smoke test (fast_dev_run, limited batches or steps): never in a table."""
        return self.status == "smoke"

    @property
    def predictions_path(self) -> Path | None:
        name = self.raw.get("predictions")
        if not name:
            return None
        p = Path(name)
        p = p if p.is_absolute() else self.run_dir / p
        return p if p.is_file() else None

    @property
    def config_overrides(self) -> tuple[str, ...]:
        ov = self.raw.get("overrides") or []
        return tuple(sorted(str(o) for o in ov if not _SEED_LIKE.match(str(o))))


def _float(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _seed(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def find_results(dirs: Iterable[str | os.PathLike]) -> list[Path]:
    """Every ``results.json`` under the folders (recursively; a file path is taken as is)."""
    found: dict[Path, None] = {}
    for d in dirs:
        d = Path(d)
        if d.is_file():
            found[d.resolve()] = None
            continue
        for root, subdirs, files in os.walk(d, followlinks=False):
            subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
            if RESULTS_FILE in files:
                found[(Path(root) / RESULTS_FILE).resolve()] = None
    return sorted(found)


def _override_trainer(overrides: Iterable[Any]) -> dict[str, Any]:
    """``trainer.*`` values from a run's override list (old results without a config)."""
    import yaml

    out: dict[str, Any] = {}
    for o in overrides:
        key, sep, value = str(o).lstrip("+~").partition("=")
        if sep and key.startswith("trainer."):
            try:
                out[key[len("trainer.") :]] = yaml.safe_load(value)
            except yaml.YAMLError:
                out[key[len("trainer.") :]] = value
    return out


def smoke_reasons(raw: dict[str, Any]) -> list[str]:
    """Why a run is a smoke test: its recorded reasons, else its trainer settings."""
    from galda.preflight import smoke_reasons as trainer_smoke_reasons

    if raw.get("smoke_reasons"):
        return [str(r) for r in raw["smoke_reasons"]]
    config = raw.get("config")
    trainer = config.get("trainer") if isinstance(config, dict) else None
    reasons = trainer_smoke_reasons(trainer if isinstance(trainer, dict) else None)
    reasons += trainer_smoke_reasons(_override_trainer(raw.get("overrides") or []))
    if any(str(o).lstrip("+") == "debug=fast" for o in raw.get("overrides") or []):
        reasons.append("debug=fast")
    return sorted(set(reasons))


def _uses_target_labels(raw: dict[str, Any], method: str) -> bool:
    if "uses_target_labels" in raw and raw["uses_target_labels"] is not None:
        return bool(raw["uses_target_labels"])
    # results written before the flag: the oracle, or selection on a target metric
    monitor = str((raw.get("selection") or {}).get("monitor") or "")
    return method == "oracle" or monitor.startswith("val/target/")


def _uses_target_images(raw: dict[str, Any], method: str) -> bool:
    if "uses_target_images" in raw and raw["uses_target_images"] is not None:
        return bool(raw["uses_target_images"])
    return method != "baseline"  # the only method written before the flag that ignores them


def load_run(path: Path) -> Run:
    """Read one results.json into a :class:`Run` (raises ValueError on an unusable file)."""
    try:
        raw = read_results(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: not a JSON object")
    missing = [k for k in ("data", "model", "method") if not raw.get(k)]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    method = str(raw["method"])
    status = str(raw.get("status") or "unknown")
    metrics = {(dom, m): _float(raw.get(f"test/{dom}/{m}")) for dom in DOMAINS for m in METRICS}
    if status == "complete":
        reasons = smoke_reasons(raw)
        if reasons:
            status, raw = "smoke", {**raw, "smoke_reasons": reasons}
    if status == "complete" and math.isnan(metrics[("source", "acc")]):
        status, raw = "incomplete", {**raw, "error": raw.get("error") or "no test/source/acc"}
    return Run(
        path=path,
        data=str(raw["data"]),
        model=str(raw["model"]),
        method=method,
        seed=_seed(raw.get("seed")),
        status=status,
        error=None if raw.get("error") is None else str(raw.get("error")),
        uses_target_labels=_uses_target_labels(raw, method),
        uses_target_images=_uses_target_images(raw, method),
        metrics=metrics,
        raw=raw,
        mtime=path.stat().st_mtime,
    )


def _identity_from_job(run_dir: Path) -> dict[str, Any] | None:
    """data / model / method / seed of a job folder from Hydra's saved config, else its name."""
    import yaml

    found: dict[str, Any] = {}
    config = run_dir / ".hydra" / "config.yaml"
    try:
        cfg = yaml.safe_load(config.read_text(encoding="utf-8")) if config.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        cfg = None
    if isinstance(cfg, dict):
        for key in ("data", "model", "method"):
            node = cfg.get(key)
            if isinstance(node, dict) and node.get("name"):
                found[key] = str(node["name"])
        found["seed"] = cfg.get("seed")
        found["monitor"] = (cfg.get("selection") or {}).get("monitor")
        method = cfg.get("method")
        found["needs_target_labels"] = isinstance(method, dict) and bool(
            method.get("needs_target_labels")
        )
    for part in run_dir.name.split(","):  # a sweep job folder: key=value,key=value
        key, sep, value = part.partition("=")
        if sep and key in ("data", "model", "method", "seed"):
            found.setdefault(key, value)
    if not all(found.get(k) for k in ("data", "model", "method")):
        return None
    return found


def unreadable_run(path: Path, problem: str) -> Run | None:
    """A run whose results.json cannot be read, placed in its group when its job folder says
    which (so its seed shows as failed instead of the row silently losing it); else None."""
    ident = _identity_from_job(path.parent)
    if ident is None:
        return None
    method = str(ident["method"])
    monitor = str(ident.get("monitor") or "")
    try:
        mtime = path.stat().st_mtime
    except OSError:
        mtime = 0.0
    return Run(
        path=path,
        data=str(ident["data"]),
        model=str(ident["model"]),
        method=method,
        seed=_seed(ident.get("seed")),
        status="unreadable",
        error=f"unreadable results.json ({problem})",
        uses_target_labels=bool(ident.get("needs_target_labels"))
        or method == "oracle"
        or monitor.startswith("val/target/"),
        metrics={(dom, m): math.nan for dom in DOMAINS for m in METRICS},
        raw={},
        mtime=mtime,
    )


def load_runs(dirs: Iterable[str | os.PathLike]) -> tuple[list[Run], list[str]]:
    """All runs under ``dirs`` and a list of problems with unreadable files.

    An unreadable file whose job folder names its data / model / method is also returned as a
    run with status ``unreadable`` (counted as a failed seed of its group).
    """
    runs, problems = [], []
    for p in find_results(dirs):
        try:
            runs.append(load_run(p))
        except ValueError as exc:
            problems.append(str(exc))
            placed = unreadable_run(p, str(exc).removeprefix(f"cannot read {p}: "))
            if placed is not None:
                runs.append(placed)
    return runs, problems


def find_sweeps(dirs: Iterable[str | os.PathLike]) -> list[Path]:
    """Every sweep's ``multirun.yaml`` under the folders (hidden folders skipped)."""
    found = []
    for d in dirs:
        d = Path(d)
        if d.is_file():
            continue
        for root, subdirs, files in os.walk(d, followlinks=False):
            subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
            if SWEEP_FILE in files:
                found.append(Path(root) / SWEEP_FILE)
    return sorted(found)


def sweep_expectations(
    paths: Iterable[Path],
) -> tuple[dict[tuple[str, str, str], set[int]], list[str]]:
    """The seeds each (data, model, method) was asked for by Hydra's basic sweeper.

    Reads the sweep's parameters (``hydra.sweeper.params``) and its command-line overrides
    (``hydra.overrides.task``); a key that is not swept takes the config's value. Returns the
    expectations and a list of sweep files that could not be read.
    """
    expected: dict[tuple[str, str, str], set[int]] = {}
    problems = []
    for path in paths:
        try:
            grid = _sweep_grid(path)
        except Exception as exc:  # noqa: BLE001 - a sweep file we cannot parse only loses a hint
            problems.append(f"{path}: cannot read the sweep's parameters ({exc})")
            continue
        if grid is None:
            continue
        for data in grid["data"]:
            for model in grid["model"]:
                for method in grid["method"]:
                    seeds = {int(s) for s in grid["seed"]}
                    expected.setdefault((data, model, method), set()).update(seeds)
    return expected, problems


def _sweep_grid(path: Path) -> dict[str, list[str]] | None:
    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    hydra = cfg.get("hydra") or {}
    sweeper = hydra.get("sweeper") or {}
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None  # another sweeper (optuna, ...) draws its own points: no fixed grid
    params = sweeper.get("params") or {}
    lines = [f"{k}={v}" for k, v in params.items()]
    lines += [str(o) for o in (hydra.get("overrides") or {}).get("task") or []]
    grid: dict[str, list[str]] = {}
    for key in ("data", "model", "method"):
        node = cfg.get(key)
        if isinstance(node, dict) and node.get("name"):
            grid[key] = [str(node["name"])]
    grid["seed"] = [str(cfg.get("seed"))]
    for ov in OverridesParser.create().parse_overrides(lines):
        key = ov.key_or_group.lstrip("/")
        if key not in ("data", "model", "method", "seed"):
            continue
        if ov.is_sweep_override():
            grid[key] = [str(v) for v in ov.sweep_string_iterator()]
        else:
            grid[key] = [str(ov.get_value_element_as_str())]
    if not all(grid.get(k) for k in ("data", "model", "method")):
        return None
    if _seed(grid["seed"][0]) is None:
        return None
    return grid


def parse_seeds(text: str | Iterable[int] | None) -> list[int] | None:
    """``"1-10"``, ``"1,2,5"``, ``"1-3,7"`` or ``"1 2 3"`` → sorted seed list (None → None)."""
    if text is None:
        return None
    if not isinstance(text, str):
        return sorted({int(s) for s in text})
    seeds: set[int] = set()
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        m = re.fullmatch(r"(-?\d+)\s*(?:-|\.\.|:)\s*(-?\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ValueError(f"bad seed range {part!r}")
            seeds.update(range(lo, hi + 1))
        elif re.fullmatch(r"-?\d+", part):
            seeds.add(int(part))
        else:
            raise ValueError(f"bad seed list {text!r} (use e.g. 1-10 or 1,2,3)")
    if not seeds:
        raise ValueError("empty seed list")
    return sorted(seeds)


@dataclass
class Stat:
    mean: float
    std: float  # sample std (ddof=1); nan when n < 2
    n: int
    seeds: list[int]


@dataclass
class Group:
    data: str
    model: str
    method: str
    uses_target_labels: bool
    runs: list[Run] = field(default_factory=list)
    used: list[Run] = field(default_factory=list)  # one complete run per seed, averaged
    failed: dict[int | None, str] = field(default_factory=dict)  # seed -> error
    missing: list[int] = field(default_factory=list)
    expected: list[int] = field(default_factory=list)  # the seeds this group should have
    ignored: list[int] = field(default_factory=list)  # seeds outside the expected list
    duplicates: dict[int, int] = field(default_factory=dict)  # seed -> number of complete runs
    stats: dict[tuple[str, str], Stat] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str, bool]:
        return (self.data, self.model, self.method, self.uses_target_labels)

    @property
    def method_label(self) -> str:
        return method_label(self.method, self.uses_target_labels)

    @property
    def incomplete(self) -> bool:
        return bool(self.missing or self.failed)

    @property
    def seeds(self) -> list[int]:
        return sorted(r.seed for r in self.used if r.seed is not None)


def method_label(method: str, uses_target_labels: bool) -> str:
    label = METHOD_LABELS.get(method, method)
    if uses_target_labels:
        if not method.startswith("oracle"):
            label += " (uses target labels)"
        label += f" {TARGET_LABEL_MARK}"
    return label


def model_label(model: str) -> str:
    return MODEL_LABELS.get(model, model)


def _order(value: str, order: tuple[str, ...]) -> tuple[int, str]:
    return (order.index(value), "") if value in order else (len(order), value)


def method_sort_key(method: str, uses_target_labels: bool) -> tuple:
    # label-free methods in the paper's order, then unknown methods, then those with target labels
    return (uses_target_labels, _order(method, METHOD_ORDER))


def model_sort_key(model: str) -> tuple[int, str]:
    return _order(model, MODEL_ORDER)


def _stat(values: list[tuple[int | None, float]]) -> Stat:
    vals = [(s, v) for s, v in values if not math.isnan(v)]
    arr = np.array([v for _, v in vals], dtype=float)
    n = arr.size
    mean = float(arr.mean()) if n else math.nan
    std = float(arr.std(ddof=1)) if n > 1 else math.nan
    return Stat(mean=mean, std=std, n=n, seeds=sorted(s for s, _ in vals if s is not None))


def _fmt_seeds(seeds: Iterable[int | None]) -> str:
    ordered = sorted(seeds, key=lambda s: (s is None, s or 0))
    return ", ".join("?" if s is None else str(s) for s in ordered)


def _group_runs(
    runs: list[Run], sweeps: dict[tuple[str, str, str], set[int]] | None
) -> dict[tuple, Group]:
    """Full runs by (data, model, method, uses_target_labels), plus an empty group per swept
    combination that has no results at all."""
    groups: dict[tuple, Group] = {}
    for r in runs:
        if r.smoke:
            continue
        key = (r.data, r.model, r.method, r.uses_target_labels)
        groups.setdefault(key, Group(*key)).runs.append(r)
    for data, model, method in sweeps or {}:
        if not any(k[:3] == (data, model, method) for k in groups):
            key = (data, model, method, method == "oracle")
            groups[key] = Group(*key)
    return groups


def _expected(
    g: Group,
    expected_seeds: list[int] | None,
    sweeps: dict[tuple[str, str, str], set[int]] | None,
) -> set[int]:
    """The seeds ``g`` should have: ``expected_seeds``, or those it ran plus those swept."""
    if expected_seeds is not None and g.model not in MODEL_FREE:  # the classical row: seedless
        return set(expected_seeds)
    exp = {r.seed for r in g.runs if r.seed is not None}
    exp |= (sweeps or {}).get((g.data, g.model, g.method), set())
    return exp


def _assign_seeds(g: Group, exp: set[int]) -> None:
    """Fill ``g.used`` (newest complete run per seed), ``failed``, ``duplicates``, ``ignored``,
    ``missing`` and ``expected``; runs without a seed are all used, with a note."""
    by_seed: dict[int | None, list[Run]] = {}
    for r in g.runs:
        by_seed.setdefault(r.seed, []).append(r)
    for seed, rs in sorted(by_seed.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        if seed is not None and seed not in exp:
            g.ignored.append(seed)
            continue
        done = sorted((r for r in rs if r.complete), key=lambda r: r.mtime)
        if seed is None:  # cannot tell seeds apart: count each run, but say so
            g.used.extend(done)
            if done:
                g.notes.append(
                    f"{len(done)} complete run(s) without a seed: "
                    + "; ".join(str(r.run_dir) for r in done)
                )
            for r in rs:
                if not r.complete:
                    g.failed[None] = r.error or r.status
            continue
        if done:
            g.used.append(done[-1])
            if len(done) > 1:
                g.duplicates[seed] = len(done)
        else:
            newest = max(rs, key=lambda r: r.mtime)
            g.failed[seed] = newest.error or newest.status
    g.missing = sorted(exp - {r.seed for r in g.runs if r.seed is not None})
    g.expected = sorted(exp)


def _seed_notes(g: Group) -> list[str]:
    """Missing, failed, duplicate and ignored seeds, and absent target labels."""
    notes = []
    if g.missing:
        notes.append(f"seed(s) {_fmt_seeds(g.missing)} missing (no results.json of a full run)")
    for seed, err in sorted(g.failed.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        first = (err or "").strip().splitlines()[0][:160] if err else "no error message"
        notes.append(f"seed {'?' if seed is None else seed} failed: {first}")
    for seed, k in sorted(g.duplicates.items()):
        notes.append(f"seed {seed}: {k} complete results found, the newest is used")
    if g.ignored:
        notes.append(f"seed(s) {_fmt_seeds(g.ignored)} outside the expected seeds, ignored")
    n_src = g.stats[("source", "acc")].n
    n_tgt = g.stats[("target", "acc")].n
    if g.used and n_tgt < n_src:
        notes.append(
            f"target accuracy available for {n_tgt} of {n_src} runs (target labels absent)"
        )
    return notes


def _provenance_notes(g: Group) -> list[str]:
    """Differing configurations or commits, statmorph coverage, use of target labels."""
    notes = []
    configs = {r.config_overrides for r in g.used}
    if len(configs) > 1:
        shown = " | ".join(" ".join(c) or "(defaults)" for c in sorted(configs))
        notes.append(f"averaged runs differ in configuration: {shown}")
    measured = [r.raw["measured_fraction"] for r in g.used if r.raw.get("measured_fraction")]
    if measured:
        notes.append(
            "statmorph measured "
            + ", ".join(
                f"{d} {100 * float(m.get(d, m) if isinstance(m, dict) else m):.2f} %"
                for m in measured[:1]
                for d in (("source", "target") if isinstance(m, dict) else ("all",))
            )
            + " of the stamps (failed stamps get the training medians, flagged)"
        )
    commits = {r.raw.get("git_commit") for r in g.used if r.raw.get("git_commit")}
    if len(commits) > 1:
        notes.append(f"runs come from {len(commits)} different git commits")
    if g.uses_target_labels and g.method != "oracle":  # the oracle row label says it already
        monitors = sorted({str((r.raw.get("selection") or {}).get("monitor")) for r in g.runs})
        notes.append(
            "used target labels (selection monitor: "
            + ", ".join(monitors)
            + "): not comparable with label-free rows"
        )
    return notes


def aggregate(
    runs: list[Run],
    expected_seeds: list[int] | None = None,
    sweeps: dict[tuple[str, str, str], set[int]] | None = None,
) -> list[Group]:
    """Group runs by (data, model, method, uses_target_labels) and average over seeds.

    ``expected_seeds``: the seeds every group should have. None → per group, the seeds it ran
    (complete, failed or unreadable) plus those its sweep asked for (``sweeps``, from
    :func:`sweep_expectations`); a swept combination with no results at all becomes a group
    whose seeds are all missing. Smoke runs are left out.
    """
    groups = _group_runs(runs, sweeps)
    for g in groups.values():
        _assign_seeds(g, _expected(g, expected_seeds, sweeps))
        for dom in DOMAINS:
            for m in METRICS:
                g.stats[(dom, m)] = _stat([(r.seed, r.metrics[(dom, m)]) for r in g.used])
        # notes, most important first
        g.notes += _seed_notes(g) + _provenance_notes(g)
    return sorted(
        groups.values(),
        key=lambda g: (
            g.data,
            model_sort_key(g.model),
            method_sort_key(g.method, g.uses_target_labels),
        ),
    )
