#!/bin/sh
# Install mt5-pipeline as systemd services on a clean Linux machine, from a checkout:
#
#   git clone <this repository> mt5-pipeline && cd mt5-pipeline
#   sudo docker/systemd/install.sh
#
# It creates the `mt5` system user, copies the checkout to /opt/mt5-pipeline (the units
# run from there: the pusher from api/, Dagster reads workspace.grpc.yaml), installs the
# project into /opt/mt5-pipeline/.venv, creates /opt/mt5-pipeline/.env from
# .env.example (mode 600, never overwritten) and the Dagster instance folder
# /opt/mt5-pipeline/dagster_home with the repository's dagster.yaml, and copies the six
# units to /etc/systemd/system. It starts nothing: set the configuration first (the
# script ends by saying what). Run it again to upgrade: the code and the venv are
# replaced, .env and the data are kept.
#
# DESTDIR=/some/dir installs under that directory instead of / and skips what needs root
# (the user, ownership, systemctl): mt5_pipeline_tests/system/test_systemd.py uses it.
set -eu

APP=/opt/mt5-pipeline
SRC=$(cd "$(dirname "$0")/../.." && pwd)
DESTDIR=${DESTDIR:-}
ROOT_DIR="$DESTDIR$APP"
UNIT_DIR="$DESTDIR/etc/systemd/system"
PYTHON=${PYTHON:-python3}

if [ -z "$DESTDIR" ]; then
    [ "$(id -u)" = 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }
    id mt5 >/dev/null 2>&1 || useradd --system --home-dir "$APP" --shell /usr/sbin/nologin mt5
fi

# 1. The checkout (code, workspace.grpc.yaml, dagster.yaml, the seed's scripts), without the
#    local state of the source tree.
mkdir -p "$ROOT_DIR"
tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./data --exclude=./models \
    --exclude=./.dagster --exclude=./.env --exclude='*/__pycache__' --exclude='*.egg-info' -cf - . \
    | tar -C "$ROOT_DIR" -xf -

# 2. The virtual environment the units' ExecStart= lines name.
[ -x "$ROOT_DIR/.venv/bin/python" ] || "$PYTHON" -m venv "$ROOT_DIR/.venv"
"$ROOT_DIR/.venv/bin/python" -m pip install --quiet "$ROOT_DIR"

# 3. The configuration every unit reads (EnvironmentFile=), kept across upgrades.
if [ ! -f "$ROOT_DIR/.env" ]; then
    cp "$ROOT_DIR/.env.example" "$ROOT_DIR/.env"
    chmod 600 "$ROOT_DIR/.env"
fi

# 4. The Dagster instance (DAGSTER_HOME of the three Dagster units): PostgreSQL storage
#    configured from the DAGSTER_PG_* variables in .env.
mkdir -p "$ROOT_DIR/dagster_home" "$ROOT_DIR/data" "$ROOT_DIR/models"
cp "$ROOT_DIR/dagster.yaml" "$ROOT_DIR/dagster_home/dagster.yaml"

# 5. The units.
mkdir -p "$UNIT_DIR"
cp "$SRC"/docker/systemd/*.service "$UNIT_DIR/"

if [ -z "$DESTDIR" ]; then
    chown -R mt5:mt5 "$APP"
    systemctl daemon-reload
fi

cat <<MSG
Installed in $ROOT_DIR. Before starting, edit $ROOT_DIR/.env:
  API_KEYS, EA_API_KEY, EA_SERVER_URL (the four REQUIRED lines at the top),
  DATABASE_URL=postgresql://mt5:PASSWORD@127.0.0.1:5432/mt5, and for Dagster's storage
  DAGSTER_PG_USER, DAGSTER_PG_PASSWORD, DAGSTER_PG_HOST, DAGSTER_PG_DB, DAGSTER_PG_PORT
  (uncomment them at the end; the same server and database as DATABASE_URL).
Then:
  sudo systemctl enable --now mt5-api mt5-live-signals mt5-ea-pusher mt5-dagster-code-server mt5-dagster-daemon mt5-dagster-webserver
MSG
