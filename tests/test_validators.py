"""Label-free validators against plain reference implementations, and the Lightning callback."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytest import approx
from torch.utils.data import DataLoader, TensorDataset

from galda import validators as V
from galda.errors import GaldaError


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _entropy(p: np.ndarray) -> float:
    return float(-sum(q * math.log(q) for q in p if q > 0))


@pytest.fixture()
def outputs():
    """Random validation outputs: 3 classes, 40 source and 50 target rows, 12-d features."""
    g = torch.Generator().manual_seed(0)
    return {
        "source_logits": 2 * torch.randn(40, 3, generator=g),
        "source_labels": torch.randint(0, 3, (40,), generator=g),
        "source_features": torch.randn(40, 12, generator=g),
        "target_logits": 3 * torch.randn(50, 3, generator=g),
        "target_features": torch.randn(50, 12, generator=g) + 0.7,
    }


def test_source_accuracy_and_loss(outputs):
    z, y = outputs["source_logits"].numpy(), outputs["source_labels"].numpy()
    acc = sum(int(np.argmax(z[i]) == y[i]) for i in range(len(y))) / len(y)
    loss = np.mean([-math.log(_softmax(z[i : i + 1])[0, y[i]]) for i in range(len(y))])
    assert V.source_accuracy(outputs["source_logits"], outputs["source_labels"]) == approx(acc)
    assert V.source_loss(outputs["source_logits"], outputs["source_labels"]) == pytest.approx(loss)


def test_target_entropy(outputs):
    p = _softmax(outputs["target_logits"].numpy())
    assert V.target_entropy(outputs["target_logits"]) == approx(np.mean([_entropy(r) for r in p]))


def test_information_maximisation(outputs):
    p = _softmax(outputs["target_logits"].numpy())
    reference = _entropy(p.mean(0)) - np.mean([_entropy(r) for r in p])
    value = V.information_maximisation(outputs["target_logits"])
    assert value == pytest.approx(reference) and 0 < value < math.log(3)
    # uniform predictions carry no information; confident, balanced ones carry log C
    assert V.information_maximisation(torch.zeros(8, 3)) == pytest.approx(0.0, abs=1e-12)
    confident = 50 * torch.eye(3).repeat(4, 1)
    assert V.information_maximisation(confident) == pytest.approx(math.log(3), abs=1e-9)


def test_batch_nuclear_norm(outputs):
    p = _softmax(outputs["target_logits"].numpy())
    # ‖P‖_* = Σ sqrt(eigenvalues of PᵀP): a path that does not use an SVD
    reference = np.sqrt(np.clip(np.linalg.eigvalsh(p.T @ p), 0, None)).sum() / len(p)
    assert V.batch_nuclear_norm(outputs["target_logits"]) == pytest.approx(reference, rel=1e-9)


def test_soft_neighbourhood_density(outputs):
    p = _softmax(outputs["target_logits"].numpy())
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    n, tau, total = len(p), 0.05, 0.0
    for i in range(n):
        others = [j for j in range(n) if j != i]
        s = np.array([p[i] @ p[j] / tau for j in others])
        q = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        total += _entropy(q)
    assert V.soft_neighbourhood_density(outputs["target_logits"]) == pytest.approx(total / n)
    # the row chunking does not change the value
    assert V.soft_neighbourhood_density(outputs["target_logits"], chunk=7) == approx(total / n)


def _skada_estimator():
    class Probs:  # an "estimator" whose inputs are already logits
        def predict_proba(self, x, sample_domain=None, **kw):
            return _softmax(x)

        def predict_log_proba(self, x, sample_domain=None, **kw):
            return np.log(_softmax(x))

    return Probs()


def _skada_inputs(outputs):
    zs, zt = outputs["source_logits"].numpy(), outputs["target_logits"].numpy()
    x = np.concatenate([zs, zt])
    y = np.concatenate([outputs["source_labels"].numpy(), -np.ones(len(zt), int)])
    domain = np.concatenate([np.ones(len(zs), int), -2 * np.ones(len(zt), int)])
    return x, y, domain


def test_snd_and_entropy_match_skada(outputs):
    metrics = pytest.importorskip("skada.metrics")
    x, y, domain = _skada_inputs(outputs)
    est = _skada_estimator()
    snd = metrics.SoftNeighborhoodDensity(T=0.05)(est, x, y, sample_domain=domain)
    assert V.soft_neighbourhood_density(outputs["target_logits"]) == pytest.approx(snd, rel=1e-6)
    # skada's "mean" averages over samples *and* classes, and negates (lower is better)
    entropy = metrics.PredictionEntropyScorer()(est, x, y, sample_domain=domain)
    assert V.target_entropy(outputs["target_logits"]) == pytest.approx(-3 * entropy, rel=1e-6)


def test_logistic_regression_matches_scikit_learn():
    linear_model = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 5, generator=g).double()
    y = (x[:, 0] + 0.5 * torch.randn(60, generator=g).double() > 0).double()
    l2 = 0.1
    w, b = V.fit_logistic_regression(x, y, l2)
    ref = linear_model.LogisticRegression(C=1 / (len(x) * l2), tol=1e-12, max_iter=10_000)
    ref.fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(w.numpy(), ref.coef_[0], atol=1e-6)
    assert float(b) == pytest.approx(float(ref.intercept_[0]), abs=1e-6)


def _reference_cross_fit(fs, ft, seed, l2):
    """Held-out P(target | f) from scikit-learn, on the same two-fold split."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    fs, ft = np.asarray(fs, np.float64), np.asarray(ft, np.float64)
    g = torch.Generator().manual_seed(seed)
    s_halves = [h.numpy() for h in V.two_fold_split(len(fs), g)]
    t_halves = [h.numpy() for h in V.two_fold_split(len(ft), g)]
    p_s, p_t, ratio = np.zeros(len(fs)), np.zeros(len(ft)), np.zeros(len(fs))
    for k in (0, 1):
        x = np.concatenate([fs[s_halves[k]], ft[t_halves[k]]])
        y = np.r_[np.zeros(len(s_halves[k])), np.ones(len(t_halves[k]))]
        mean, std = x.mean(0), x.std(0)
        clf = linear_model.LogisticRegression(C=1 / (len(x) * l2), tol=1e-12, max_iter=10_000)
        clf.fit((x - mean) / std, y)
        p_s[s_halves[1 - k]] = clf.predict_proba((fs[s_halves[1 - k]] - mean) / std)[:, 1]
        p_t[t_halves[1 - k]] = clf.predict_proba((ft[t_halves[1 - k]] - mean) / std)[:, 1]
        ratio[s_halves[1 - k]] = len(s_halves[k]) / len(t_halves[k])
    return p_s, p_t, ratio


