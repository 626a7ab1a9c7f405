"""Label-free hyper-parameter search: a Hydra sweeper driving Optuna by ask-and-tell.

``python -m galda.run -m experiment=hpo_dann [hydra.sweeper.n_trials=N]`` runs N trials; each is
an ordinary galda job (any launcher: sequential, ``hydra/launcher=gpus``, slurm) in
``<sweep dir>/trial_NNNN`` whose return value (the best ``selection.monitor`` score, a validator)
is told to the study. The study lives in ``<sweep dir>/optuna.db`` (sqlite) under a fixed name,
so running the same command again resumes it and adds N more trials.

Why not ``hydra-optuna-sweeper``: its last release (1.3.0) pins ``optuna<3``, and Optuna 2.10's
RDB storage fails on SQLAlchemy 2 (``create_study(storage="sqlite:///…")`` raises an
``AssertionError`` in the schema-version check; Optuna supports SQLAlchemy 2 from 3.1 on), so a
resumable sqlite study needs SQLAlchemy < 2 pinned beside an unmaintained Optuna. This sweeper uses
current Optuna, keeps the plugin's search-space syntax (``hydra.sweeper.params`` with Hydra's
``choice``, ``range``, ``interval`` and ``tag(log, interval(…))``), and adds what a label-free
search needs: the direction from the validator registry, a refusal of target-label objectives
unless asked for, and a summary that marks target-label numbers ‡.

The Hydra plugin class is ``hydra_plugins.galda_optuna_sweeper.GaldaOptunaSweeper`` (Hydra only
loads plugins from the ``hydra_plugins`` package); config: ``conf/hydra/sweeper/galda_optuna.yaml``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from galda.errors import GaldaError

log = logging.getLogger(__name__)

SUMMARY_FILE = "optimization_results.yaml"
TARGET_NOTE = "‡ target labels score the search here only; no trial was chosen with them"


def distribution_from_override(override: Override) -> Any:
    """An Optuna distribution for a sweep override, or None for a fixed value.

    ``choice(a, b)`` → categorical (of the encoded override strings); ``range(a, b[, step])`` →
    int/float with that step (Hydra's stop excluded); ``interval(a, b)`` → uniform float (Hydra
    makes interval ends floats: use ``range`` for integers); ``tag(log, interval(a, b))`` →
    log-uniform.
    """
    import optuna.distributions as od

    if not override.is_sweep_override():
        return None

    def encoded() -> list[Any]:
        return list(override.sweep_iterator(transformer=Transformer.encode))

    if override.is_choice_sweep():
        return od.CategoricalDistribution(encoded())
    value = override.value()
    if isinstance(value, RangeSweep):
        values: list[Any] = list(override.sweep_iterator())
        numeric = all(isinstance(v, (int, float)) for v in values)
        if value.shuffle or len(values) < 2 or not numeric:
            return od.CategoricalDistribution(encoded())
        if all(isinstance(v, int) for v in values):
            return od.IntDistribution(values[0], values[-1], step=values[1] - values[0])
        return od.FloatDistribution(values[0], values[-1], step=values[1] - values[0])
    if isinstance(value, IntervalSweep) and value.start is not None and value.end is not None:
        return od.FloatDistribution(float(value.start), float(value.end), log="log" in value.tags)
    raise GaldaError(
        f"hydra.sweeper.params: {override.input_line!r} is not a choice, range or interval sweep"
    )


def search_space(arguments: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Split overrides into Optuna distributions (sweeps) and fixed ``key=value`` overrides."""
    distributions: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        dist = distribution_from_override(override)
        if dist is None:
            fixed[key] = override.get_value_element_as_str()
        else:
            distributions[key] = dist
    return distributions, fixed


