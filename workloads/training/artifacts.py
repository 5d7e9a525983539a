"""The model artifact folder a TrainingJob leaves, and the local model store that finds it by name.

Layout (docs/training.md)::

    model.pkl      the fitted qlib model (pickled as qlib's recorder does: Serializable.general_dump)
    handler.pkl    the fitted data handler without its data (qlib's to_pickle): processors' state for scoring
    dataset.yaml   the handler config and segments (readable; rebuilds the handler when handler.pkl is absent)
    metrics.json   TrainingMetrics (camelCase) plus validRankIc and the test days/rows
    trials.csv     one row per trial (and trials.parquet), when tuned
    model.json     the manifest: versions, segments, bundle fingerprint, model class and params, result
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from kubequant.api.modules import DEFAULT_ALLOWED_MODULES, module_allowed
from kubequant.errors import ConfigError, DataError

MODEL = "model.pkl"
HANDLER = "handler.pkl"
DATASET = "dataset.yaml"
METRICS = "metrics.json"
TRIALS_CSV = "trials.csv"
TRIALS_PARQUET = "trials.parquet"
MANIFEST = "model.json"
ARTIFACT_FORMAT = "kubequant-model"
ARTIFACT_FORMAT_VERSION = 1
REQUIRED = (MODEL, DATASET, MANIFEST)
# What a pickled qlib model or handler is built from, besides the run's module allow-list.
PICKLE_MODULES = (
    "builtins",
    "copyreg",
    "collections",
    "datetime",
    "_codecs",
    "numpy",
    "pandas",
    "lightgbm",
    "qlib",
    "kubequant",
    "pathlib",
    "functools",
)


@dataclass
class LoadedModel:
    """An artifact read back: the fitted model, the handler config (and fitted handler), the manifest."""

    model: Any
    handler_config: dict[str, Any]
    manifest: dict[str, Any]
    handler: Any = None
    segments: dict[str, list[str]] | None = None
    path: Path | None = None


def versions() -> dict[str, str]:
    """The versions that produced (or read) an artifact."""
    from importlib.metadata import PackageNotFoundError, version

    from kubequant.version import __version__

    out = {"kubequant": __version__}
    for dist in ("pyqlib", "lightgbm", "ray"):
        try:
            out["qlib" if dist == "pyqlib" else dist] = version(dist)
        except PackageNotFoundError:
            out["qlib" if dist == "pyqlib" else dist] = "not installed"
    return out


def _jsonable(value: Any) -> Any:
    """Params as JSON: numpy scalars become Python numbers, anything else its string."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def write_artifacts(
    out: Path,
    *,
    model: Any,
    dataset: Any,
    handler_config: dict[str, Any],
    segments: dict[str, Any],
    metrics: dict[str, Any],
    manifest: dict[str, Any],
    trials: pd.DataFrame | None = None,
) -> list[Path]:
    """Write the artifact folder (created if missing); model.json last, so its presence means complete."""
    from qlib.utils.serial import Serializable

    out.mkdir(parents=True, exist_ok=True)
    # A folder reused from an earlier run keeps none of its files (an old trials.csv would mislead).
    for name in (MANIFEST, MODEL, HANDLER, DATASET, METRICS, TRIALS_CSV, TRIALS_PARQUET):
        (out / name).unlink(missing_ok=True)
    files = []
    Serializable.general_dump(model, out / MODEL)
    files.append(out / MODEL)
    handler = getattr(dataset, "handler", None)
    if isinstance(handler, Serializable):
        # Without its data (attributes starting with "_"): the processors' fitted state stays.
        handler.to_pickle(out / HANDLER, dump_all=False)
        files.append(out / HANDLER)
    (out / DATASET).write_text(
        yaml.safe_dump(
            {"handler": _jsonable(handler_config), "segments": _jsonable(segments)},
            sort_keys=False,
        )
    )
    files.append(out / DATASET)
    (out / METRICS).write_text(json.dumps(_jsonable(metrics), indent=2, sort_keys=True) + "\n")
    files.append(out / METRICS)
    if trials is not None:
        trials.to_csv(out / TRIALS_CSV, index=False)
        files.append(out / TRIALS_CSV)
        try:
            trials.to_parquet(out / TRIALS_PARQUET, index=False)
            files.append(out / TRIALS_PARQUET)
        except (ValueError, TypeError, ImportError):
            # Mixed-type columns (a choice of strings and numbers) that Arrow refuses: the CSV has them.
            (out / TRIALS_PARQUET).unlink(missing_ok=True)
    full = {
        "format": ARTIFACT_FORMAT,
        "formatVersion": ARTIFACT_FORMAT_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        **manifest,
        "files": sorted(p.name for p in files),
    }
    (out / MANIFEST).write_text(json.dumps(_jsonable(full), indent=2, sort_keys=True) + "\n")
    files.append(out / MANIFEST)
    return files


