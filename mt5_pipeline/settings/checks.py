"""Rules across variables, checked once every value has parsed: each broken rule names its variables."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mt5_pipeline.settings.loading import SettingsError

if TYPE_CHECKING:  # the settings call these checks; only their type is needed here
    from mt5_pipeline.settings.variables import Settings

# The seed's example key. Accepted in development so the seed's curl examples work as
# written; refused in production.
DEV_API_KEY = "mt5_trading_secure_key_2025_prod"


def check(settings: Settings) -> None:
    """Cross-field rules; raise SettingsError naming the variables."""
    errors = [
        *_thresholds(settings),
        *_ports(settings),
        *_positive(settings),
        *_ranges(settings),
        *_production(settings),
    ]
    if errors:
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(errors))


def _broken(rules: list[tuple[bool, str]]) -> list[str]:
    return [message for ok, message in rules if not ok]


def _thresholds(s: Settings) -> list[str]:
    rules = [
        (0.0 <= value <= 1.0, f"{name}: must be between 0 and 1, got {value}")
        for name, value in (
            ("SIGNAL_BUY_THRESHOLD", s.signal_buy_threshold),
            ("SIGNAL_SELL_THRESHOLD", s.signal_sell_threshold),
        )
    ]
    rules.append(
        (
            s.signal_buy_threshold > s.signal_sell_threshold,
            f"SIGNAL_BUY_THRESHOLD ({s.signal_buy_threshold}) must be greater than SIGNAL_SELL_THRESHOLD "
            f"({s.signal_sell_threshold})",
        )
    )
    return _broken(rules)


def _ports(s: Settings) -> list[str]:
    return _broken(
        [
            (0 < value < 65536, f"{env}: must be a TCP port between 1 and 65535, got {value}")
            for env, value in (
                ("API_PORT", s.api_port),
                ("EA_SERVER_PORT", s.ea_server_port),
                ("BRIDGE_PORT", s.bridge_port),
            )
        ]
    )


def _positive(s: Settings) -> list[str]:
    values: tuple[tuple[str, float], ...] = (
        ("EA_PUSH_INTERVAL", s.ea_push_interval),
        ("EA_REQUEST_TIMEOUT", s.ea_request_timeout),
        ("EA_BATCH_SIZE", s.ea_batch_size),
        ("EA_MAX_ATTEMPTS", s.ea_max_attempts),
        ("SIGNAL_TTL_SECONDS", s.signal_ttl_seconds),
        ("MODEL_MAX_AGE_HOURS", s.model_max_age_hours),
        ("DEFAULT_SL_PIPS", s.default_sl_pips),
        ("DEFAULT_TP_PIPS", s.default_tp_pips),
        ("LABEL_HORIZON_BARS", s.label_horizon_bars),
        ("LABEL_MAX_HOLD_BARS", s.label_max_hold_bars),
        ("RF_N_ESTIMATORS", s.rf_n_estimators),
        ("RF_MAX_DEPTH", s.rf_max_depth),
        ("RF_MIN_SAMPLES_LEAF", s.rf_min_samples_leaf),
        ("API_MAX_BODY_BYTES", s.api_max_body_bytes),
        ("LIVE_POLL_SECONDS", s.live_poll_seconds),
        ("LIVE_WORKER_THREADS", s.live_worker_threads),
        ("LIVE_PROCESSES", s.live_processes),
        ("LIVE_LEASE_SECONDS", s.live_lease_seconds),
        ("BRIDGE_HISTORY_BARS", s.bridge_history_bars),
        ("BRIDGE_LOTS", s.bridge_lots),
        ("BRIDGE_POLL_INTERVAL", s.bridge_poll_interval),
        ("HGB_MAX_ITER", s.hgb_max_iter),
        ("HGB_LEARNING_RATE", s.hgb_learning_rate),
        ("DRIFT_WINDOW_HOURS", s.drift_window_hours),
        ("DRIFT_PSI_WARN", s.drift_psi_warn),
        ("DRIFT_SIGNAL_SHARE_WARN", s.drift_signal_share_warn),
    )
    return _broken([(value > 0, f"{env}: must be greater than 0, got {value}") for env, value in values])


def _ranges(s: Settings) -> list[str]:
    rules = [
        (
            0 <= s.live_close_grace_seconds < 60,
            f"LIVE_CLOSE_GRACE_SECONDS: must be between 0 and 60, got {s.live_close_grace_seconds}",
        )
    ]
    if s.bridge_risk_percent is not None:
        rules.append(
            (
                0 < s.bridge_risk_percent <= 10,
                f"BRIDGE_RISK_PERCENT: must be above 0 and at most 10, got {s.bridge_risk_percent}",
            )
        )
    rules += [
        (s.bridge_magic >= 0, f"BRIDGE_MAGIC: must be 0 or more, got {s.bridge_magic}"),
        (s.bridge_deviation >= 0, f"BRIDGE_DEVIATION: must be 0 or more, got {s.bridge_deviation}"),
        (bool(s.bridge_symbols), "BRIDGE_SYMBOLS: name at least one symbol"),
        (
            s.price_max_jump == 0 or s.price_max_jump > 1,
            f"PRICE_MAX_JUMP: must be greater than 1 (or 0 to turn the check off), got {s.price_max_jump}",
        ),
        (s.promotion_margin >= 0, f"PROMOTION_MARGIN: must be 0 or more, got {s.promotion_margin}"),
        (0 < s.rf_max_samples <= 1, f"RF_MAX_SAMPLES: must be in (0, 1], got {s.rf_max_samples}"),
    ]
    if s.signal_max_bar_age_seconds is not None:
        rules.append(
            (
                s.signal_max_bar_age_seconds > 0,
                f"SIGNAL_MAX_BAR_AGE_SECONDS: must be greater than 0, got {s.signal_max_bar_age_seconds}",
            )
        )
    rules.append(
        (
            bool(re.match(r"^[A-Za-z0-9_.\-]+$", s.ea_server_ip)),
            f"EA_SERVER_IP: not a host name or address: {s.ea_server_ip!r}",
        )
    )
    return _broken(rules)


def _production(s: Settings) -> list[str]:
    if s.mt5_env != "production":
        return []
    return _broken(
        [
            (bool(s.api_keys), "API_KEYS: must be set when MT5_ENV=production (no key would leave the API open)"),
            (
                DEV_API_KEY not in s.api_keys,
                "API_KEYS: the seed's example key is for local development only; set your own when MT5_ENV=production",
            ),
            (
                s.ea_api_key != DEV_API_KEY,
                "EA_API_KEY: the seed's example key is for local development only; set your own when "
                "MT5_ENV=production",
            ),
            # The EA authenticates the pusher with this key; an empty one is a forgotten
            # setting, found here rather than as a 401 on the first signal.
            (
                bool(s.ea_api_key) or not s.ea_push_enabled,
                "EA_API_KEY: must be set when MT5_ENV=production and EA_PUSH_ENABLED=true (the key your EA expects in "
                "X-API-Key)",
            ),
        ]
    )
