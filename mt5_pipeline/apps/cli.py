"""`mt5-pipeline`: the command line. Each command reads the settings once, then calls the core.

Each command imports the modules it calls in its own body (the one place in the project
that does so throughout): `mt5-pipeline --help` and every command load none of SQLAlchemy,
pandas, scikit-learn, Dagster or uvicorn unless they use them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from mt5_pipeline.settings import Settings, SettingsError, load_settings

log = logging.getLogger("mt5_pipeline")


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s - %(levelname)s - %(name)s - %(message)s")
    # Per-request and per-migration-step chatter drowns the seed's log lines at INFO.
    for noisy in ("httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def cmd_db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from mt5_pipeline.storage import migrate
    from mt5_pipeline.storage.engine import redact

    result = migrate.upgrade(settings.database_url)
    print(f"{redact(settings.database_url)}: {result.describe()}")
    return 0


def cmd_import_csv(settings: Settings, args: argparse.Namespace) -> int:
    from mt5_pipeline.market.mt5_csv import ImportError_, import_file

    try:
        report = import_file(
            settings,
            args.file,
            symbol=args.symbol,
            timeframe=args.timeframe,
            tz_offset_hours=args.tz_offset,
            server_time_zone=args.server_time_zone,
            chunk_rows=args.chunk_rows,
            progress=not args.no_progress,
        )
    except ImportError_ as exc:
        print(f"import failed: {exc}", file=sys.stderr)
        return 1
    print(report.describe())
    return 0


def cmd_features(settings: Settings, args: argparse.Namespace) -> int:
    for timeframe in settings.timeframes:
        for line in _update_features(settings, timeframe):
            print(line)
    return 0


# `mt5-pipeline train` exits with this when the candidate was rejected: the retrain ran,
# but the champion keeps trading (scripts and cron see it; 1 is an error, 0 promoted).
EXIT_REJECTED = 3


def cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    from mt5_pipeline.learning.model_store import model_name
    from mt5_pipeline.learning.training import InsufficientDataError, train_model

    timeframes = [args.timeframe.upper()] if args.timeframe else list(settings.timeframes)
    code = 0
    for timeframe in timeframes:
        for update in _update_features(settings, timeframe):
            print(update)
        name = model_name(timeframe)
        try:
            result = train_model(settings, timeframe=timeframe, force=True if args.force else None)
        except InsufficientDataError as exc:
            print(f"{name} not trained: {exc}", file=sys.stderr)
            code = max(code, 1)
            continue
        metrics = result.metrics
        decision = result.decision
        assert decision is not None, "train_model always decides"
        print(f"trained {name} {result.version} on {result.rows} rows ({', '.join(result.symbols)}) -> {result.path}")
        print(
            f"out-of-sample AUC {metrics.get('auc', float('nan')):.4f} (baseline "
            f"{metrics.get('baseline_auc', 0.5):.4f})"
        )
        print(f"{decision.decision.upper()}: {decision.reason}")
        if not decision.promoted:
            code = max(code, EXIT_REJECTED)
    return code


def _update_features(settings: Settings, timeframe: str) -> list[str]:
    from mt5_pipeline.learning.features import update_all_features

    return [
        f"{u.symbol} {u.timeframe}: {u.rows_written} feature rows written, newest bar {u.newest_ts}"
        for u in update_all_features(settings.database_url, timeframe)
    ]


def cmd_models(settings: Settings, args: argparse.Namespace) -> int:
    """The registry, newest first: every retrain, its decision and why."""
    from mt5_pipeline.learning.model_registry import history

    timeframes = [args.timeframe.upper()] if args.timeframe else list(settings.timeframes)
    for timeframe in timeframes:
        rows = history(settings, timeframe, limit=args.limit)
        print(f"rf_{timeframe.lower()}: {len(rows)} retrain(s) shown, newest first")
        for r in rows:
            auc = (r.get("metrics") or {}).get("auc")
            star = "*" if r["is_current"] else " "
            print(
                f" {star} {r['version']:<32} {r['trained_at']:%Y-%m-%d %H:%M} {r['kind']:<22} {r['decision']:<8} AUC "
                f"{'—' if auc is None else f'{auc:.4f}'}  {r['reason']}"
            )
    print("(* the champion: what rf_<tf>.pkl holds)")
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from mt5_pipeline.api.main import create_app

    app = create_app(settings)
    uvicorn.run(
        app,
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        log_level=settings.log_level.lower(),
        # The API's own request logging names no keys; uvicorn's access log would
        # print query strings, which never carry keys here either.
        access_log=True,
    )
    return 0


def cmd_push(settings: Settings, args: argparse.Namespace) -> int:
    # Lazy: httpx and SQLAlchemy load only for this command, not for every `mt5-pipeline` run.
    from mt5_pipeline.apps.push_worker import run_push_worker

    return run_push_worker(settings, once=args.once)


def cmd_live(settings: Settings, args: argparse.Namespace) -> int:
    # Lazy: the live worker brings pandas, numpy and the model's scikit-learn with it.
    from mt5_pipeline.apps.live_worker import run_live_worker

    return run_live_worker(settings)


def cmd_ea_sim(settings: Settings, args: argparse.Namespace) -> int:
    from mt5_pipeline.apps.ea_sim import serve

    serve(settings, host=args.host, port=args.port, ack_url=args.ack_url, ticks_log=args.log_file)
    return 0


def cmd_bridge(settings: Settings, args: argparse.Namespace) -> int:
    from mt5_pipeline.bridge import run_bridge

    return run_bridge(settings, fake=args.fake)


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from mt5_pipeline.apps.demo import run_demo

    return run_demo(settings, csv_file=args.csv)


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    from mt5_pipeline.apps.devserver import run_dev

    return run_dev(settings, dagster_port=args.dagster_port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mt5-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="create or migrate the schema at DATABASE_URL").set_defaults(func=cmd_db_upgrade)

    imp = sub.add_parser("import-csv", help='import an MT5 "Export Bars" file or a plain MqlRates CSV')
    imp.add_argument("file")
    imp.add_argument("--symbol", required=True)
    imp.add_argument("--timeframe", required=True)
    imp.add_argument(
        "--tz-offset",
        type=float,
        default=0.0,
        help="hours the file's times are ahead of UTC (broker time, often 2 or 3)",
    )
    imp.add_argument(
        "--server-time-zone",
        default=None,
        help=(
            "the trade server's time zone for an MT5 export, such as UTC+2/+3@US or Europe/Athens: each bar "
            "converted with the offset in force at it (instead of --tz-offset)"
        ),
    )
    imp.add_argument("--chunk-rows", type=int, default=200_000)
    imp.add_argument("--no-progress", action="store_true")
    imp.set_defaults(func=cmd_import_csv)

    sub.add_parser(
        "features", help="bring features_m1 up to date for every symbol and timeframe in TIMEFRAMES"
    ).set_defaults(func=cmd_features)
    train = sub.add_parser(
        "train",
        help=(
            "update the features, then train a candidate per timeframe, evaluate it and promote it if it beats "
            "the champion "
            f"(exit 0 promoted, 1 error, {EXIT_REJECTED} rejected)"
        ),
    )
    train.add_argument(
        "--force", action="store_true", help="promote the candidate whatever its scores (recorded as forced)"
    )
    train.add_argument("--timeframe", default=None, help="one timeframe (default: every one in TIMEFRAMES)")
    train.set_defaults(func=cmd_train)

    models = sub.add_parser("models", help="the model registry: every retrain, its decision and why, newest first")
    models.add_argument("--timeframe", default=None, help="one timeframe (default: every one in TIMEFRAMES)")
    models.add_argument("--limit", type=int, default=20)
    models.set_defaults(func=cmd_models)

    serve = sub.add_parser("serve", help="the Starlette API under uvicorn")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    push = sub.add_parser("push", help="the EA pusher worker")
    push.add_argument("--once", action="store_true", help="one cycle, then exit")
    push.set_defaults(func=cmd_push)

    sub.add_parser(
        "live",
        help=(
            "the live-signal worker: a signal for each closed bar as soon as it is committed "
            "(LISTEN/NOTIFY, or polling on SQLite)"
        ),
    ).set_defaults(func=cmd_live)

    sim = sub.add_parser("ea-sim", help="the reference EA server (paper trading)")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8080)
    sim.add_argument(
        "--ack-url",
        default=None,
        help="POST an ack here for every accepted signal (e.g. http://127.0.0.1:18001/ea/ack)",
    )
    sim.add_argument("--log-file", default=None, help="append every accepted signal as a JSON line")
    sim.set_defaults(func=cmd_ea_sim)

    bridge = sub.add_parser(
        "bridge", help="beside the MT5 terminal: closed bars to the API, signals to orders, acks back"
    )
    bridge.add_argument(
        "--fake", action="store_true", help="a simulated terminal instead of MetaTrader5 (no real orders)"
    )
    bridge.set_defaults(func=cmd_bridge)

    demo = sub.add_parser("demo", help="the whole pipeline once, on the embedded default")
    demo.add_argument("--csv", default=None, help="an MT5 export file to replay instead of the generated sample")
    demo.set_defaults(func=cmd_demo)

    dev = sub.add_parser("dev", help="Dagster webserver + daemon, API, pusher and reference EA together")
    dev.add_argument("--dagster-port", type=int, default=3000, help="port of the Dagster UI")
    dev.set_defaults(func=cmd_dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"mt5-pipeline: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    func: Callable[[Settings, argparse.Namespace], int] = args.func
    return func(settings, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
