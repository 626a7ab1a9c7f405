"""python -m galda.export: ONNX (run with onnxruntime) and TorchScript files reproduce the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from galda.export import export_model, main
from galda.inference import load_model
from tests.test_predict import make_checkpoint, make_run, raw_images, reference_probs

onnxruntime = pytest.importorskip("onnxruntime")  # the `test` extra installs it


def _onnx_probs(path, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    return session.run(None, {"images": x})[0]


def test_onnx_export_reproduces_probabilities_with_normalisation_and_temperature(tmp_path, capsys):
    import onnx

    ckpt, net = make_checkpoint(tmp_path / "m.ckpt", temperature=1.8)
    out = tmp_path / "m.onnx"
    assert main([str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    assert "max |Δp|" in capsys.readouterr().err
    x = raw_images(13, seed=4)  # raw images: the graph normalises them itself
    got = _onnx_probs(out, x)
    assert got.shape == (13,)
    np.testing.assert_allclose(got, reference_probs(net, x, t=1.8), atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(got, load_model(ckpt)(torch.from_numpy(x)).numpy(), atol=1e-5)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["galda.domain"] == "target" and float(meta["galda.temperature"]) == 1.8
    assert json.loads(meta["galda.image_shape"]) == [3, 20, 20]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_reproduces_probabilities(tmp_path):
    net = make_run(tmp_path / "run", seed=3, temperature=0.7)
    out = tmp_path / "m.pt"
    assert (
        main(
            [
                str(tmp_path / "run"),
                "--format",
                "torchscript",
                "--out",
                str(out),
                "--domain",
                "source",
            ]
        )
        == 0
    )
    extra = {"galda.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    x = raw_images(6, seed=5)
    with torch.no_grad():
        got = loaded(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, reference_probs(net, x, domain=0, t=0.7), atol=1e-5)
    info = json.loads(extra["galda.json"])
    assert info["domain"] == "source" and info["method"] == "dann" and info["seed"] == "3"


def test_export_refuses_without_writing(tmp_path, capsys):
    ckpt, _ = make_checkpoint(tmp_path / "m.ckpt")
    (tmp_path / "taken.onnx").write_bytes(b"keep")
    assert main([str(ckpt), "--format", "onnx", "--out", str(tmp_path / "taken.onnx")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "taken.onnx").read_bytes() == b"keep"
    make_run(tmp_path / "sweep" / "a", seed=1)
    make_run(tmp_path / "sweep" / "b", seed=2)
    rc = main([str(tmp_path / "sweep"), "--format", "onnx", "--out", str(tmp_path / "s.onnx")])
    assert rc == 2
    assert "export one run" in capsys.readouterr().err
    assert not (tmp_path / "s.onnx").exists()


def test_export_check_rejects_a_file_that_differs(tmp_path, monkeypatch):
    import galda.export as export

    ckpt, _ = make_checkpoint(tmp_path / "m.ckpt")
    model = load_model(ckpt)
    monkeypatch.setattr(export, "run_exported", lambda payload, fmt, x: np.zeros(len(x)) - 1)
    from galda.errors import GaldaError

    with pytest.raises(GaldaError, match="differs from the PyTorch one"):
        export_model(model, tmp_path / "bad.pt", "torchscript")
    assert not (tmp_path / "bad.pt").exists()
