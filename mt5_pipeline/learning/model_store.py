"""Model files: save, load, check and cache them; one champion file per timeframe.

Files in ``MODEL_DIR``, each written to a temporary file and renamed into place, so a
reader never sees half a model:

- ``rf_<tf>-<version>.pkl`` and ``rf_<tf>-<version>.json`` (the sidecar), and
  ``rf_<tf>-<version>-equity.png``: every candidate's own copy, promoted or not;
- ``rf_<tf>.pkl`` and ``rf_<tf>.json`` (``rf_m1.pkl`` for M1, the seed's path): the
  champion, the model that trades. Only a promoted candidate is copied here.

The pickle holds ``{"model": estimator, "meta": sidecar}``. The meta names its
``timeframe`` and ``kind`` (random_forest or hist_gradient_boosting). Loading compares
the meta's feature names, feature-set version and scikit-learn version with this code's
and refuses a mismatch (:class:`ModelMismatchError`).

:func:`load_current` keeps the loaded champion per process and reloads it when the file
is replaced (its inode, mtime or size change). Random forests are asked tree by tree
(:func:`forest_probability_up`), which is ten times faster for one row.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.ensemble import RandomForestClassifier

from mt5_pipeline.clock import iso_z, parse_iso
from mt5_pipeline.learning.flat_forest import FlatForest
from mt5_pipeline.learning.indicators import FEATURE_SET_VERSION, MODEL_FEATURES
from mt5_pipeline.settings import Settings

DEFAULT_TIMEFRAME = "M1"

HOW_TO_TRAIN = (
    "train one: materialize the rf_m1 asset in Dagster (the rf_m1_train_job in the UI, or "
    "`dagster asset materialize -m mt5_pipeline --select rf_m1`), run `mt5-pipeline train`, "
    "or `docker compose run --rm ml-trainer python train_model.py`"
)


class NoModelError(RuntimeError):
    """No trained model in MODEL_DIR; the message says how to train one."""


class ModelMismatchError(RuntimeError):
    """The saved model was trained for other features or another scikit-learn; the message says what differs."""


def model_name(timeframe: str = DEFAULT_TIMEFRAME) -> str:
    """``rf_m1``, ``rf_h1``, ...: the asset key, the file name and the registry's model name."""
    return f"rf_{timeframe.lower()}"


def current_model_path(settings: Settings, timeframe: str = DEFAULT_TIMEFRAME) -> Path:
    """The champion's file for the timeframe (``rf_m1.pkl`` for M1)."""
    return Path(settings.model_dir) / f"{model_name(timeframe)}.pkl"


def sidecar_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity: undefined figures are written as null."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, datetime):
        return iso_z(value)
    return value


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "joblib": joblib.__version__,
    }


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through ``write(file_path)`` to a temp file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict) -> None:
    atomic_write(
        path, lambda tmp: tmp.write_text(json.dumps(finite_or_none(data), indent=2, sort_keys=True), encoding="utf-8")
    )


# ---- the loaded model ------------------------------------------------------------------------


def forest_probability_up(forest: RandomForestClassifier, X: np.ndarray) -> np.ndarray:
    """``forest.predict_proba(X)[:, class 1]``, the same numbers, summed tree by tree.

    For one row ``predict_proba`` spends ~10 ms in per-tree input checks and the joblib
    dispatch, even with ``n_jobs=1``; the trees themselves take ~1 ms. This asks each
    fitted tree directly, as ``predict_proba`` does after its checks.
    """
    classes = list(forest.classes_)
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    if 1 not in classes:
        return np.zeros(len(X32))
    k = classes.index(1)
    total = np.zeros(len(X32))
    for tree in forest.estimators_:
        values = tree.tree_.predict(X32).reshape(len(X32), -1)[:, : len(classes)]
        norm = values.sum(axis=1)
        norm[norm == 0] = 1.0
        total += values[:, k] / norm
    return total / len(forest.estimators_)


def probability_up(estimator: Any, X: np.ndarray) -> np.ndarray:
    """Probability of class 1 from any fitted classifier of ours (zeros if it never saw class 1)."""
    if isinstance(estimator, RandomForestClassifier):
        return forest_probability_up(estimator, X)
    classes = list(estimator.classes_)
    if 1 not in classes:
        return np.zeros(len(X))
    return estimator.predict_proba(np.asarray(X, dtype=np.float64))[:, classes.index(1)]


@dataclass
class LoadedModel:
    forest: Any  # the estimator: a RandomForestClassifier or a HistGradientBoostingClassifier
    meta: dict
    path: Path
    # The forest's trees as flat arrays, built on the first one-row prediction (the live path's).
    _flat: FlatForest | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def version(self) -> str:
        return str(self.meta["version"])

    @property
    def trained_at(self) -> datetime:
        return parse_iso(self.meta["trained_at"])

    @property
    def timeframe(self) -> str:
        return str(self.meta.get("timeframe") or DEFAULT_TIMEFRAME)

    def probability_up(self, X: np.ndarray) -> np.ndarray:
        if len(X) == 1 and isinstance(self.forest, RandomForestClassifier):
            if self._flat is None:
                self._flat = FlatForest(self.forest)
            return np.array([self._flat.probability_up(X[0])])
        return probability_up(self.forest, X)


# ---- save and load ------------------------------------------------------------------------------