def test_dev_risk_formula():
    rng = np.random.default_rng(3)
    losses, weights = rng.gamma(2.0, size=30), rng.gamma(1.0, size=30)
    weighted = weights * losses
    eta = -np.cov(np.stack([weighted, weights]))[0, 1] / np.var(weights, ddof=1)
    reference = weighted.mean() + eta * weights.mean() - eta
    assert V.dev_risk(torch.tensor(losses), torch.tensor(weights)) == pytest.approx(reference)
    # constant weights: no control variate, the plain weighted loss
    assert V.dev_risk(torch.tensor(losses), torch.full((30,), 2.0)) == approx(2 * losses.mean())


def test_deep_embedded_validation(outputs):
    fs, ft = outputs["source_features"].numpy(), outputs["target_features"].numpy()
    p_s, _, ratio = _reference_cross_fit(fs, ft, seed=5, l2=0.1)
    weights = ratio * p_s / (1 - p_s)
    z, y = outputs["source_logits"].numpy(), outputs["source_labels"].numpy()
    losses = -np.log(_softmax(z)[np.arange(len(y)), y])
    weighted = weights * losses
    eta = -np.cov(np.stack([weighted, weights]))[0, 1] / np.var(weights, ddof=1)
    reference = weighted.mean() + eta * weights.mean() - eta
    value = V.deep_embedded_validation(
        outputs["source_features"],
        outputs["source_logits"],
        outputs["source_labels"],
        outputs["target_features"],
        seed=5,
    )
    assert value == pytest.approx(reference, rel=1e-5)


