"""The results schema: atomic, standard JSON, completeness check."""

import json

import numpy as np
import torch

from galda.results import is_complete, read_results, write_results


def test_results_are_standard_json_with_nan_as_null(tmp_path):
    write_results(
        tmp_path,
        {
            "status": "complete",
            "test/source/acc": np.float32(0.75),
            "test/target/auroc": float("nan"),
            "n": torch.tensor(3),
            "nested": {"x": [np.float64(np.inf), 1]},
        },
    )
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    res = json.loads(text)
    assert res["test/source/acc"] == 0.75 and res["test/target/auroc"] is None
    assert res["n"] == 3 and res["nested"]["x"] == [None, 1] and res["schema_version"] == 1
    assert read_results(tmp_path) == res
    assert is_complete(tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_failed_or_partial_results_are_not_complete(tmp_path):
    write_results(tmp_path, {"status": "failed", "error": "boom"})
    assert not is_complete(tmp_path)
    (tmp_path / "results.json").write_text("{trunc")
    assert not is_complete(tmp_path)
