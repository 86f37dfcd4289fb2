"""Every environment variable the pipeline reads, typed and checked once at start.

A bad value stops the program with a message naming the variable: a trading tool that
starts with a silently defaulted threshold is worse than one that does not start.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# The seed's example key. Accepted in development so the seed's curl examples work as
# written; refused in production.
DEV_API_KEY = "mt5_trading_secure_key_2025_prod"

TIMEFRAME_SECONDS: dict[str, int] = {
    "M1": 60,
    "M5": 300,
    "M15": 900,
    "M30": 1800,
    "H1": 3600,
    "H4": 14400,
    "D1": 86400,
    "W1": 604800,
    "MN1": 2592000,  # nominal; months are aligned by calendar, not by this figure
}

# Grace on top of two bars before the feed counts as stalled: the EA posts a bar a few
# seconds after it closes, and clocks drift a little.
BAR_AGE_GRACE_SECONDS = 30


class SettingsError(ValueError):
    """One or more environment variables are invalid; the message names each."""


@dataclass(frozen=True)
class Var:
    """Documentation of one variable: the README and `.env.example` are checked against these."""

    name: str
    default: str
    meaning: str


def _str(raw: str) -> str:
    return raw.strip()


def _int(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError(f"expected a whole number, got {raw!r}") from None


def _float(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError(f"expected a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"expected a finite number, got {raw!r}")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _keys(raw: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def _http_url(raw: str) -> str:
    value = raw.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {value!r}")
    try:
        _ = parts.port  # raises on a non-numeric port
    except ValueError:
        raise ValueError(f"the port in {value!r} is not a number") from None
    return value


def _db_url(raw: str) -> str:
    value = raw.strip()
    if not re.match(r"^(sqlite|postgres|postgresql)(\+\w+)?://", value):
        raise ValueError("expected a SQLAlchemy URL such as sqlite:///./data/mt5.db or postgresql://user@host:5432/db")
    return value


def _symbol_map(parse_value: Callable[[str], Any]) -> Callable[[str], dict[str, Any]]:
    """Parse ``EURUSD=..., USDJPY=...`` into a dict keyed by upper-case symbol."""

    def parse(raw: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for item in (i.strip() for i in raw.split(",")):
            if not item:
                continue
            if "=" not in item:
                raise ValueError(f"expected SYMBOL=value items separated by commas, got {item!r}")
            symbol, value = (s.strip() for s in item.split("=", 1))
            out[symbol.upper()] = parse_value(value)
        return out

    return parse


def _sl_tp(raw: str) -> tuple[float, float]:
    parts = raw.split("/")
    if len(parts) != 2:
        raise ValueError(f"expected SL/TP in pips like 20/40, got {raw!r}")
    sl, tp = (_float(p) for p in parts)
    if sl <= 0 or tp <= 0:
        raise ValueError(f"pips must be positive, got {raw!r}")
    return sl, tp


def _label_mode(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("horizon", "triple_barrier"):
        raise ValueError(f"expected horizon or triple_barrier, got {raw!r}")
    return value


def _env_name(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("development", "production"):
        raise ValueError(f"expected development or production, got {raw!r}")
    return value


def _opt(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An optional variable: empty means unset."""
    return lambda raw: parse(raw) if raw.strip() else None


def _cron(raw: str) -> str:
    value = raw.strip()
    if len(value.split()) != 5:
        raise ValueError(f"expected a 5-field cron expression like '0 3 * * *', got {raw!r}")
    return value


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {raw!r}")
    return value