def save_model(forest: Any, meta: dict, path: Path) -> Path:
    """Write the model and its JSON sidecar next to it, each atomically."""
    path = Path(path)
    bundle = {"model": forest, "meta": finite_or_none(meta)}
    atomic_write(path, lambda tmp: joblib.dump(bundle, tmp, compress=3))
    write_json(sidecar_path(path), meta)
    return path


def publish_champion(settings: Settings, versioned: Path, timeframe: str = DEFAULT_TIMEFRAME) -> Path:
    """Copy a versioned model and its sidecar over the timeframe's champion file."""
    current = current_model_path(settings, timeframe)
    atomic_write(current, lambda tmp: shutil.copyfile(versioned, tmp))
    atomic_write(sidecar_path(current), lambda tmp: shutil.copyfile(sidecar_path(versioned), tmp))
    return current


def check_compatible(meta: dict, path: Path | str = "") -> None:
    """Raise ModelMismatchError unless the model was trained for this code's features and scikit-learn."""
    problems = []
    names = list(meta.get("feature_names") or [])
    if names != list(MODEL_FEATURES):
        missing = [n for n in MODEL_FEATURES if n not in names]
        extra = [n for n in names if n not in MODEL_FEATURES]
        detail = f"missing {missing}, unknown {extra}" if missing or extra else "same names in another order"
        problems.append(f"feature names differ ({detail})")
    version = str(meta.get("feature_set_version"))
    if version != FEATURE_SET_VERSION:
        problems.append(f"feature set version {version} (this code computes {FEATURE_SET_VERSION})")
    trained_with = str(meta.get("sklearn_version") or meta.get("library_versions", {}).get("sklearn"))
    if trained_with != sklearn.__version__:
        problems.append(f"scikit-learn {trained_with} (installed: {sklearn.__version__})")
    if problems:
        raise ModelMismatchError(
            f"model {path or ''} (version {meta.get('version', '?')}) does not fit this installation: "
            + "; ".join(problems)
            + f". Retrain it: {HOW_TO_TRAIN} (after recomputing features_m1 if the feature set changed)"
        )


def load_model(path: Path | str) -> LoadedModel:
    """Load a saved model and check it; NoModelError if the file is missing, ModelMismatchError if it does not fit."""
    path = Path(path)
    if not path.is_file():
        raise NoModelError(f"no model at {path}; {HOW_TO_TRAIN}")
    try:
        with warnings.catch_warnings():
            # A version mismatch is reported below, from the meta, with a clearer message.
            warnings.simplefilter("ignore")
            bundle = joblib.load(path)
    except Exception as exc:
        raise ModelMismatchError(
            f"model {path} cannot be loaded ({exc.__class__.__name__}: {exc}); retrain it: {HOW_TO_TRAIN}"
        ) from exc
    if not isinstance(bundle, dict) or "model" not in bundle or "meta" not in bundle:
        raise ModelMismatchError(f"{path} is not an rf_m1 bundle; retrain it: {HOW_TO_TRAIN}")
    check_compatible(bundle["meta"], path)
    forest = bundle["model"]
    if hasattr(forest, "n_jobs"):
        forest.n_jobs = 1  # one row at a time: a process pool costs more than it saves
    return LoadedModel(forest=forest, meta=bundle["meta"], path=path)


_cache_lock = threading.Lock()
_cache: dict[str, tuple[tuple[int, int, int], LoadedModel | Exception]] = {}


def load_current(settings: Settings, timeframe: str = DEFAULT_TIMEFRAME) -> LoadedModel:
    """The timeframe's champion, cached per file and reloaded when the file is replaced."""
    path = current_model_path(settings, timeframe).resolve()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NoModelError(f"no trained model: {path} does not exist; {HOW_TO_TRAIN}") from None
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    with _cache_lock:
        hit = _cache.get(str(path))
        if hit is None or hit[0] != key:
            try:
                value: LoadedModel | Exception = load_model(path)
            except (ModelMismatchError, NoModelError) as exc:
                value = exc
            hit = (key, value)
            _cache[str(path)] = hit
    if isinstance(hit[1], Exception):
        raise hit[1]
    return hit[1]


def clear_model_cache() -> None:
    with _cache_lock:
        _cache.clear()


def read_sidecar(path: Path) -> dict | None:
    try:
        return json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def current_model_info(settings: Settings, timeframe: str = DEFAULT_TIMEFRAME) -> dict | None:
    """What /health, the checks and the demo show about the timeframe's champion; None if there is none.

    Read from the sidecar (cheap; no unpickling). ``trained_at`` is a datetime; metrics
    that were undefined (NaN) are None; ``error`` is set when this installation cannot use
    the model (what :class:`ModelMismatchError` would say).
    """
    path = current_model_path(settings, timeframe)
    if not path.is_file():
        return None
    meta = read_sidecar(path)
    if meta is None:
        try:
            meta = load_current(settings, timeframe).meta
        except (NoModelError, ModelMismatchError) as exc:
            return {"version": None, "path": str(path), "error": str(exc), "metrics": {}}
    info = dict(meta)
    try:
        check_compatible(meta, path)
    except ModelMismatchError as exc:  # /health shows it; predict_latest would refuse it
        info["error"] = str(exc)
    info["versioned_path"] = meta.get("path")
    info["path"] = str(path)
    info["trained_at"] = parse_iso(meta["trained_at"]) if meta.get("trained_at") else None
    info.setdefault("metrics", {})
    info.setdefault("timeframe", DEFAULT_TIMEFRAME)
    return info
