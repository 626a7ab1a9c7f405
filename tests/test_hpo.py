"""Label-free hyper-parameter search: galda's Optuna sweeper (galda.hpo), hpo_* experiments."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from pytest import approx

from galda.errors import GaldaError
from tests.conftest import CONF, REPO

optuna = pytest.importorskip("optuna")


def test_search_space_from_hydra_sweep_syntax():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from galda.hpo import search_space

    dists, fixed = search_space(
        [
            "a=tag(log, interval(0.01, 10))",
            "b=interval(1, 5)",
            "c=choice(ganin, constant)",
            "d=range(2, 10, 4)",
            "e=interval(0.5, 2.5)",
            "seed=3",
        ]
    )
    assert dists["a"] == FloatDistribution(0.01, 10.0, log=True)
    assert dists["b"] == FloatDistribution(1.0, 5.0)  # Hydra's interval ends are floats
    assert dists["c"] == CategoricalDistribution(["ganin", "constant"])
    assert dists["d"] == IntDistribution(2, 6, step=4)  # Hydra's range excludes the stop
    assert dists["e"] == FloatDistribution(0.5, 2.5)
    assert fixed == {"seed": "3"}


def test_direction_comes_from_the_validator_registry():
    from galda.hpo import optuna_direction

    assert optuna_direction("auto", "val/validator/snd") == "maximize"
    assert optuna_direction("auto", "val/validator/dev") == "minimize"
    assert optuna_direction("min", "val/validator/snd") == "minimize"
    with pytest.raises(GaldaError, match="no validator"):
        optuna_direction("auto", "val/validator/bogus")
    with pytest.raises(GaldaError, match="hydra.sweeper.direction"):
        optuna_direction("sideways", "val/validator/snd")


@pytest.mark.parametrize("experiment", ["hpo_dann", "hpo_mmd"])
@pytest.mark.parametrize("objective", ["val/validator/snd", "val/validator/dev"])
def test_hpo_experiments_compose(experiment, objective):
    import galda.run  # noqa: F401 - registers the galda_direction resolver

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"experiment={experiment}", f"hpo.objective={objective}"],
            return_hydra_config=True,
        )
    GlobalHydra.instance().clear()
    assert cfg.selection.monitor == objective
    assert cfg.selection.mode == ("min" if objective.endswith("dev") else "max")
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.galda_optuna_sweeper.GaldaOptunaSweeper"
    assert cfg.hydra.sweeper.storage.endswith(f"multirun/{experiment}/optuna.db")
    assert len(cfg.hydra.sweeper.params) >= 5
    assert cfg.callbacks.validators._target_ == "galda.validators.ValidatorCallback"


def _sweep(data_dir: Path, log_dir: Path, n_trials: int, *extra: str) -> Any:
    cmd = [
        sys.executable,
        "-m",
        "galda.run",
        "-m",
        "experiment=hpo_dann",
        f"hydra.sweeper.n_trials={n_trials}",
        "model=tiny",
        "data=tiny",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={log_dir}",
        "trainer.max_epochs=2",
        *extra,
    ]
    return subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=900)


def _study(log_dir: Path):
    storage = f"sqlite:///{log_dir / 'multirun' / 'hpo_dann' / 'optuna.db'}"
    return optuna.load_study(study_name="hpo_dann", storage=storage)


def _best_logged(run_dir: Path, key: str, mode: str) -> float:
    with open(run_dir / "csv" / "metrics.csv", newline="") as fh:
        values = [float(r[key]) for r in csv.DictReader(fh) if r.get(key)]
    return max(values) if mode == "max" else min(values)


@pytest.mark.slow
def test_study_is_written_and_resumed_with_a_validator_objective(sim_data_dir, tmp_path):
    objective = "val/validator/snd"
    proc = _sweep(sim_data_dir, tmp_path, 3, f"hpo.objective={objective}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(_study(tmp_path).trials) == 3
    proc = _sweep(sim_data_dir, tmp_path, 2, f"hpo.objective={objective}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = _study(tmp_path)
    assert study.direction.name == "MAXIMIZE"
    assert len(study.trials) == 5 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 5  # no repeats
    for trial in study.trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir.name == f"trial_{trial.number:04d}"
        results = json.loads((run_dir / "results.json").read_text())
        assert results["selection"] == {
            "monitor": objective,
            "mode": "max",
            "best_score": approx(trial.value, rel=1e-6),
        }
        # the objective is the validator's value at the kept checkpoint
        assert trial.value == approx(_best_logged(run_dir, objective, "max"), rel=1e-6)
        assert trial.value == approx(results["validators"]["snd"], rel=1e-5)
        overrides = results["overrides"]
        for key, value in trial.params.items():
            assert f"{key}={value!r}" in overrides or f"{key}={value}" in overrides
    summary = (tmp_path / "multirun" / "hpo_dann" / "optimization_results.yaml").read_text()
    assert "total: 5" in summary and "best_achievable_test_target_acc" in summary and "‡" in summary


def test_target_label_objective_is_refused(tmp_path):
    proc = _sweep(tmp_path, tmp_path, 1, "hpo.objective=val/target/acc")
    assert proc.returncode != 0
    assert "hydra.sweeper.allow_target_labels" in proc.stderr + proc.stdout
    assert not list(tmp_path.glob("multirun/hpo_dann/trial_*"))
