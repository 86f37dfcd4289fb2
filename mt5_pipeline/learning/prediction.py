"""What a model says about one closed bar: the value the signal rules decide on.

Its own module, not model.py's: the decision (signals.py) and the API read it without
importing scikit-learn and joblib.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

MODEL_NAME = "rf_m1"  # the seed's name for the M1 model; other timeframes name theirs


@dataclass(frozen=True)
class Prediction:
    symbol: str
    timeframe: str
    ts: datetime  # bar open time
    close: float
    probability: float  # of class 1: the price goes up (horizon) / a long wins (triple_barrier)
    model_version: str
    model_trained_at: datetime
    label_mode: str
    label_horizon: int
    model: str = MODEL_NAME