def _bridge_mode(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("push", "pull"):
        raise ValueError(f"expected push or pull, got {raw!r}")
    return value


def _offset_hours(raw: str) -> float | None:
    """``auto`` (None: measured from the terminal) or hours such as 2, 3 or -4."""
    if raw.strip().lower() in ("", "auto"):
        return None
    value = _float(raw)
    if not -12 <= value <= 14:
        raise ValueError(f"expected auto or hours between -12 and 14, got {raw!r}")
    return value


def _server_zone(raw: str) -> str | None:
    """``auto`` (None) or a zone server_time.parse_zone reads, kept as its normal name."""
    if raw.strip().lower() in ("", "auto"):
        return None
    from mt5_pipeline.server_time import parse_zone  # numpy/pandas only when a zone is set

    return parse_zone(raw).name


MODEL_KINDS = ("random_forest", "hist_gradient_boosting")
BASELINE_GATES = ("auc", "log_loss", "net_pips")


def _model_kind(raw: str) -> str:
    value = raw.strip().lower()
    if value not in MODEL_KINDS:
        raise ValueError(f"expected one of {', '.join(MODEL_KINDS)}, got {raw!r}")
    return value


def _baselines(raw: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(i.strip().lower() for i in raw.split(",") if i.strip()))
    unknown = [i for i in items if i not in BASELINE_GATES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; expected some of {', '.join(BASELINE_GATES)}")
    return items


def _entry_policy(raw: str) -> str:
    value = raw.strip().lower()
    choices = ("one_per_symbol_timeframe", "stack", "reverse")  # execution_policy.ENTRY_POLICIES
    if value not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
    return value


def _timeframes(raw: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(i.strip().upper() for i in raw.split(",") if i.strip()))
    if not items:
        raise ValueError("expected at least one timeframe, e.g. M1 or M1,H1")
    unknown = [i for i in items if i not in TIMEFRAME_SECONDS]
    if unknown:
        raise ValueError(f"unknown timeframe(s) {unknown}; expected some of {', '.join(TIMEFRAME_SECONDS)}")
    return items


def _setting(env: str, default: str, meaning: str, parse: Callable[[str], Any] = _str) -> Any:
    return field(metadata={"env": env, "default": default, "meaning": meaning, "parse": parse})


@dataclass(frozen=True)
class Settings:
    """The whole configuration. Build it with :func:`load_settings` (or ``Settings.from_env``)."""

    database_url: str = _setting(
        "DATABASE_URL",
        "sqlite:///./data/mt5.db",
        "market data, features, queue, acks (SQLAlchemy URL; postgresql:// means psycopg2)",
        _db_url,
    )
    mt5_env: str = _setting(
        "MT5_ENV", "development", "`production` refuses to start with no API key or the seed's example key", _env_name
    )
    api_keys: tuple[str, ...] = _setting(
        "API_KEYS",
        "",
        "inbound keys for X-API-Key, comma-separated for rotation; empty in development means the seed's example key",
        _keys,
    )
    api_host: str = _setting("API_HOST", "127.0.0.1", "where `mt5-pipeline serve` listens")
    api_port: int = _setting("API_PORT", "18001", "port of `mt5-pipeline serve`", _int)
    api_max_body_bytes: int = _setting(
        "API_MAX_BODY_BYTES",
        "33554432",
        "largest request body the API reads (32 MiB: about 150,000 candles); larger gets 413",
        _int,
    )
    metrics_public: bool = _setting(
        "METRICS_PUBLIC", "false", "serve /metrics without X-API-Key (only for a scraper on a private network)", _bool
    )
    ea_server_ip: str = _setting("EA_SERVER_IP", "127.0.0.1", "EA host (the seed's 192.168.15.18 is an example)")
    ea_server_port: int = _setting("EA_SERVER_PORT", "8080", "EA port", _int)
    ea_server_url_override: str | None = _setting(
        "EA_SERVER_URL", "", "full EA signals URL, https:// allowed; overrides EA_SERVER_IP/PORT", _opt(_http_url)
    )
    ea_api_key: str = _setting("EA_API_KEY", "", "key sent to the EA as X-API-Key")
    ea_ca_bundle: str | None = _setting(
        "EA_CA_BUNDLE",
        "",
        "CA bundle file for an EA behind a self-signed certificate (verification stays on)",
        _opt(_str),
    )
    ea_push_interval: float = _setting("EA_PUSH_INTERVAL", "30", "seconds between push cycles", _float)
    ea_push_enabled: bool = _setting(
        "EA_PUSH_ENABLED", "true", "automatic pushing on/off (off = pull mode: the EA polls GET /ea/signals)", _bool
    )
    ea_request_timeout: float = _setting(
        "EA_REQUEST_TIMEOUT", "10", "overall deadline in seconds per EA request", _float
    )
    ea_batch_size: int = _setting("EA_BATCH_SIZE", "100", "most signals per push cycle", _int)
    ea_max_attempts: int = _setting(
        "EA_MAX_ATTEMPTS",
        "5",
        "failed sends charged to one signal (it failed while the EA accepted others) before it is FAILED; an EA outage charges none",
        _int,
    )
    signal_ttl_seconds: int = _setting(
        "SIGNAL_TTL_SECONDS", "60", "a signal not delivered this long after its bar closed is EXPIRED, never sent", _int
    )
    signal_max_bar_age_seconds: int | None = _setting(
        "SIGNAL_MAX_BAR_AGE_SECONDS",
        "",
        "no signal when the newest closed bar opened longer ago than this (empty: two bars + 30 s, per timeframe); a bar past its close + SIGNAL_TTL_SECONDS is refused as too late whatever this says",
        _opt(_int),
    )
    live_close_grace_seconds: float = _setting(
        "LIVE_CLOSE_GRACE_SECONDS",
        "2",
        "the live worker waits this long after a bar's close for its final version before signalling the stored (last forming) version",
        _float,
    )
    live_processes: int = _setting(
        "LIVE_PROCESSES",
        "1",
        "processes `mt5-pipeline live` runs on this host (one per spare core), sharing the series by leases on PostgreSQL with every other worker, by hash on SQLite",
        _int,
    )
    live_worker_threads: int = _setting(
        "LIVE_WORKER_THREADS",
        "4",
        "symbols the live worker decides at once (most of a decision is waiting for the database)",
        _int,
    )
    live_lease_seconds: float = _setting(
        "LIVE_LEASE_SECONDS",
        "4",
        "on PostgreSQL, live workers (any host) share the series by leases of this length: a dead worker's series are taken over within it plus a quarter of it",
        _float,
    )
    live_poll_seconds: float = _setting(
        "LIVE_POLL_SECONDS",
        "0.25",
        "how often the live worker looks for closed bars without LISTEN/NOTIFY (SQLite), and its safety-net poll on PostgreSQL (x20)",
        _float,
    )
    model_max_age_hours: float = _setting(
        "MODEL_MAX_AGE_HOURS", "48", "no signal from a model older than this (two missed daily retrains)", _float
    )
    signal_buy_threshold: float = _setting(
        "SIGNAL_BUY_THRESHOLD", "0.55", "probability at or above which a BUY is generated", _float
    )
    signal_sell_threshold: float = _setting(
        "SIGNAL_SELL_THRESHOLD", "0.45", "probability at or below which a SELL is generated", _float
    )
    default_sl_pips: float = _setting("DEFAULT_SL_PIPS", "20", "stop-loss in pips", _float)
    default_tp_pips: float = _setting("DEFAULT_TP_PIPS", "40", "take-profit in pips", _float)
    symbol_sl_tp_pips: dict = _setting(
        "SYMBOL_SL_TP_PIPS", "", "per-symbol SL/TP overrides, e.g. USDJPY=25/50,XAUUSD=300/600", _symbol_map(_sl_tp)
    )
    pip_sizes: dict = _setting(
        "PIP_SIZES",
        "",
        "per-symbol pip sizes, e.g. XAUUSD=0.1,US30=1; otherwise currency pairs 0.0001 (JPY 0.01), other symbols from the EA's digits/point in POST /ingest, else no signals",
        _symbol_map(_float),
    )
    price_max_jump: float = _setting(
        "PRICE_MAX_JUMP",
        "10",
        "a candle this many times above or below the level of the bars around it is rejected at ingest as a bad tick (0: off)",
        _float,
    )
    model_dir: Path = _setting(
        "MODEL_DIR",
        "./models",
        "rf_m1.pkl (rf_<tf>.pkl per timeframe: the champions), every candidate's versioned copy and their JSON sidecars",
        lambda raw: Path(raw.strip()),
    )
    label_mode: str = _setting(
        "LABEL_MODE",
        "horizon",
        "horizon: close N bars ahead above close now; triple_barrier: TP hit before SL",
        _label_mode,
    )
    label_horizon_bars: int = _setting(
        "LABEL_HORIZON_BARS", "5", "bars ahead for the horizon label (and the train/test embargo)", _int
    )
    label_max_hold_bars: int = _setting(
        "LABEL_MAX_HOLD_BARS",
        "60",
        "longest holding time in bars: triple-barrier labels, the backtest, and the time exit live (closed at that bar's close)",
        _int,
    )
    entry_policy: str = _setting(
        "ENTRY_POLICY",
        "one_per_symbol_timeframe",
        "which signals open a position (backtest and live alike, docs/trades.md): one_per_symbol_timeframe (skip while one is open), stack (every signal), reverse (an opposite signal closes and reverses)",
        _entry_policy,
    )
    rf_n_estimators: int = _setting("RF_N_ESTIMATORS", "100", "trees in the random forest", _int)
    rf_max_depth: int = _setting(
        "RF_MAX_DEPTH", "12", "depth bound per tree (keeps training time and file size in check)", _int
    )
    rf_min_samples_leaf: int = _setting(
        "RF_MIN_SAMPLES_LEAF", "50", "smallest leaf; larger is smoother and smaller", _int
    )
    rf_max_samples: float = _setting("RF_MAX_SAMPLES", "0.1", "share of training rows each tree draws (0..1]", _float)
    rf_random_state: int = _setting(
        "RF_RANDOM_STATE", "42", "seed, so a retrain on the same data gives the same model", _int
    )
    model_kind: str = _setting(
        "MODEL_KIND",
        "random_forest",
        "random_forest (the seed's) or hist_gradient_boosting (scikit-learn's HistGradientBoostingClassifier), same evaluation and promotion",
        _model_kind,
    )
    hgb_max_iter: int = _setting(
        "HGB_MAX_ITER",
        "100",
        "boosting rounds of hist_gradient_boosting (no early stopping: it would validate on a random, not time-ordered, tenth)",
        _int,
    )
    hgb_learning_rate: float = _setting("HGB_LEARNING_RATE", "0.05", "learning rate of hist_gradient_boosting", _float)
    promotion_margin: float = _setting(
        "PROMOTION_MARGIN",
        "0.005",
        "a candidate replaces the champion unless its AUC is lower, or its log loss higher, than the champion's by more than this (same window)",
        _float,
    )
    promotion_require: tuple[str, ...] = _setting(
        "PROMOTION_REQUIRE",
        "auc,log_loss,net_pips",
        "baselines a candidate must beat to be promoted: auc (0.5), log_loss (the base rate's), net_pips (random sides, after spread)",
        _baselines,
    )
    promotion_force: bool = _setting(
        "PROMOTION_FORCE",
        "false",
        "promote every candidate whatever its scores (recorded as forced); `mt5-pipeline train --force` does it once",
        _bool,
    )
    timeframes: tuple[str, ...] = _setting(
        "TIMEFRAMES",
        "M1",
        "timeframes with their own features, model (rf_m1.pkl, rf_h1.pkl, ...), signals and retrain schedule, comma-separated",
        _timeframes,
    )
    drift_window_hours: float = _setting(
        "DRIFT_WINDOW_HOURS", "24", "recent window the drift checks compare with the champion's training window", _float
    )
    drift_psi_warn: float = _setting(
        "DRIFT_PSI_WARN",
        "0.25",
        "population stability index above which a feature's drift is a warning (0.1 moderate, 0.25 large)",
        _float,
    )
    drift_signal_share_warn: float = _setting(
        "DRIFT_SIGNAL_SHARE_WARN",
        "0.2",
        "live BUY, SELL or neutral share further than this from the champion's backtest is a warning",
        _float,
    )
    retrain_cron: str = _setting(
        "RETRAIN_CRON",
        "0 3 * * *",
        "when rf_m1_retrain_schedule (and rf_<tf>_retrain_schedule per timeframe) retrains (UTC cron)",
        _cron,
    )
    dagster_live_runs: bool = _setting(
        "DAGSTER_LIVE_RUNS",
        "false",
        "true: new_candles_sensor launches a run per symbol per new bar (the old path); false: it records the live worker's features and decisions as run-less asset events",
        _bool,
    )
    dagster_autostart: bool = _setting(
        "DAGSTER_AUTOSTART",
        "true",
        "sensors and the retrain schedule start running when the code location loads",
        _bool,
    )
    bridge_api_url: str = _setting(
        "BRIDGE_API_URL",
        "http://127.0.0.1:18001",
        "the API the MT5 bridge (`mt5-pipeline bridge`) sends bars and acks to",
        _http_url,
    )
    bridge_api_key: str = _setting(
        "BRIDGE_API_KEY",
        "",
        "X-API-Key the bridge sends to the API (empty: the first of API_KEYS, or the dev key in development)",
    )
    bridge_mode: str = _setting(
        "BRIDGE_MODE",
        "push",
        "push: the bridge serves POST /signals for the pusher (EA_API_KEY); pull: it polls GET /ea/signals",
        _bridge_mode,
    )
    bridge_host: str = _setting(
        "BRIDGE_HOST",
        "127.0.0.1",
        "where the bridge's signals server listens (0.0.0.0 to take signals from another machine)",
    )
    bridge_port: int = _setting(
        "BRIDGE_PORT", "8080", "port of the bridge's signals server (POST /signals, GET /health)", _int
    )
    bridge_symbols: tuple[str, ...] = _setting(
        "BRIDGE_SYMBOLS",
        "EURUSD",
        "symbols whose closed bars the bridge sends, comma-separated, as the terminal names them",
        _keys,
    )
    bridge_timeframes: tuple[str, ...] = _setting(
        "BRIDGE_TIMEFRAMES", "M1", "timeframes the bridge sends, comma-separated", _timeframes
    )
    bridge_history_bars: int = _setting(
        "BRIDGE_HISTORY_BARS",
        "5000",
        "closed bars per symbol sent on the first start (later starts resume after the last bar the API took)",
        _int,
    )
    bridge_utc_offset_hours: float | None = _setting(
        "BRIDGE_UTC_OFFSET_HOURS",
        "auto",
        "the trade server's UTC offset (MT5 bar times are server time); auto: measured from the last tick",
        _offset_hours,
    )
    bridge_server_time_zone: str | None = _setting(
        "BRIDGE_SERVER_TIME_ZONE",
        "auto",
        "the trade server's time zone, whose rules convert each bar's server time to UTC: UTC+2/+3@US (UTC+2 in winter, +3 in summer, "
        "on the US dates, as most FX brokers), an IANA zone such as Europe/Athens, or a fixed UTC+3; auto: BRIDGE_UTC_OFFSET_HOURS, "
        "which is right only while the server's offset does not change (history across a daylight-saving change needs the zone)",
        _server_zone,
    )
    bridge_lots: float = _setting(
        "BRIDGE_LOTS", "0.01", "volume of each order in lots (rounded down to the symbol's volume step)", _float
    )
    bridge_risk_percent: float | None = _setting(
        "BRIDGE_RISK_PERCENT",
        "",
        "size each order to lose this % of the balance at its stop-loss instead of BRIDGE_LOTS (empty: fixed BRIDGE_LOTS)",
        _opt(_float),
    )
    bridge_magic: int = _setting(
        "BRIDGE_MAGIC", "250101", "magic number on every order the bridge or the MQL5 EA places", _int
    )
    bridge_deviation: int = _setting("BRIDGE_DEVIATION", "10", "largest slippage accepted, in points", _int)
    bridge_poll_interval: float = _setting(
        "BRIDGE_POLL_INTERVAL", "1", "seconds between GET /ea/signals polls in pull mode", _float
    )
    bridge_store: Path = _setting(
        "BRIDGE_STORE",
        "./data/bridge.sqlite3",
        "the bridge's own SQLite file: executed signal_ids, unsent acks, last bar sent",
        lambda raw: Path(raw.strip()),
    )
    bridge_terminal_path: str | None = _setting(
        "BRIDGE_TERMINAL_PATH", "", "terminal64.exe to start or attach to (empty: the running terminal)", _opt(_str)
    )
    bridge_login: int | None = _setting(
        "BRIDGE_LOGIN", "", "trading account number (empty: the account the terminal is logged in to)", _opt(_int)
    )
    bridge_password: str | None = _setting("BRIDGE_PASSWORD", "", "that account's password (never logged)", _opt(_str))
    bridge_server: str | None = _setting(
        "BRIDGE_SERVER", "", "that account's trade server name, e.g. MetaQuotes-Demo", _opt(_str)
    )
    log_level: str = _setting("LOG_LEVEL", "INFO", "logging level", _log_level)

    # ---- derived -------------------------------------------------------------
    @property
    def ea_server_url(self) -> str:
        if self.ea_server_url_override:
            return self.ea_server_url_override
        return f"http://{self.ea_server_ip}:{self.ea_server_port}/signals"

    @property
    def effective_api_keys(self) -> tuple[str, ...]:
        if self.api_keys:
            return self.api_keys
        return (DEV_API_KEY,) if self.mt5_env == "development" else ()

    @property
    def effective_ea_api_key(self) -> str:
        """The key sent to the EA: EA_API_KEY, or in development the seed's example key, so
        the reference EA and the pusher agree out of the box (production refuses that key)."""
        return self.ea_api_key or self._dev_key()

    @property
    def effective_bridge_api_key(self) -> str:
        """The key the bridge sends to the API: BRIDGE_API_KEY, else the first of API_KEYS."""
        return self.bridge_api_key or (self.api_keys[0] if self.api_keys else self._dev_key())

    def _dev_key(self) -> str:
        return DEV_API_KEY if self.mt5_env == "development" else ""

    def max_bar_age_seconds(self, timeframe: str) -> int:
        if self.signal_max_bar_age_seconds is not None:
            return self.signal_max_bar_age_seconds
        if timeframe == "MN1":  # the newest closed month opened up to 62 days ago (July + August)
            return 62 * 86_400 + BAR_AGE_GRACE_SECONDS
        return 2 * TIMEFRAME_SECONDS[timeframe] + BAR_AGE_GRACE_SECONDS

    def sl_tp_pips(self, symbol: str) -> tuple[float, float]:
        return self.symbol_sl_tp_pips.get(symbol.upper(), (self.default_sl_pips, self.default_tp_pips))

    # ---- construction --------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> Settings:
        """Read the environment (over an optional ``.env``); raise SettingsError naming every bad variable."""
        values = dict(_read_env_file(env_file)) if env_file else {}
        values.update(os.environ if environ is None else environ)
        kwargs: dict[str, Any] = {}
        errors: list[str] = []
        for f in fields(cls):
            meta = f.metadata
            raw = values.get(meta["env"], meta["default"])
            try:
                kwargs[f.name] = meta["parse"](raw)
            except ValueError as exc:
                errors.append(f"{meta['env']}: {exc}")
        if errors:
            raise SettingsError("invalid configuration:\n  " + "\n  ".join(errors))
        settings = cls(**kwargs)
        settings.check()
        return settings

    def check(self) -> None:
        """Cross-field rules; raise SettingsError naming the variables."""
        errors: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                errors.append(message)

        for name, value in (
            ("SIGNAL_BUY_THRESHOLD", self.signal_buy_threshold),
            ("SIGNAL_SELL_THRESHOLD", self.signal_sell_threshold),
        ):
            need(0.0 <= value <= 1.0, f"{name}: must be between 0 and 1, got {value}")
        need(
            self.signal_buy_threshold > self.signal_sell_threshold,
            f"SIGNAL_BUY_THRESHOLD ({self.signal_buy_threshold}) must be greater than SIGNAL_SELL_THRESHOLD ({self.signal_sell_threshold})",
        )
        for env, value in (
            ("API_PORT", self.api_port),
            ("EA_SERVER_PORT", self.ea_server_port),
            ("BRIDGE_PORT", self.bridge_port),
        ):
            need(0 < value < 65536, f"{env}: must be a TCP port between 1 and 65535, got {value}")
        for env, value in (
            ("EA_PUSH_INTERVAL", self.ea_push_interval),
            ("EA_REQUEST_TIMEOUT", self.ea_request_timeout),
            ("EA_BATCH_SIZE", self.ea_batch_size),
            ("EA_MAX_ATTEMPTS", self.ea_max_attempts),
            ("SIGNAL_TTL_SECONDS", self.signal_ttl_seconds),
            ("MODEL_MAX_AGE_HOURS", self.model_max_age_hours),
            ("DEFAULT_SL_PIPS", self.default_sl_pips),
            ("DEFAULT_TP_PIPS", self.default_tp_pips),
            ("LABEL_HORIZON_BARS", self.label_horizon_bars),
            ("LABEL_MAX_HOLD_BARS", self.label_max_hold_bars),
            ("RF_N_ESTIMATORS", self.rf_n_estimators),
            ("RF_MAX_DEPTH", self.rf_max_depth),
            ("RF_MIN_SAMPLES_LEAF", self.rf_min_samples_leaf),
            ("API_MAX_BODY_BYTES", self.api_max_body_bytes),
            ("LIVE_POLL_SECONDS", self.live_poll_seconds),
            ("LIVE_WORKER_THREADS", self.live_worker_threads),
            ("LIVE_PROCESSES", self.live_processes),
            ("LIVE_LEASE_SECONDS", self.live_lease_seconds),
            ("BRIDGE_HISTORY_BARS", self.bridge_history_bars),
            ("BRIDGE_LOTS", self.bridge_lots),
            ("BRIDGE_POLL_INTERVAL", self.bridge_poll_interval),
            ("HGB_MAX_ITER", self.hgb_max_iter),
            ("HGB_LEARNING_RATE", self.hgb_learning_rate),
            ("DRIFT_WINDOW_HOURS", self.drift_window_hours),
            ("DRIFT_PSI_WARN", self.drift_psi_warn),
            ("DRIFT_SIGNAL_SHARE_WARN", self.drift_signal_share_warn),
        ):
            need(value > 0, f"{env}: must be greater than 0, got {value}")
        need(
            0 <= self.live_close_grace_seconds < 60,
            f"LIVE_CLOSE_GRACE_SECONDS: must be between 0 and 60, got {self.live_close_grace_seconds}",
        )
        if self.bridge_risk_percent is not None:
            need(
                0 < self.bridge_risk_percent <= 10,
                f"BRIDGE_RISK_PERCENT: must be above 0 and at most 10, got {self.bridge_risk_percent}",
            )
        need(self.bridge_magic >= 0, f"BRIDGE_MAGIC: must be 0 or more, got {self.bridge_magic}")
        need(self.bridge_deviation >= 0, f"BRIDGE_DEVIATION: must be 0 or more, got {self.bridge_deviation}")
        need(bool(self.bridge_symbols), "BRIDGE_SYMBOLS: name at least one symbol")
        need(
            self.price_max_jump == 0 or self.price_max_jump > 1,
            f"PRICE_MAX_JUMP: must be greater than 1 (or 0 to turn the check off), got {self.price_max_jump}",
        )
        need(self.promotion_margin >= 0, f"PROMOTION_MARGIN: must be 0 or more, got {self.promotion_margin}")
        need(0 < self.rf_max_samples <= 1, f"RF_MAX_SAMPLES: must be in (0, 1], got {self.rf_max_samples}")
        if self.signal_max_bar_age_seconds is not None:
            need(
                self.signal_max_bar_age_seconds > 0,
                f"SIGNAL_MAX_BAR_AGE_SECONDS: must be greater than 0, got {self.signal_max_bar_age_seconds}",
            )
        need(
            bool(re.match(r"^[A-Za-z0-9_.\-]+$", self.ea_server_ip)),
            f"EA_SERVER_IP: not a host name or address: {self.ea_server_ip!r}",
        )
        if self.mt5_env == "production":
            need(bool(self.api_keys), "API_KEYS: must be set when MT5_ENV=production (no key would leave the API open)")
            need(
                DEV_API_KEY not in self.api_keys,
                "API_KEYS: the seed's example key is for local development only; set your own when MT5_ENV=production",
            )
            need(
                self.ea_api_key != DEV_API_KEY,
                "EA_API_KEY: the seed's example key is for local development only; set your own when MT5_ENV=production",
            )
            # The EA authenticates the pusher with this key; an empty one is a forgotten
            # setting, found here rather than as a 401 on the first signal.
            need(
                bool(self.ea_api_key) or not self.ea_push_enabled,
                "EA_API_KEY: must be set when MT5_ENV=production and EA_PUSH_ENABLED=true (the key your EA expects in X-API-Key)",
            )
        if errors:
            raise SettingsError("invalid configuration:\n  " + "\n  ".join(errors))

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and the demo use it), checked again."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        settings = Settings(**values)
        settings.check()
        return settings


def documented_variables() -> list[Var]:
    """Every variable the settings read, with its default and meaning (README / .env.example)."""
    return [Var(f.metadata["env"], f.metadata["default"], f.metadata["meaning"]) for f in fields(Settings)]


def _read_env_file(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def load_settings(environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> Settings:
    return Settings.from_env(environ, env_file)


# `.env.example` is written for production (docker compose, systemd): these values
# replace the development defaults there. `make demo` / `make dev` need no .env and keep
# the defaults above.
PRODUCTION_EXAMPLE: dict[str, str] = {
    "DATABASE_URL": "postgresql://mt5:CHANGE_ME@127.0.0.1:5432/mt5",
    "MT5_ENV": "production",
    "API_HOST": "0.0.0.0",
}
# What a user must set before the stack starts, in this order at the top of the file.
MUST_SET: dict[str, str] = {
    "API_KEYS": "REQUIRED: your own key(s) for X-API-Key (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`); empty or the seed's example key refuses to start",
    "EA_API_KEY": "REQUIRED: the key your EA expects in X-API-Key",
    "EA_SERVER_URL": "REQUIRED: your EA's signals URL, e.g. http://192.168.15.18:8080/signals (or set EA_SERVER_IP / EA_SERVER_PORT below)",
    "API_PORT": "the port the EA posts candles to (docker compose publishes it on the host)",
}
# Variables of the containers themselves (docker compose), not of the settings.
_COMPOSE_EXAMPLE = """
# ---- docker compose only: the TimescaleDB container and Dagster's PostgreSQL storage (dagster.yaml) ----
# REQUIRED for docker compose: the database password (compose refuses to start without it).
POSTGRES_USER=mt5
POSTGRES_PASSWORD=
POSTGRES_DB=mt5
# Dagster instance storage for production (dagster.yaml); compose derives these from POSTGRES_*.
# DAGSTER_PG_USER=mt5
# DAGSTER_PG_PASSWORD=CHANGE_ME
# DAGSTER_PG_HOST=127.0.0.1
# DAGSTER_PG_DB=mt5
# DAGSTER_PG_PORT=5432
"""


def env_example() -> str:
    """The text of `.env.example`, generated from the fields above (a test compares them)."""
    out = [
        "# mt5-pipeline configuration for production (docker compose, systemd). Copy to .env and",
        "# set the REQUIRED values below; the environment wins over this file. Every variable the",
        "# settings read is listed (a test keeps this file in step with the code): regenerate with",
        '#   python -c \'from mt5_pipeline.settings import env_example; open(".env.example", "w").write(env_example())\'',
        "# `make demo` and `make dev` need no .env: they run in development mode on SQLite.",
        "",
        "# ---- set these first: keys, the EA's address, the port ----",
    ]
    variables = {v.name: v for v in documented_variables()}
    for name, why in MUST_SET.items():
        out += ["", f"# {why}", f"{name}={PRODUCTION_EXAMPLE.get(name, variables[name].default)}"]
    out += ["", "# ---- the rest have working defaults ----"]
    for var in variables.values():
        if var.name in MUST_SET:
            continue
        default = var.default or "empty"
        out += [
            "",
            f"# {var.meaning} (default: {default})",
            f"{var.name}={PRODUCTION_EXAMPLE.get(var.name, var.default)}",
        ]
    return "\n".join(out) + "\n" + _COMPOSE_EXAMPLE


def config_markdown() -> str:
    """The README's configuration table, generated from the fields above (a test compares them)."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for var in documented_variables():
        default = f"`{var.default}`" if var.default else "—"
        rows.append(f"| `{var.name}` | {default} | {var.meaning.replace('|', '/')} |")
    return "\n".join(rows)
