"""Every environment variable the pipeline reads, typed and checked once at start.

A bad value stops the program with a message naming the variable: a trading tool that
starts with a silently defaulted threshold is worse than one that does not start.

The declarations are :mod:`.variables` (one field per variable), read by
:mod:`.loading`, held to the cross-field rules of :mod:`.checks`, documented by
:mod:`.docs`; :mod:`.parsers` says what each kind of value may look like. Callers import
every name from here.
"""

from __future__ import annotations

from mt5_pipeline.settings.checks import DEV_API_KEY
from mt5_pipeline.settings.docs import (
    MUST_SET,
    PRODUCTION_EXAMPLE,
    Var,
    config_markdown,
    documented_variables,
    env_example,
)
from mt5_pipeline.settings.loading import SettingsError
from mt5_pipeline.settings.parsers import BASELINE_GATES, MODEL_KINDS
from mt5_pipeline.settings.timeframes import TIMEFRAME_SECONDS
from mt5_pipeline.settings.variables import BAR_AGE_GRACE_SECONDS, Settings, load_settings

__all__ = [
    "BAR_AGE_GRACE_SECONDS",
    "BASELINE_GATES",
    "DEV_API_KEY",
    "MODEL_KINDS",
    "MUST_SET",
    "PRODUCTION_EXAMPLE",
    "TIMEFRAME_SECONDS",
    "Settings",
    "SettingsError",
    "Var",
    "config_markdown",
    "documented_variables",
    "env_example",
    "load_settings",
]
