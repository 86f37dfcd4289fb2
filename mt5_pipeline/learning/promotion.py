"""Champion and challenger: a retrained model trades only when it is measured better.

Both models are scored on the same rows: the newest evaluation part of the candidate
(after the embargo, so out of sample for it) that is also out of sample for the
champion (at or after the first bar of the champion's own evaluation part: its training
labels all end before that). On those rows, for each model: AUC, log loss, and the
backtest's net pips after spread, each beside its naive baseline (0.5; the training
base rate as a constant probability; random sides on the same bars).

The candidate is promoted when

- it beats every baseline named in ``PROMOTION_REQUIRE`` (default all three), and
- it is not worse than the champion beyond ``PROMOTION_MARGIN``: AUC not lower, log
  loss not higher, by more than the margin. Net pips are shown beside but not compared
  with the champion's: a few hundred trades' sum swings with a handful of stop-outs,
  the ranking metrics do not;

the first model (no champion, or one this code cannot load or score) needs only the
baselines. ``PROMOTION_FORCE`` (or ``mt5-pipeline train --force``) promotes whatever
the scores, recorded as ``forced`` with what the decision would have been.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mt5_pipeline.learning.backtest import run_backtest
from mt5_pipeline.learning.evaluation import classification_metrics
from mt5_pipeline.settings import Settings

# Fewer common rows than this and the champion's scores would be noise: the candidate
# is judged on the baselines alone, and the reason says so.
MIN_COMPARE_ROWS = 100

SCORE_KEYS = ("auc", "log_loss", "net_pips", "trades", "baseline_auc", "baseline_log_loss", "baseline_net_pips", "rows")


@dataclass
class Decision:
    decision: str  # promoted, forced or rejected
    reason: str
    candidate: dict  # SCORE_KEYS on the common window
    champion: dict | None  # the same for the champion, None if there was none to compare
    champion_version: str | None
    window: dict = field(default_factory=dict)  # start, end, rows

    @property
    def promoted(self) -> bool:
        return self.decision in ("promoted", "forced")

    def scores(self) -> dict:
        return {
            "candidate": self.candidate,
            "champion": self.champion,
            "champion_version": self.champion_version,
            "window": self.window,
        }


def window_scores(
    settings: Settings,
    y: np.ndarray,
    probability: np.ndarray,
    rows: pd.DataFrame,
    candles: dict[str, pd.DataFrame],
    *,
    train_positive_rate: float,
) -> dict:
    """AUC, log loss and backtest net pips of ``probability`` on ``rows`` (symbol, ts), with their baselines."""
    m = classification_metrics(
        y,
        probability,
        train_positive_rate=train_positive_rate,
        buy_threshold=settings.signal_buy_threshold,
        sell_threshold=settings.signal_sell_threshold,
    )
    bt = run_backtest(
        candles,
        pd.DataFrame({"symbol": rows["symbol"].to_numpy(), "ts": rows["ts"].array, "probability": probability}),
        settings,
    )
    return {
        "auc": m["auc"],
        "log_loss": m["log_loss"],
        "net_pips": float(bt.summary["total_pips"]),
        "trades": float(bt.summary["trades"]),
        "baseline_auc": m["baseline_auc"],
        "baseline_log_loss": m["baseline_majority_log_loss"],
        "baseline_net_pips": float(bt.summary["baseline_random_total_pips"]),
        "rows": float(len(y)),
    }


def _bad(value: float | None) -> bool:
    return value is None or not math.isfinite(value)


def baseline_failures(scores: dict, required: tuple[str, ...]) -> list[str]:
    """What the candidate does not beat, in words; empty when it beats every required baseline."""
    out = []
    if "auc" in required and (_bad(scores["auc"]) or not scores["auc"] > scores["baseline_auc"]):
        out.append(f"AUC {scores['auc']:.4f} does not beat the baseline {scores['baseline_auc']:.4f}")
    if "log_loss" in required and (_bad(scores["log_loss"]) or not scores["log_loss"] < scores["baseline_log_loss"]):
        out.append(f"log loss {scores['log_loss']:.4f} does not beat the base rate's {scores['baseline_log_loss']:.4f}")
    if "net_pips" in required and not scores["net_pips"] > scores["baseline_net_pips"]:
        out.append(
            f"backtest {scores['net_pips']:.1f} pips after spread does not beat random sides' "
            f"{scores['baseline_net_pips']:.1f}"
        )
    return out


def champion_failures(candidate: dict, champion: dict, margin: float) -> list[str]:
    """Where the candidate is worse than the champion by more than the margin."""
    out = []
    if _bad(candidate["auc"]) or (not _bad(champion["auc"]) and candidate["auc"] < champion["auc"] - margin):
        out.append(f"AUC {candidate['auc']:.4f} is below the champion's {champion['auc']:.4f} by more than {margin}")
    if _bad(candidate["log_loss"]) or (
        not _bad(champion["log_loss"]) and candidate["log_loss"] > champion["log_loss"] + margin
    ):
        out.append(
            f"log loss {candidate['log_loss']:.4f} is above the champion's {champion['log_loss']:.4f} by more than "
            f"{margin}"
        )
    return out


def decide(
    settings: Settings,
    candidate: dict,
    champion: dict | None,
    *,
    champion_version: str | None,
    champion_note: str = "",
    force: bool = False,
    window: dict | None = None,
) -> Decision:
    """Promote, reject or force, with the reason in words."""
    required = tuple(settings.promotion_require)
    problems = baseline_failures(candidate, required)
    if champion is not None:
        problems += champion_failures(candidate, champion, settings.promotion_margin)
    if champion is not None:
        against = f"not worse than champion {champion_version} beyond the margin {settings.promotion_margin}"
    else:
        against = "first model" if not champion_note else champion_note
    beats = (
        f"beats the baselines ({', '.join(required)})"
        if required
        else "no baseline required (PROMOTION_REQUIRE is empty)"
    )
    if force:
        would = "rejected: " + "; ".join(problems) if problems else "promoted anyway"
        return Decision(
            "forced",
            f"forced (PROMOTION_FORCE or --force); on its scores it would have been {would}",
            candidate,
            champion,
            champion_version,
            window or {},
        )
    if problems:
        return Decision(
            "rejected", "rejected: " + "; ".join(problems), candidate, champion, champion_version, window or {}
        )
    return Decision("promoted", f"promoted: {against}; {beats}", candidate, champion, champion_version, window or {})