def _format(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def optuna_direction(direction: str, monitor: str) -> Literal["maximize", "minimize"]:
    """``maximize`` or ``minimize``; ``auto``: from the selection monitor (validator registry)."""
    if direction in ("auto", None):
        from galda.validators import direction as monitor_direction

        direction = monitor_direction(monitor)
    mapping: dict[str, Literal["maximize", "minimize"]] = {
        "max": "maximize",
        "maximize": "maximize",
        "min": "minimize",
        "minimize": "minimize",
    }
    if direction not in mapping:
        raise GaldaError(f"hydra.sweeper.direction={direction}: use auto, maximize or minimize")
    return mapping[direction]


class OptunaSweeper(Sweeper):
    """Ask-and-tell Optuna sweeper (see the module docstring).

    Args:
        study_name, storage: the Optuna study (``load_if_exists``: the same name and storage
            resume it).
        direction: ``auto`` (from ``selection.monitor`` via ``galda.validators.direction``),
            ``maximize`` or ``minimize``.
        n_trials: trials this invocation runs; n_jobs: trials launched together (one batch).
        sampler: ``tpe`` or ``random``; seed: its seed, offset by the number of trials already in
            the study so a resumed search does not repeat its first draws.
        max_failure_rate: stop when more than this fraction of this invocation's trials failed.
        allow_target_labels: allow an objective that reads target labels (``val/target/…``);
            the summary then marks the objective ‡.
        params: the search space, ``{key: override}`` in Hydra's sweep syntax.
    """

    def __init__(
        self,
        study_name: str,
        storage: str | None,
        direction: str = "auto",
        n_trials: int = 20,
        n_jobs: int = 1,
        sampler: str = "tpe",
        seed: int = 1,
        max_failure_rate: float = 0.5,
        allow_target_labels: bool = False,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.study_name = str(study_name)
        self.storage = storage
        self.direction = direction
        self.n_trials = int(n_trials)
        self.n_jobs = max(1, int(n_jobs))
        self.sampler_name = str(sampler)
        self.seed = int(seed)
        self.max_failure_rate = float(max_failure_rate)
        self.allow_target_labels = bool(allow_target_labels)
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def _sampler(self, offset: int) -> Any:
        import optuna

        if self.sampler_name == "tpe":
            return optuna.samplers.TPESampler(seed=self.seed + offset)
        if self.sampler_name == "random":
            return optuna.samplers.RandomSampler(seed=self.seed + offset)
        raise GaldaError(f"hydra.sweeper.sampler={self.sampler_name}: use tpe or random")

    def _monitor(self) -> str:
        """The objective (``selection.monitor``); target-label monitors only when allowed."""
        assert self.config is not None
        monitor = str(OmegaConf.select(self.config, "selection.monitor", default=""))
        if "/target/" in monitor and not self.allow_target_labels:
            raise GaldaError(
                f"selection.monitor={monitor} reads target labels; a label-free "
                "search needs a validator (val/validator/<name>), or set "
                "hydra.sweeper.allow_target_labels=true (results marked ‡)"
            )
        return monitor

    def _open_study(
        self, monitor: str, direction: Literal["maximize", "minimize"]
    ) -> tuple[Any, int]:
        """Create or resume the study (and say how many trials it already has); its sampler is
        seeded by that number."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            direction=direction,
            load_if_exists=True,
        )
        previous = len(study.trials)
        stale = [t.number for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
        if stale:
            log.warning(
                "Trials %s were left running by an interrupted search; they are ignored", stale
            )
        study.sampler = self._sampler(previous)
        log.info(
            "Study %s (%s): %d trials so far; objective %s (%s); %d trials to run",
            self.study_name,
            self.storage,
            previous,
            monitor,
            direction,
            self.n_trials,
        )
        return study, previous

    def _run_trials(
        self, study: Any, previous: int, distributions: dict, fixed: dict, sweep_dir: Path
    ) -> list[Any]:
        """Ask, launch and tell ``n_trials`` trials, ``n_jobs`` at a time; return the job returns.

        Stops with :class:`GaldaError` once the failed fraction exceeds ``max_failure_rate``.
        """
        import optuna

        returns: list[Any] = []
        failed = 0
        launched = 0
        while launched < self.n_trials:
            batch = min(self.n_jobs, self.n_trials - launched)
            trials = [study.ask(distributions) for _ in range(batch)]
            overrides = []
            for trial in trials:
                subdir = f"trial_{trial.number:04d}"
                trial.set_user_attr("run_dir", str(sweep_dir / subdir))
                values = {**{k: _format(v) for k, v in trial.params.items()}, **fixed}
                overrides.append(
                    [f"{k}={v}" for k, v in values.items()] + [f"hydra.sweep.subdir={subdir}"]
                )
            results = self.launcher.launch(overrides, initial_job_idx=previous + launched)
            for trial, ret in zip(trials, results, strict=True):
                value = _job_value(ret)
                if value is None:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    failed += 1
                    log.warning("Trial %d failed or returned no score", trial.number)
                else:
                    study.tell(trial, value)
            launched += batch
            returns.extend(results)
            if failed / launched > self.max_failure_rate:
                raise GaldaError(
                    f"hydra.sweeper.max_failure_rate={self.max_failure_rate}: "
                    f"{failed} of {launched} trials failed; see their results.json"
                )
        return returns

    def sweep(self, arguments: list[str]) -> list[Any]:
        try:
            import optuna  # noqa: F401 - only to say how to install it
        except ImportError as err:
            raise GaldaError(
                "hydra/sweeper=galda_optuna needs Optuna: pip install 'galda[hpo]'"
            ) from err

        assert self.config is not None and self.launcher is not None
        monitor = self._monitor()
        study_direction = optuna_direction(self.direction, monitor)
        args = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        distributions, fixed = search_space(args)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        study, previous = self._open_study(monitor, study_direction)
        returns = self._run_trials(study, previous, distributions, fixed, sweep_dir)
        summary = summarise(study, monitor, target_objective="/target/" in monitor)
        from galda.results import atomic_write_text

        atomic_write_text(sweep_dir / SUMMARY_FILE, OmegaConf.to_yaml(OmegaConf.create(summary)))
        for line in summary_lines(summary):
            log.info("%s", line)
        return returns


def _job_value(ret: Any) -> float | None:
    try:
        value = ret.return_value
    except Exception:  # noqa: BLE001 - a job that raised: the trial failed
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def summarise(study: Any, objective: str, target_objective: bool = False) -> dict[str, Any]:
    """The study's best trial, and its target accuracy beside the best achievable in the study ‡."""
    import optuna

    from galda.results import read_results

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    summary: dict[str, Any] = {
        "study": study.study_name,
        "objective": objective + (" ‡" if target_objective else ""),
        "direction": study.direction.name.lower(),
        "trials": {
            "total": len(study.trials),
            "complete": len(done),
            "failed": sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials),
        },
    }
    if not done:
        return summary
    best = study.best_trial
    summary["best_trial"] = {
        "number": best.number,
        "value": best.value,
        "params": dict(best.params),
        "run_dir": best.user_attrs.get("run_dir"),
    }
    accuracy: dict[int, float] = {}
    for trial in done:
        run_dir = trial.user_attrs.get("run_dir")
        try:
            acc = read_results(run_dir).get("test/target/acc") if run_dir else None
        except (OSError, ValueError):
            acc = None
        if acc is not None:
            accuracy[trial.number] = float(acc)
    if accuracy:
        top = max(accuracy, key=lambda number: accuracy[number])
        summary[TARGET_NOTE] = {
            "best_trial_test_target_acc": accuracy.get(best.number),
            "best_achievable_test_target_acc": accuracy[top],
            "best_achievable_trial": top,
            "trials_with_test_target_acc": len(accuracy),
        }
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    lines = [
        (
            f"study {summary['study']}: {summary['trials']['complete']} complete of "
            f"{summary['trials']['total']} trials; objective {summary['objective']} "
            f"({summary['direction']})"
        )
    ]
    best = summary.get("best_trial")
    if best:
        lines.append(f"best trial {best['number']}: {best['value']:.4f} with {best['params']}")
    scored = summary.get(TARGET_NOTE)
    if scored:
        chosen = scored["best_trial_test_target_acc"]
        lines.append(
            f"test/target/acc ‡: best trial {'—' if chosen is None else f'{chosen:.4f}'}, "
            f"best achievable {scored['best_achievable_test_target_acc']:.4f} "
            f"(trial {scored['best_achievable_trial']}) — {TARGET_NOTE}"
        )
    return lines
