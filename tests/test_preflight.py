"""galda.preflight: every bad setting or data file is refused before training, in one line that
names the key or the file and the fix, and nothing is written to the run folder."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from galda.data.h5format import write_domain
from galda.errors import ConfigError, DataError, GaldaError
from galda.preflight import (
    loggable_monitors,
    preflight,
    preflight_config,
    read_headers,
    smoke_reasons,
    split_sizes,
)


def write_pair(
    folder: Path,
    n_galaxies: int = 30,
    size: int = 75,
    channels: int = 3,
    labelled_target: bool = True,
    labelled_source: bool = True,
    roles: tuple[str, str] = ("source", "target"),
    n_target: int | None = None,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Two small domain files of random images; ``roles`` are their 'domain' attributes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for name, role, n, labelled in (
        ("source", roles[0], n_galaxies, labelled_source),
        ("target", roles[1], n_target or n_galaxies, labelled_target),
    ):
        x = rng.normal(size=(n, channels, size, size)).astype(np.float32)
        y = (np.arange(n) % 2) if labelled else None
        paths.append(
            write_domain(
                folder / f"{name}.h5", x, y, np.arange(n), attrs={"domain": role}, overwrite=True
            )
        )
    return paths[0], paths[1]


@pytest.fixture()
def make_cfg(compose_cfg, tmp_path):
    def _make(*overrides: str, files: tuple[Path, Path] | None = None, **pair):
        src, tgt = files or write_pair(tmp_path / "data", **pair)
        return compose_cfg(
            "data=tiny",
            "model=tiny",
            "logger=none",
            "data.simulate=null",
            f"data.source_path={src}",
            f"data.target_path={tgt}",
            *overrides,
        )

    return _make


def _train_or_checks(cfg) -> None:
    """What ``galda.train.train`` does up to the first training step.

    Once train() calls the preflight (issue 15) the refusal is tested through train() itself;
    until then through the same calls train() makes (config, DataModule, preflight).
    """
    from galda import train as train_module

    if "preflight(" in inspect.getsource(train_module):
        train_module.train(cfg)
        return
    preflight_config(cfg)
    preflight(cfg, _datamodule(cfg))


def _datamodule(cfg):
    from galda.provision import datamodule_config

    return instantiate(datamodule_config(cfg.data), _convert_="all")


def refused(cfg, kind: type[GaldaError] = GaldaError) -> str:
    """Run and expect a refusal; check nothing was written; return the message."""
    with pytest.raises(kind) as info:
        _train_or_checks(cfg)
    run_dir = Path(cfg.paths.output_dir)
    written = [p for p in run_dir.rglob("*") if p.is_file()] if run_dir.exists() else []
    assert not [p for p in written if p.suffix in (".ckpt", ".csv", ".json", ".npz")], written
    return str(info.value)


def one_line(msg: str, *words: str) -> None:
    assert "\n" not in msg and "Traceback" not in msg, msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


# ------------------------------------------------------------------------- settings (no data)


@pytest.mark.parametrize(
    "override, words",
    [
        ("data.batch_size=0", ("data.batch_size=0", "at least 1")),
        ("data.batch_size=-4", ("data.batch_size=-4", "at least 1")),
        ("optim.optimizer.lr=-0.001", ("optim.optimizer.lr=-0.001", "positive")),
        ("optim.optimizer.lr=0", ("optim.optimizer.lr=0", "positive")),
        ("seed=-1", ("seed=-1", "e.g. seed=1")),
        ("trainer.max_epochs=0", ("trainer.max_epochs=0", "at least 1")),
        ("data.split_fractions=[0.7,0.0,0.3]", ("data.split_fractions", "val fraction is 0")),
        ("data.split_fractions=[0.5,0.2,0.2]", ("data.split_fractions", "summing to 1")),
        (
            "selection.monitor=val/source/accuracy",
            ("selection.monitor=val/source/accuracy", "not a logged metric", "val/source/acc"),
        ),
        ("selection.mode=min", ("selection.mode=min", "worst epoch", "selection.mode=max")),
        ("++method.module.transfer_weight=-1", ("method.module.transfer_weight=-1", "0 or more")),
        (
            "selection.monitor=val/validator/nosuch",
            ("selection.monitor=val/validator/nosuch", "not a logged metric", "val/validator/dev"),
        ),
    ],
)
def test_bad_setting_refused_before_training(make_cfg, override, words):
    msg = refused(make_cfg(override), ConfigError)
    one_line(msg, *words)


def test_validator_monitor(make_cfg):
    dev = "selection.monitor=val/validator/dev"
    preflight_config(make_cfg(dev))  # the default callbacks compute it; the mode follows it
    preflight_config(make_cfg(dev, "selection.mode=min"))
    msg = refused(make_cfg(dev, "selection.mode=max"), ConfigError)
    one_line(msg, "keeps the worst epoch", "set selection.mode=min")
    msg = refused(make_cfg(dev, "+callbacks.validators.names=[snd]"), ConfigError)
    one_line(msg, "callbacks.validators.names does not include dev")
    msg = refused(make_cfg(dev, "callbacks.validators=null"), ConfigError)
    one_line(
        msg,
        dev,
        "no validator callback computes it",
        "add callbacks.validators._target_=galda.validators.ValidatorCallback",
    )


def test_config_checks_need_no_data(compose_cfg):
    cfg = compose_cfg("data=simsim", "paths.data_dir=/nonexistent", "seed=-1")
    with pytest.raises(ConfigError, match="seed=-1"):
        preflight_config(cfg)
    preflight_config(compose_cfg("data=simsim", "paths.data_dir=/nonexistent"))  # no file needed


def test_several_problems_listed_together(make_cfg):
    msg = refused(make_cfg("seed=-1", "data.batch_size=0"), ConfigError)
    lines = msg.splitlines()
    assert len(lines) == 2 and "seed=-1" in lines[0] and "data.batch_size=0" in lines[1]


def test_monitor_choices_without_validator_registry():
    keys = loggable_monitors(target_labelled=False)
    assert "val/source/acc" in keys and not any(k.startswith("val/target/") for k in keys)
    assert any(k.startswith("val/validator/") for k in keys)


# ----------------------------------------------------------------------------- data vs config


def test_split_too_small_names_file(make_cfg, tmp_path):
    src, tgt = write_pair(tmp_path / "small", n_galaxies=3)
    msg = refused(make_cfg(files=(src, tgt)), DataError)
    assert str(src) in msg and "val" in msg and "would be empty" in msg
    assert "data.split_fractions" in msg


def test_image_size_against_deepmerge(make_cfg):
    msg = refused(make_cfg("model=deepmerge", size=64), ConfigError)
    one_line(msg, "model.net.image_size=75", "64x64", "set model.net.image_size=64")


def test_bands_against_model(make_cfg):
    msg = refused(make_cfg(channels=4), ConfigError)
    one_line(msg, "model.net.in_channels=3", "4 band(s)", "set model.net.in_channels=4")


def test_model_that_cannot_take_the_images(make_cfg):
    # 6x6 images and a matching image_size: DeepMerge's three poolings leave nothing
    msg = refused(make_cfg("model=deepmerge", "model.net.image_size=6", size=6), ConfigError)
    one_line(msg, "model=deepmerge", "cannot take 3x6x6 images")


def test_target_monitor_needs_target_labels(make_cfg, tmp_path):
    src, tgt = write_pair(tmp_path / "d", labelled_target=False)
    msg = refused(make_cfg("selection.monitor=val/target/acc", files=(src, tgt)), DataError)
    one_line(msg, str(tgt), "selection.monitor=val/target/acc", "needs target labels")


def test_target_monitor_warns_when_labelled(make_cfg, caplog):
    cfg = make_cfg("selection.monitor=val/target/acc")
    with caplog.at_level(logging.WARNING, logger="galda"):
        _train_or_checks_fast(cfg)
    assert "TARGET LABELS" in caplog.text and "‡" in caplog.text


def _train_or_checks_fast(cfg) -> None:
    preflight_config(cfg)
    preflight(cfg, _datamodule(cfg))


def test_oracle_on_unlabelled_target_names_the_file(make_cfg, tmp_path):
    src, tgt = write_pair(tmp_path / "d", labelled_target=False)
    msg = refused(make_cfg("method=oracle", files=(src, tgt)), DataError)
    one_line(msg, str(tgt), "method=oracle", "no", "labelled target file")
    assert "data.target_labels_in_training" not in msg


def test_unlabelled_source_names_the_file(make_cfg, tmp_path):
    src, tgt = write_pair(tmp_path / "d", labelled_source=False)
    msg = refused(make_cfg(files=(src, tgt)), GaldaError)
    assert str(src) in msg and "labels" in msg


def test_swapped_files(make_cfg, tmp_path):
    src, tgt = write_pair(tmp_path / "d")
    msg = refused(make_cfg(files=(tgt, src)), DataError)
    one_line(msg, "swapped", str(src), str(tgt))


def test_file_in_the_wrong_role(make_cfg, tmp_path):
    src, tgt = write_pair(tmp_path / "d", roles=("target", "target"))
    msg = refused(make_cfg(files=(src, tgt)), DataError)
    one_line(msg, str(src), "a target file", "data.source_path")


def test_same_file_for_both_domains(make_cfg, tmp_path):
    src, _ = write_pair(tmp_path / "d")
    msg = refused(make_cfg(files=(src, src)), DataError)
    one_line(
        msg, str(src), "both data.source_path and data.target_path", "data.allow_same_file=true"
    )
    link = tmp_path / "d" / "link.h5"
    link.symlink_to(src)
    msg = refused(make_cfg(files=(src, link)), DataError)
    assert "both data.source_path and data.target_path" in msg
    # allowed when asked for (checked without the DataModule, which takes no such argument yet)
    preflight(make_cfg("data.allow_same_file=true", files=(src, src)))


def test_paired_sizes_differ_warns(make_cfg, caplog):
    cfg = make_cfg(n_target=40)
    with caplog.at_level(logging.WARNING, logger="galda"):
        _train_or_checks_fast(cfg)
    assert "share 30 galaxy ids but differ in size" in caplog.text


def test_good_run_passes_quietly(make_cfg, caplog):
    with caplog.at_level(logging.WARNING, logger="galda"):
        _train_or_checks_fast(make_cfg("model=deepmerge"))
    assert caplog.text == ""


def test_preflight_does_not_move_the_random_stream(make_cfg):
    cfg = make_cfg("model=deepmerge")
    torch.manual_seed(5)
    preflight(cfg)
    after = torch.rand(4)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(4))


def test_split_sizes_from_headers_match_the_datamodule(make_cfg):
    for n_target, seed in ((None, 0), (40, 3)):  # paired, and a target with extra galaxies
        cfg = make_cfg(f"data.split_seed={seed}", n_target=n_target, n_galaxies=33)
        dm = _datamodule(cfg)
        dm.setup("fit")
        files = read_headers(dm.paths)
        assert split_sizes(files, dm.split_fractions, dm.split_seed) == dm.split_sizes


def test_smoke_reasons():
    full = {
        "fast_dev_run": False,
        "limit_train_batches": 1.0,
        "limit_val_batches": 1.0,
        "limit_test_batches": 1.0,
        "max_steps": -1,
    }
    assert smoke_reasons(full) == []
    assert smoke_reasons({**full, "fast_dev_run": True}) == ["trainer.fast_dev_run=True"]
    assert smoke_reasons({**full, "fast_dev_run": 3}) == ["trainer.fast_dev_run=3"]
    assert smoke_reasons({**full, "limit_train_batches": 0.25}) == [
        "trainer.limit_train_batches=0.25"
    ]
    assert smoke_reasons({**full, "limit_val_batches": 2}) == ["trainer.limit_val_batches=2"]
    assert smoke_reasons({**full, "max_steps": 10}) == ["trainer.max_steps=10"]
    assert smoke_reasons(None) == []
