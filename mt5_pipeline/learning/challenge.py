"""Champion and challenger: the candidate and the current champion scored on the same
newest out-of-sample rows, and the decision (``promotion.py`` holds the rules).

The rows are the candidate's evaluation part from the start of the champion's own
evaluation window (else the end of its training window) onwards, so neither model is
judged on rows it learnt from; when that leaves too few rows, or the champion cannot be
loaded here, the candidate is judged on the baselines alone and the decision says why.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mt5_pipeline.clock import iso_z
from mt5_pipeline.learning.cross_validation import CrossValidation
from mt5_pipeline.learning.evaluation import Fold
from mt5_pipeline.learning.model_store import (
    LoadedModel,
    ModelMismatchError,
    NoModelError,
    current_model_path,
    load_model,
)
from mt5_pipeline.learning.promotion import MIN_COMPARE_ROWS, Decision, decide, window_scores
from mt5_pipeline.learning.training_set import TrainingSet, ns_to_datetime
from mt5_pipeline.settings import Settings


def _champion(settings: Settings, timeframe: str) -> tuple[LoadedModel | None, str]:
    """The current champion, or None and why it cannot be compared."""
    try:
        return load_model(current_model_path(settings, timeframe)), ""
    except NoModelError:
        return None, ""
    except ModelMismatchError as exc:
        return (
            None,
            f"the champion cannot be used by this installation ({str(exc).split('. Retrain')[0]}), "
            "judged on the baselines alone",
        )


def challenge(
    settings: Settings,
    data: TrainingSet,
    X: np.ndarray,
    y: np.ndarray,
    ts_ns: np.ndarray,
    main: Fold,
    cv: CrossValidation,
    main_backtest: dict,
    *,
    timeframe: str,
    force: bool,
) -> Decision:
    """Score the candidate and the champion on the same newest out-of-sample rows and decide."""
    champion, note = _champion(settings, timeframe)
    positions = main.test
    champion_version = champion.version if champion is not None else None
    if champion is not None:
        start = (champion.meta.get("evaluation_window") or [None])[0] or (
            champion.meta.get("train_window") or [None, None]
        )[1]
        start_ns = pd.Timestamp(start).as_unit("ns").value if start else None
        if start_ns is not None:
            positions = main.test[ts_ns[main.test] >= start_ns]
        if len(positions) < MIN_COMPARE_ROWS:
            note = (
                f"champion {champion.version} has only {len(positions)} out-of-sample rows "
                "in the candidate's evaluation part "
                f"(need {MIN_COMPARE_ROWS}), judged on the baselines alone"
            )
            champion, positions = None, main.test
    train_rate = float(cv.metrics["train_positive_rate"])
    rows = data.frame.iloc[positions]
    if len(positions) == len(main.test):
        m = cv.metrics
        candidate = {
            "auc": m["auc"],
            "log_loss": m["log_loss"],
            "net_pips": float(main_backtest["total_pips"]),
            "trades": float(main_backtest["trades"]),
            "baseline_auc": m["baseline_auc"],
            "baseline_log_loss": m["baseline_majority_log_loss"],
            "baseline_net_pips": float(main_backtest["baseline_random_total_pips"]),
            "rows": float(len(positions)),
        }
    else:
        p = cv.test_probability[np.searchsorted(main.test, positions)]
        candidate = window_scores(settings, y[positions], p, rows, data.candles, train_positive_rate=train_rate)
    champion_scores = None
    if champion is not None:
        champion_scores = window_scores(
            settings,
            y[positions],
            champion.probability_up(X[positions]),
            rows,
            data.candles,
            train_positive_rate=train_rate,
        )
    window = {
        "start": iso_z(ns_to_datetime(ts_ns[positions[0]])),
        "end": iso_z(ns_to_datetime(ts_ns[positions[-1]])),
        "rows": int(len(positions)),
    }
    return decide(
        settings,
        candidate,
        champion_scores,
        champion_version=champion_version,
        champion_note=note,
        force=force,
        window=window,
    )
