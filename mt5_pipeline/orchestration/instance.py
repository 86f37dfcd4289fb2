"""The embedded Dagster instance for `make demo` and `make dev`: SQLite under ./.dagster/.

Production uses the repository's dagster.yaml (PostgreSQL through dagster-postgres).
SQLite instance storage locks under concurrent runs, so the embedded queue is kept small.
"""

from pathlib import Path

LOCAL_DAGSTER_YAML = """\
# Written by mt5-pipeline for the embedded default (make demo / make dev).
# Storage: SQLite files in this folder (Dagster's default). Production: see ../dagster.yaml.
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 2
    tag_concurrency_limits:
      - key: mt5_pipeline/ea_push
        limit: 1
      # One features/prediction run per symbol at a time; symbols run side by side.
      - key: mt5_pipeline/symbol
        value:
          applyLimitPerUniqueValue: true
        limit: 1
      - key: dagster/job_name
        value: rf_m1_train_job
        limit: 1
# No automation conditions, no freshness policies: no asset or freshness daemon.
auto_materialize:
  enabled: false
  use_sensors: false
freshness:
  enabled: false
telemetry:
  enabled: false
"""


def ensure_local_dagster_home(path: str | Path = ".dagster") -> Path:
    """Create the folder and its dagster.yaml if missing; return the absolute path."""
    home = Path(path).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(LOCAL_DAGSTER_YAML)
    return home
