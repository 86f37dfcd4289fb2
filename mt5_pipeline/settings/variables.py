"""Every environment variable the pipeline reads, declared once: its name, default, meaning and parser.

The fields of :class:`Settings` are the declarations: loading (:mod:`.loading`), the
cross-field rules (:mod:`.checks`), and the generated configuration table and
``.env.example`` (:mod:`.docs`) all read them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mt5_pipeline.settings.checks import DEV_API_KEY, check
from mt5_pipeline.settings.loading import parse_environment
from mt5_pipeline.settings.parsers import (
    parse_baselines,
    parse_bool,
    parse_bridge_mode,
    parse_cron,
    parse_db_url,
    parse_entry_policy,
    parse_env_name,
    parse_float,
    parse_http_url,
    parse_int,
    parse_keys,
    parse_label_mode,
    parse_log_level,
    parse_model_kind,
    parse_niceness,
    parse_offset_hours,
    parse_opt,
    parse_server_zone,
    parse_sl_tp,
    parse_str,
    parse_symbol_map,
    parse_timeframes,
)
from mt5_pipeline.settings.timeframes import TIMEFRAME_SECONDS

# Grace on top of two bars before the feed counts as stalled: the EA posts a bar a few
# seconds after it closes, and clocks drift a little.
BAR_AGE_GRACE_SECONDS = 30


def _setting(env: str, default: str, meaning: str, parse: Callable[[str], Any] = parse_str) -> Any:
    return field(metadata={"env": env, "default": default, "meaning": meaning, "parse": parse})


@dataclass(frozen=True)
class Settings:
    """The whole configuration. Build it with :func:`load_settings` (or ``Settings.from_env``)."""

    database_url: str = _setting(
        "DATABASE_URL",
        "sqlite:///./data/mt5.db",
        "market data, features, queue, acks (SQLAlchemy URL; postgresql:// means psycopg2)",
        parse_db_url,
    )
    mt5_env: str = _setting(
        "MT5_ENV",
        "development",
        "`production` refuses to start with no API key or the seed's example key",
        parse_env_name,
    )
    api_keys: tuple[str, ...] = _setting(
        "API_KEYS",
        "",
        "inbound keys for X-API-Key, comma-separated for rotation; empty in development means the seed's example key",
        parse_keys,
    )
    api_host: str = _setting("API_HOST", "127.0.0.1", "where `mt5-pipeline serve` listens")
    api_port: int = _setting("API_PORT", "18001", "port of `mt5-pipeline serve`", parse_int)
    api_max_body_bytes: int = _setting(
        "API_MAX_BODY_BYTES",
        "33554432",
        "largest request body the API reads (32 MiB: about 150,000 candles); larger gets 413",
        parse_int,
    )
    metrics_public: bool = _setting(
        "METRICS_PUBLIC",
        "false",
        "serve /metrics without X-API-Key (only for a scraper on a private network)",
        parse_bool,
    )
    ea_server_ip: str = _setting("EA_SERVER_IP", "127.0.0.1", "EA host (the seed's 192.168.15.18 is an example)")
    ea_server_port: int = _setting("EA_SERVER_PORT", "8080", "EA port", parse_int)
    ea_server_url_override: str | None = _setting(
        "EA_SERVER_URL",
        "",
        "full EA signals URL, https:// allowed; overrides EA_SERVER_IP/PORT",
        parse_opt(parse_http_url),
    )
    ea_api_key: str = _setting("EA_API_KEY", "", "key sent to the EA as X-API-Key")
    ea_ca_bundle: str | None = _setting(
        "EA_CA_BUNDLE",
        "",
        "CA bundle file for an EA behind a self-signed certificate (verification stays on)",
        parse_opt(parse_str),
    )
    ea_push_interval: float = _setting("EA_PUSH_INTERVAL", "30", "seconds between push cycles", parse_float)
    ea_push_enabled: bool = _setting(
        "EA_PUSH_ENABLED",
        "true",
        "automatic pushing on/off (off = pull mode: the EA polls GET /ea/signals)",
        parse_bool,
    )
    ea_request_timeout: float = _setting(
        "EA_REQUEST_TIMEOUT", "10", "overall deadline in seconds per EA request", parse_float
    )
    ea_batch_size: int = _setting("EA_BATCH_SIZE", "100", "most signals per push cycle", parse_int)
    ea_max_attempts: int = _setting(
        "EA_MAX_ATTEMPTS",
        "5",
        "failed sends charged to one signal (it failed while the EA accepted others) before it is FAILED; an EA "
        "outage charges none",
        parse_int,
    )
    signal_ttl_seconds: int = _setting(
        "SIGNAL_TTL_SECONDS",
        "60",
        "a signal not delivered this long after its bar closed is EXPIRED, never sent",
        parse_int,
    )
    signal_max_bar_age_seconds: int | None = _setting(
        "SIGNAL_MAX_BAR_AGE_SECONDS",
        "",
        "no signal when the newest closed bar opened longer ago than this (empty: two bars + 30 s, per timeframe); a "
        "bar past its close + SIGNAL_TTL_SECONDS is refused as too late whatever this says",
        parse_opt(parse_int),
    )
    live_close_grace_seconds: float = _setting(
        "LIVE_CLOSE_GRACE_SECONDS",
        "2",
        "the live worker waits this long after a bar's close for its final version before signalling the stored (last "
        "forming) version",
        parse_float,
    )
    live_processes: int = _setting(
        "LIVE_PROCESSES",
        "1",
        "processes `mt5-pipeline live` runs on this host (one per spare core), sharing the series by leases on "
        "PostgreSQL with every other worker, by hash on SQLite",
        parse_int,
    )
    live_worker_threads: int = _setting(
        "LIVE_WORKER_THREADS",
        "4",
        "symbols the live worker decides at once (most of a decision is waiting for the database)",
        parse_int,
    )
    live_lease_seconds: float = _setting(
        "LIVE_LEASE_SECONDS",
        "4",
        "on PostgreSQL, live workers (any host) share the series by leases of this length: a dead worker's series are "
        "taken over within it plus a quarter of it",
        parse_float,
    )
    live_poll_seconds: float = _setting(
        "LIVE_POLL_SECONDS",
        "0.25",
        "how often the live worker looks for closed bars without LISTEN/NOTIFY (SQLite), and its safety-net poll on "
        "PostgreSQL (x20)",
        parse_float,
    )
    model_max_age_hours: float = _setting(
        "MODEL_MAX_AGE_HOURS", "48", "no signal from a model older than this (two missed daily retrains)", parse_float
    )
    signal_buy_threshold: float = _setting(
        "SIGNAL_BUY_THRESHOLD", "0.55", "probability at or above which a BUY is generated", parse_float
    )
    signal_sell_threshold: float = _setting(
        "SIGNAL_SELL_THRESHOLD", "0.45", "probability at or below which a SELL is generated", parse_float
    )
    default_sl_pips: float = _setting("DEFAULT_SL_PIPS", "20", "stop-loss in pips", parse_float)
    default_tp_pips: float = _setting("DEFAULT_TP_PIPS", "40", "take-profit in pips", parse_float)
    symbol_sl_tp_pips: dict = _setting(
        "SYMBOL_SL_TP_PIPS",
        "",
        "per-symbol SL/TP overrides, e.g. USDJPY=25/50,XAUUSD=300/600",
        parse_symbol_map(parse_sl_tp),
    )
    pip_sizes: dict = _setting(
        "PIP_SIZES",
        "",
        "per-symbol pip sizes, e.g. XAUUSD=0.1,US30=1; otherwise currency pairs 0.0001 (JPY 0.01), other symbols from "
        "the EA's digits/point in POST /ingest, else no signals",
        parse_symbol_map(parse_float),
    )
    price_max_jump: float = _setting(
        "PRICE_MAX_JUMP",
        "10",
        "a candle this many times above or below the level of the bars around it is rejected at ingest as a bad tick "
        "(0: off)",
        parse_float,
    )
    model_dir: Path = _setting(
        "MODEL_DIR",
        "./models",
        "rf_m1.pkl (rf_<tf>.pkl per timeframe: the champions), every candidate's versioned copy and their JSON "
        "sidecars",
        lambda raw: Path(raw.strip()),
    )
    label_mode: str = _setting(
        "LABEL_MODE",
        "horizon",
        "horizon: close N bars ahead above close now; triple_barrier: TP hit before SL",
        parse_label_mode,
    )
    label_horizon_bars: int = _setting(
        "LABEL_HORIZON_BARS", "5", "bars ahead for the horizon label (and the train/test embargo)", parse_int
    )
    label_max_hold_bars: int = _setting(
        "LABEL_MAX_HOLD_BARS",
        "60",
        "longest holding time in bars: triple-barrier labels, the backtest, and the time exit live (closed at that "
        "bar's close)",
        parse_int,
    )
    entry_policy: str = _setting(
        "ENTRY_POLICY",
        "one_per_symbol_timeframe",
        "which signals open a position (backtest and live alike, docs/trades.md): one_per_symbol_timeframe (skip "
        "while one is open), stack (every signal), reverse (an opposite signal closes and reverses)",
        parse_entry_policy,
    )
    rf_n_estimators: int = _setting("RF_N_ESTIMATORS", "100", "trees in the random forest", parse_int)
    rf_max_depth: int = _setting(
        "RF_MAX_DEPTH", "12", "depth bound per tree (keeps training time and file size in check)", parse_int
    )
    rf_min_samples_leaf: int = _setting(
        "RF_MIN_SAMPLES_LEAF", "50", "smallest leaf; larger is smoother and smaller", parse_int
    )
    rf_max_samples: float = _setting(
        "RF_MAX_SAMPLES", "0.1", "share of training rows each tree draws (0..1]", parse_float
    )
    rf_random_state: int = _setting(
        "RF_RANDOM_STATE", "42", "seed, so a retrain on the same data gives the same model", parse_int
    )
    model_kind: str = _setting(
        "MODEL_KIND",
        "random_forest",
        "random_forest (the seed's) or hist_gradient_boosting (scikit-learn's HistGradientBoostingClassifier), same "
        "evaluation and promotion",
        parse_model_kind,
    )
    hgb_max_iter: int = _setting(
        "HGB_MAX_ITER",
        "100",
        "boosting rounds of hist_gradient_boosting (no early stopping: it would validate on a random, not "
        "time-ordered, tenth)",
        parse_int,
    )
    hgb_learning_rate: float = _setting(
        "HGB_LEARNING_RATE", "0.05", "learning rate of hist_gradient_boosting", parse_float
    )
    promotion_margin: float = _setting(
        "PROMOTION_MARGIN",
        "0.005",
        "a candidate replaces the champion unless its AUC is lower, or its log loss higher, than the champion's by "
        "more than this (same window)",
        parse_float,
    )
    promotion_require: tuple[str, ...] = _setting(
        "PROMOTION_REQUIRE",
        "auc,log_loss,net_pips",
        "baselines a candidate must beat to be promoted: auc (0.5), log_loss (the base rate's), net_pips (random "
        "sides, after spread)",
        parse_baselines,
    )
    promotion_force: bool = _setting(
        "PROMOTION_FORCE",
        "false",
        "promote every candidate whatever its scores (recorded as forced); `mt5-pipeline train --force` does it once",
        parse_bool,
    )
    timeframes: tuple[str, ...] = _setting(
        "TIMEFRAMES",
        "M1",
        "timeframes with their own features, model (rf_m1.pkl, rf_h1.pkl, ...), signals and retrain schedule, "
        "comma-separated",
        parse_timeframes,
    )
    drift_window_hours: float = _setting(
        "DRIFT_WINDOW_HOURS",
        "24",
        "recent window the drift checks compare with the champion's training window",
        parse_float,
    )
    drift_psi_warn: float = _setting(
        "DRIFT_PSI_WARN",
        "0.25",
        "population stability index above which a feature's drift is a warning (0.1 moderate, 0.25 large)",
        parse_float,
    )
    drift_signal_share_warn: float = _setting(
        "DRIFT_SIGNAL_SHARE_WARN",
        "0.2",
        "live BUY, SELL or neutral share further than this from the champion's backtest is a warning",
        parse_float,
    )
    retrain_cron: str = _setting(
        "RETRAIN_CRON",
        "0 3 * * *",
        "when rf_m1_retrain_schedule (and rf_<tf>_retrain_schedule per timeframe) retrains (UTC cron)",
        parse_cron,
    )
    dagster_live_runs: bool = _setting(
        "DAGSTER_LIVE_RUNS",
        "false",
        "true: new_candles_sensor launches a run per symbol per new bar (the old path); false: it records the live "
        "worker's features and decisions as run-less asset events",
        parse_bool,
    )
    dagster_nice: int = _setting(
        "DAGSTER_NICE",
        "10",
        "niceness (0-19) `mt5-pipeline dev` starts Dagster's webserver, daemon and code servers with: the record "
        "yields the CPU to the API, the live workers and the pusher (systemd: Nice= and CPUWeight= in the units; "
        "compose: cpu_shares)",
        parse_niceness,
    )
    dagster_autostart: bool = _setting(
        "DAGSTER_AUTOSTART",
        "true",
        "sensors and the retrain schedule start running when the code location loads",
        parse_bool,
    )
    bridge_api_url: str = _setting(
        "BRIDGE_API_URL",
        "http://127.0.0.1:18001",
        "the API the MT5 bridge (`mt5-pipeline bridge`) sends bars and acks to",
        parse_http_url,
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
        parse_bridge_mode,
    )
    bridge_host: str = _setting(
        "BRIDGE_HOST",
        "127.0.0.1",
        "where the bridge's signals server listens (0.0.0.0 to take signals from another machine)",
    )
    bridge_port: int = _setting(
        "BRIDGE_PORT", "8080", "port of the bridge's signals server (POST /signals, GET /health)", parse_int
    )
    bridge_symbols: tuple[str, ...] = _setting(
        "BRIDGE_SYMBOLS",
        "EURUSD",
        "symbols whose closed bars the bridge sends, comma-separated, as the terminal names them",
        parse_keys,
    )
    bridge_timeframes: tuple[str, ...] = _setting(
        "BRIDGE_TIMEFRAMES", "M1", "timeframes the bridge sends, comma-separated", parse_timeframes
    )
    bridge_history_bars: int = _setting(
        "BRIDGE_HISTORY_BARS",
        "5000",
        "closed bars per symbol sent on the first start (later starts resume after the last bar the API took)",
        parse_int,
    )
    bridge_utc_offset_hours: float | None = _setting(
        "BRIDGE_UTC_OFFSET_HOURS",
        "auto",
        "the trade server's UTC offset (MT5 bar times are server time); auto: measured from the last tick",
        parse_offset_hours,
    )
    bridge_server_time_zone: str | None = _setting(
        "BRIDGE_SERVER_TIME_ZONE",
        "auto",
        "the trade server's time zone, whose rules convert each bar's server time to UTC: UTC+2/+3@US (UTC+2 in "
        "winter, +3 in summer, "
        "on the US dates, as most FX brokers), an IANA zone such as Europe/Athens, or a fixed UTC+3; auto: "
        "BRIDGE_UTC_OFFSET_HOURS, "
        "which is right only while the server's offset does not change (history across a daylight-saving change needs "
        "the zone)",
        parse_server_zone,
    )
    bridge_lots: float = _setting(
        "BRIDGE_LOTS", "0.01", "volume of each order in lots (rounded down to the symbol's volume step)", parse_float
    )
    bridge_risk_percent: float | None = _setting(
        "BRIDGE_RISK_PERCENT",
        "",
        "size each order to lose this % of the balance at its stop-loss instead of BRIDGE_LOTS (empty: fixed "
        "BRIDGE_LOTS)",
        parse_opt(parse_float),
    )
    bridge_magic: int = _setting(
        "BRIDGE_MAGIC", "250101", "magic number on every order the bridge or the MQL5 EA places", parse_int
    )
    bridge_deviation: int = _setting("BRIDGE_DEVIATION", "10", "largest slippage accepted, in points", parse_int)
    bridge_poll_interval: float = _setting(
        "BRIDGE_POLL_INTERVAL", "1", "seconds between GET /ea/signals polls in pull mode", parse_float
    )
    bridge_store: Path = _setting(
        "BRIDGE_STORE",
        "./data/bridge.sqlite3",
        "the bridge's own SQLite file: executed signal_ids, unsent acks, last bar sent",
        lambda raw: Path(raw.strip()),
    )
    bridge_terminal_path: str | None = _setting(
        "BRIDGE_TERMINAL_PATH",
        "",
        "terminal64.exe to start or attach to (empty: the running terminal)",
        parse_opt(parse_str),
    )
    bridge_login: int | None = _setting(
        "BRIDGE_LOGIN",
        "",
        "trading account number (empty: the account the terminal is logged in to)",
        parse_opt(parse_int),
    )
    bridge_password: str | None = _setting(
        "BRIDGE_PASSWORD", "", "that account's password (never logged)", parse_opt(parse_str)
    )
    bridge_server: str | None = _setting(
        "BRIDGE_SERVER", "", "that account's trade server name, e.g. MetaQuotes-Demo", parse_opt(parse_str)
    )
    log_level: str = _setting("LOG_LEVEL", "INFO", "logging level", parse_log_level)

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
        settings = cls(**parse_environment(fields(cls), environ, env_file))
        settings.check()
        return settings

    def check(self) -> None:
        """Cross-field rules; raise SettingsError naming the variables."""
        check(self)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and the demo use it), checked again."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        settings = Settings(**values)
        settings.check()
        return settings


def load_settings(environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> Settings:
    return Settings.from_env(environ, env_file)