class _GuardedUnpickler(pickle.Unpickler):
    """Unpickles only classes from the allowed modules: an artifact cannot make this process import others."""

    def __init__(self, file: Any, allowed: Sequence[str], where: str) -> None:
        super().__init__(file)
        self.allowed = tuple(allowed) + PICKLE_MODULES
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        if not module_allowed(module, self.allowed):
            raise DataError(
                f"the pickle refers to {module}.{name}, outside the allowed modules",
                where=self.where,
                fix="use an artifact written by kubequant, or allow the module with --allow-module",
            )
        return super().find_class(module, name)


def _unpickle(path: Path, allowed: Sequence[str]) -> Any:
    try:
        return _GuardedUnpickler(io.BytesIO(path.read_bytes()), allowed, str(path)).load()
    except DataError:
        raise
    except Exception as err:  # a truncated or foreign file raises many types
        raise DataError(
            f"cannot read the pickle ({type(err).__name__}: {err})",
            where=str(path),
            fix="retrain the TrainingJob to write the artifact again",
        ) from err


def load_artifact(path: Path, allowed_modules: Sequence[str] = DEFAULT_ALLOWED_MODULES) -> LoadedModel:
    """Read an artifact folder back: model, handler config and fitted handler, manifest."""
    path = Path(path)
    if not path.is_dir():
        raise DataError("no model artifact folder here", where=str(path), fix="check the path (or retrain)")
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        raise DataError(
            f"incomplete model artifact (missing {', '.join(missing)})",
            where=str(path),
            fix="the training did not finish writing it; rerun the TrainingJob",
        )
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        described = yaml.safe_load((path / DATASET).read_text())
    except (ValueError, yaml.YAMLError) as err:
        raise DataError(
            f"unreadable artifact file ({err})", where=str(path), fix="rerun the TrainingJob"
        ) from err
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        raise DataError(
            f"{MANIFEST} is not a kubequant model manifest",
            where=str(path / MANIFEST),
            fix="rerun the TrainingJob",
        )
    if manifest.get("formatVersion", 0) > ARTIFACT_FORMAT_VERSION:
        raise DataError(
            f"artifact format {manifest.get('formatVersion')} is newer than this kubequant reads "
            f"({ARTIFACT_FORMAT_VERSION})",
            where=str(path / MANIFEST),
            fix="upgrade kubequant",
        )
    handler = _unpickle(path / HANDLER, allowed_modules) if (path / HANDLER).is_file() else None
    return LoadedModel(
        model=_unpickle(path / MODEL, allowed_modules),
        handler_config=(described or {}).get("handler") or {},
        manifest=manifest,
        handler=handler,
        segments=(described or {}).get("segments"),
        path=path,
    )


# --- the local model store -------------------------------------------------------------------


def store_root() -> Path:
    """$KUBEQUANT_MODEL_STORE, default ~/.local/share/kubequant/models."""
    env = os.environ.get("KUBEQUANT_MODEL_STORE")
    return Path(env) if env else Path.home() / ".local" / "share" / "kubequant" / "models"


def _pointer(namespace: str, name: str) -> Path:
    return store_root() / namespace / f"{name}.json"


def register_local(namespace: str, name: str, artifact_dir: Path) -> Path:
    """Record where TrainingJob ``namespace/name``'s artifact is, for a Backtest's modelRef; returns the pointer."""
    pointer = _pointer(namespace, name)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "trainingJob": f"{namespace}/{name}",
        "artifactDir": str(Path(artifact_dir).resolve()),
        "registered": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    tmp = pointer.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    tmp.replace(pointer)
    return pointer


def resolve_local(namespace: str, name: str, where: str = "spec.signal.modelRef") -> Path:
    """The artifact folder registered for TrainingJob ``namespace/name`` (a clear error when there is none)."""
    pointer = _pointer(namespace, name)
    if not pointer.is_file():
        raise ConfigError(
            f"no trained model for TrainingJob {namespace}/{name} in the local model store ({store_root()})",
            where=where,
            fix=f"run `kubequant run -f <the TrainingJob {name}'s manifest>` first",
        )
    try:
        target = Path(json.loads(pointer.read_text())["artifactDir"])
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"unreadable model store entry ({err})", where=str(pointer), fix=f"rerun the TrainingJob {name}"
        ) from err
    if not (target / MANIFEST).is_file():
        raise DataError(
            f"the model of TrainingJob {namespace}/{name} is gone from {target}",
            where=where,
            fix=f"run `kubequant run -f <the TrainingJob {name}'s manifest>` again",
        )
    return target
