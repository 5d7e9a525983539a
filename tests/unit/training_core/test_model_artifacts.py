"""The model artifact folder: written and read back whole, refused when incomplete, foreign or unsafe."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from kubequant.errors import ConfigError, DataError
from kubequant.workloads.training import artifacts

pytestmark = pytest.mark.unit


def _fitted_model() -> object:
    """A qlib LGBModel whose booster was trained on a small random problem (no qlib data needed)."""
    from qlib.contrib.model.gbdt import LGBModel

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = x[:, 0] * 0.5 + rng.normal(scale=0.1, size=400)
    model = LGBModel(num_boost_round=5, num_leaves=4, verbosity=-1)
    model.model = lgb.train(model.params, lgb.Dataset(x, label=y), num_boost_round=5)
    return model, x


def _write(out: Path, trials: pd.DataFrame | None = None) -> tuple[object, np.ndarray]:
    model, x = _fitted_model()
    artifacts.write_artifacts(
        out,
        model=model,
        dataset=None,
        handler_config={
            "class": "Alpha158",
            "module_path": "qlib.contrib.data.handler",
            "kwargs": {"instruments": "all"},
        },
        segments={
            "train": ("2020-01-01", "2020-06-30"),
            "valid": ("2020-07-01", "2020-09-30"),
            "test": ("2020-10-01", "2020-12-31"),
        },
        metrics={"ic": 0.05, "validIc": np.float64(0.04)},
        manifest={"model": {"class": "LGBModel", "params": {"num_leaves": np.int64(4)}}},
        trials=trials,
    )
    return model, x


def test_round_trip_keeps_model_handler_config_and_manifest(tmp_path: Path) -> None:
    trials = pd.DataFrame({"trial_id": ["a", "b"], "status": ["TERMINATED", "ERROR"], "metric": [0.1, None]})
    model, x = _write(tmp_path / "art", trials)
    loaded = artifacts.load_artifact(tmp_path / "art")
    np.testing.assert_allclose(loaded.model.model.predict(x), model.model.predict(x))
    assert loaded.handler_config["class"] == "Alpha158"
    assert loaded.segments["valid"] == ["2020-07-01", "2020-09-30"]
    assert loaded.handler is None  # no dataset given, so no fitted handler
    manifest = loaded.manifest
    assert manifest["format"] == artifacts.ARTIFACT_FORMAT
    assert manifest["model"]["params"]["num_leaves"] == 4
    assert set(manifest["versions"]) == {"kubequant", "qlib", "lightgbm", "ray"}
    assert manifest["files"] == sorted(
        ["model.pkl", "dataset.yaml", "metrics.json", "trials.csv", "trials.parquet"]
    )
    assert json.loads((tmp_path / "art" / "metrics.json").read_text()) == {"ic": 0.05, "validIc": 0.04}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "art" / "trials.parquet"), trials)
    assert list(pd.read_csv(tmp_path / "art" / "trials.csv")["trial_id"]) == ["a", "b"]


@pytest.mark.parametrize("missing", ["model.pkl", "model.json", "dataset.yaml"])
def test_incomplete_artifact_is_refused_with_the_missing_file(tmp_path: Path, missing: str) -> None:
    _write(tmp_path / "art")
    (tmp_path / "art" / missing).unlink()
    with pytest.raises(DataError, match=missing.replace(".", r"\.")):
        artifacts.load_artifact(tmp_path / "art")


def test_a_folder_that_is_not_an_artifact_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no model artifact folder"):
        artifacts.load_artifact(tmp_path / "nowhere")
    _write(tmp_path / "art")
    (tmp_path / "art" / "model.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DataError, match="not a kubequant model manifest"):
        artifacts.load_artifact(tmp_path / "art")


def test_a_newer_artifact_format_asks_for_an_upgrade(tmp_path: Path) -> None:
    _write(tmp_path / "art")
    manifest = json.loads((tmp_path / "art" / "model.json").read_text())
    manifest["formatVersion"] = artifacts.ARTIFACT_FORMAT_VERSION + 1
    (tmp_path / "art" / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="upgrade kubequant"):
        artifacts.load_artifact(tmp_path / "art")


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_a_pickle_naming_a_module_outside_the_allow_list_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "art")
    (tmp_path / "art" / "model.pkl").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(DataError, match=r"(posix|os)\.system, outside the allowed modules"):
        artifacts.load_artifact(tmp_path / "art")


def test_a_truncated_pickle_is_a_clear_error(tmp_path: Path) -> None:
    _write(tmp_path / "art")
    data = (tmp_path / "art" / "model.pkl").read_bytes()
    (tmp_path / "art" / "model.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot read the pickle.*retrain"):
        artifacts.load_artifact(tmp_path / "art")


def test_store_registers_and_resolves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEQUANT_MODEL_STORE", str(tmp_path / "store"))
    _write(tmp_path / "art")
    pointer = artifacts.register_local("research", "lgb", tmp_path / "art")
    assert pointer == tmp_path / "store" / "research" / "lgb.json"
    assert artifacts.resolve_local("research", "lgb") == (tmp_path / "art").resolve()


def test_store_default_location(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBEQUANT_MODEL_STORE", raising=False)
    assert artifacts.store_root() == Path.home() / ".local" / "share" / "kubequant" / "models"


def test_store_names_the_field_and_the_fix_when_the_model_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBEQUANT_MODEL_STORE", str(tmp_path / "store"))
    with pytest.raises(ConfigError) as err:
        artifacts.resolve_local("default", "never-trained")
    line = err.value.one_line()
    assert line.startswith("spec.signal.modelRef: ")
    assert "default/never-trained" in line and "run `kubequant run -f" in line


def test_store_entry_whose_folder_is_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEQUANT_MODEL_STORE", str(tmp_path / "store"))
    artifacts.register_local("default", "gone", tmp_path / "deleted")
    with pytest.raises(DataError, match="is gone from"):
        artifacts.resolve_local("default", "gone")
    (tmp_path / "store" / "default" / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="unreadable model store entry"):
        artifacts.resolve_local("default", "broken")


def test_a_reused_folder_keeps_no_file_of_the_earlier_run(tmp_path: Path) -> None:
    trials = pd.DataFrame({"trial_id": ["a"], "status": ["TERMINATED"], "metric": [0.1]})
    _write(tmp_path / "art", trials)
    _write(tmp_path / "art")  # a second run, without a search
    assert not (tmp_path / "art" / "trials.csv").exists()
    assert not (tmp_path / "art" / "trials.parquet").exists()
    assert "trials.csv" not in artifacts.load_artifact(tmp_path / "art").manifest["files"]