def test_proxy_a_distance(outputs):
    fs, ft = outputs["source_features"].numpy(), outputs["target_features"].numpy()
    p_s, p_t, _ = _reference_cross_fit(fs, ft, seed=2, l2=0.1)
    error = 0.5 * (np.mean(p_s > 0.5) + np.mean(p_t <= 0.5))
    value = V.proxy_a_distance(outputs["source_features"], outputs["target_features"], seed=2)
    assert value == pytest.approx(2 * (1 - 2 * error))
    g = torch.Generator().manual_seed(0)
    far = V.proxy_a_distance(torch.randn(60, 4, generator=g), torch.randn(60, 4, generator=g) + 10)
    same = V.proxy_a_distance(torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g))
    assert far == pytest.approx(2.0) and abs(same) < 0.4


def test_registry_directions_and_compute(outputs):
    names = {"source_acc", "source_loss", "entropy", "im", "bnm", "snd", "dev", "pad"}
    assert set(V.VALIDATORS) == names
    for name, validator in V.VALIDATORS.items():
        assert validator.direction in ("max", "min")
        assert set(validator.needs) <= set(V.INPUTS)
        assert "target_labels" not in validator.needs
        assert V.direction(V.PREFIX + name) == validator.direction
    assert V.direction("val/source/acc") == "max" and V.direction("val/target/loss") == "min"
    with pytest.raises(GaldaError, match="no validator"):
        V.direction("val/validator/nope")
    with pytest.raises(GaldaError, match="selection.mode"):
        V.direction("val/source/something")
    values = V.compute_validators(outputs, seed=3)
    assert set(values) == set(V.VALIDATORS) and all(math.isfinite(v) for v in values.values())
    assert V.compute_validators(outputs, seed=3) == values  # deterministic
    for name in ("dev", "pad"):  # the shared classifier gives the same values as a fresh one
        fn = V.VALIDATORS[name].fn
        alone = fn(**{k: outputs[k] for k in V.VALIDATORS[name].needs}, seed=3)
        assert alone == pytest.approx(values[name])
    no_target = {k: v for k, v in outputs.items() if k.startswith("source")}
    assert set(V.compute_validators(no_target)) == {"source_acc", "source_loss"}


# --------------------------------------------------------------------------- callback


class FakeModule(pl.LightningModule):
    """A linear classifier whose validation_step returns the dict of the base refactor."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(6, 5)
        self.head = torch.nn.Linear(5, 2)

    def forward(self, x):
        f = torch.relu(self.body(x))
        return f, self.head(f)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x)[1], y)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        features, logits = self(x)
        domain = ("source", "target")[dataloader_idx]
        self.log(
            f"val/{domain}/acc", (logits.argmax(1) == y).float().mean(), add_dataloader_idx=False
        )
        return {"domain": domain, "features": features, "logits": logits, "labels": y}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loaders():
    g = torch.Generator().manual_seed(0)
    xs, xt = torch.randn(64, 6, generator=g), torch.randn(48, 6, generator=g) + 0.5
    ys, yt = (xs[:, 0] > 0).long(), (xt[:, 0] > 0.5).long()
    train = DataLoader(TensorDataset(xs, ys), batch_size=16)
    val = [
        DataLoader(TensorDataset(xs, ys), batch_size=16),
        DataLoader(TensorDataset(xt, yt), batch_size=16),
    ]
    return train, val, (xs, ys, xt)


def test_callback_logs_every_validator_and_drives_checkpointing(tmp_path):
    pl.seed_everything(0)
    train, val, (xs, ys, xt) = _loaders()
    monitor = "val/validator/snd"
    callback = V.ValidatorCallback(seed=0)
    ckpt = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path, monitor=monitor, mode=V.direction(monitor), save_last=True
    )
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=2,
        callbacks=[callback, ckpt],
    )
    module = FakeModule()
    trainer.fit(module, train, val)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(V.PREFIX)}
    assert set(logged) == {V.PREFIX + n for n in V.VALIDATORS}
    assert sorted(callback.history) == [0, 1]  # the sanity check is not recorded
    # the logged values are the validators of the final model on all validation rows
    with torch.no_grad():
        fs, zs = module(xs)
        ft, zt = module(xt)
    expected = V.compute_validators(
        {
            "source_features": fs,
            "source_logits": zs,
            "source_labels": ys,
            "target_features": ft,
            "target_logits": zt,
        },
        seed=0,
    )
    for name, value in expected.items():
        assert logged[V.PREFIX + name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
        assert callback.values_at(1)[name] == pytest.approx(value, rel=1e-12)
    assert ckpt.best_model_score is not None
    best = max(callback.history.values(), key=lambda v: v["snd"])["snd"]
    assert float(ckpt.best_model_score) == pytest.approx(best, rel=1e-6)
    assert callback.last_cost_s is not None and callback.last_cost_s < 5
    # the history travels with checkpoints (Lightning 2.6 writes last.ckpt only with a top-k save)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    restored = V.ValidatorCallback()
    restored.load_state_dict(next(v for k, v in saved["callbacks"].items() if "Validator" in k))
    assert restored.history == {k: v for k, v in callback.history.items() if k <= saved["epoch"]}


def test_callback_ignores_modules_without_outputs(caplog, monkeypatch):
    # an in-process Hydra app earlier in the session may have reconfigured logging: make sure the
    # module's logger reaches caplog whatever ran before
    monkeypatch.setattr(V.log, "disabled", False)
    monkeypatch.setattr(V.log, "propagate", True)
    caplog.set_level("WARNING", logger=V.log.name)

    class NoOutputs(FakeModule):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            super().validation_step(batch, batch_idx, dataloader_idx)

    train, val, _ = _loaders()
    callback = V.ValidatorCallback()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[callback],
    )
    trainer.fit(NoOutputs(), train, val)
    assert not any(k.startswith(V.PREFIX) for k in trainer.callback_metrics)
    assert "no validators are logged" in caplog.text


def test_unknown_validator_name_is_a_user_error():
    with pytest.raises(GaldaError, match="callbacks.validators.names"):
        V.ValidatorCallback(names=["snd", "bogus"])
    with pytest.raises(GaldaError, match="callbacks.validators.device"):
        V.ValidatorCallback(device="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_validators_on_the_gpu_match_the_cpu(outputs):
    on_gpu = {k: v.cuda() for k, v in outputs.items()}
    cpu, gpu = V.compute_validators(outputs, seed=1), V.compute_validators(on_gpu, seed=1)
    for name, value in cpu.items():
        assert gpu[name] == approx(value, rel=1e-6, abs=1e-9), name


def test_gather_rows_handles_unequal_ranks():
    mine, other = torch.arange(6.0).reshape(3, 2), torch.arange(10.0, 20.0).reshape(5, 2)

    class TwoRanks:  # all_gather of a second process holding `other`
        def all_gather(self, x):
            if x.ndim == 1:
                return torch.stack([x, torch.tensor([len(other)])])
            theirs = x.new_zeros(x.shape)
            theirs[: len(other)] = other
            return torch.stack([x, theirs])

    gathered = V._gather_rows(TwoRanks(), mine)
    assert torch.equal(gathered, torch.cat([mine, other]))


def test_training_selects_by_a_validator(compose_cfg, sim_data_dir, tmp_path):
    from galda.train import train

    monitor = "val/validator/snd"
    cfg = compose_cfg(
        "data=tiny",
        f"paths.data_dir={sim_data_dir}",
        "model=tiny",
        "method=dann",
        "trainer.max_epochs=2",
        f"selection.monitor={monitor}",
        "selection.mode=max",
        "++callbacks.validators._target_=galda.validators.ValidatorCallback",
        run_dir=tmp_path / "run",
    )
    results = train(cfg)
    assert results["status"] == "complete" and results["selection"]["monitor"] == monitor
    assert results["uses_target_labels"] is False
    from galda.report.validators import read_metrics_csv

    epochs, values = read_metrics_csv(tmp_path / "run" / "csv" / "metrics.csv")
    assert epochs.tolist() == [0, 1]  # training epochs (not the re-validation after training)
    assert all(np.isfinite(values[V.PREFIX + n]).all() for n in V.VALIDATORS)
    best = values[monitor].max()
    assert results["selection"]["best_score"] == approx(best, rel=1e-6)
    # the selected checkpoint's validators, recomputed after training, match the epoch's values
    assert set(results["validators"]) == set(V.VALIDATORS)
    best_epoch = int(np.argmax(values[monitor]))
    for name in V.VALIDATORS:
        assert results["validators"][name] == approx(
            values[V.PREFIX + name][best_epoch], rel=1e-5, abs=1e-6
        ), name
