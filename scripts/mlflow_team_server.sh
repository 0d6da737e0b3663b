#!/usr/bin/env bash
# A shared MLflow tracking server on PostgreSQL, for a team: runs, metrics, the model registry and
# its aliases in a PostgreSQL database; artifacts (adapters, plots, logged models) in a folder the
# server proxies, so clients need only its URL.
#
#   scripts/mlflow_team_server.sh start    # PostgreSQL (initialised on first start) + mlflow server, in background
#   scripts/mlflow_team_server.sh status   # what is running, and the URI
#   scripts/mlflow_team_server.sh uri      # the `export MLFLOW_TRACKING_URI=...` line
#   scripts/mlflow_team_server.sh stop     # mlflow server, then PostgreSQL
#
# Settings (environment): MLFLOW_SERVER_DIR (state: database cluster, artifacts, logs, PIDs;
# default .mlflow-server/ in the repository), MLFLOW_PORT (5000), MLFLOW_PG_PORT (5433),
# MLFLOW_HOST (127.0.0.1), MLFLOW_APP_NAME (empty, or basic-auth: users and passwords; the first
# start then needs MLFLOW_AUTH_ADMIN_PASSWORD for the `admin` user),
# PG_BIN (the folder with initdb and pg_ctl; default: PATH, then /usr/lib/postgresql/<newest>/bin),
# VENV (.venv). Run as root, PostgreSQL runs as the `postgres` user of the Debian package.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$(mkdir -p "${MLFLOW_SERVER_DIR:-$REPO/.mlflow-server}" && cd "${MLFLOW_SERVER_DIR:-$REPO/.mlflow-server}" && pwd)"
PORT="${MLFLOW_PORT:-5000}"
PG_PORT="${MLFLOW_PG_PORT:-5433}"  # not 5432, so a system PostgreSQL can keep its port
HOST="${MLFLOW_HOST:-127.0.0.1}"
BIN="${VENV:-$REPO/.venv}/bin"
PGDATA="$STATE/postgres"
ARTIFACTS="$STATE/artifacts"
DB_NAME="mlflow"
DB_USER="mlflow"
HEALTH_TIMEOUT=120  # seconds; the first start also creates MLflow's tables (about 10 s here)
STOP_GRACE=10       # seconds between TERM and KILL

export PATH="$BIN:$PATH"
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false  # no job workers: healthy in ~5 s instead of ~22 s
export PGPASSFILE="$STATE/pgpass"                # the server's database password: in a 0600 file, not in ps or URIs

log() { printf '%s mlflow_team_server: %s\n' "$(date +%H:%M:%S)" "$*"; }

pg_bin() {  # the folder holding initdb, pg_ctl and psql (Debian keeps them off PATH)
  if [[ -n "${PG_BIN:-}" ]]; then echo "$PG_BIN"; return; fi
  local newest
  newest="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [[ -n "$newest" ]]; then echo "$newest"; return; fi
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then dirname "$(command -v pg_ctl)"; return; fi
  log "PostgreSQL not found: apt-get install -y postgresql (Debian/Ubuntu), or set PG_BIN"; exit 1
}

as_pg() {  # PostgreSQL refuses to run as root: use the package's postgres user then
  if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

alive() { [[ -f "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

pg_running() { as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

uri() { echo "http://$([[ "$HOST" == 0.0.0.0 ]] && hostname -f || echo "$HOST"):$PORT"; }
local_uri() { echo "http://$([[ "$HOST" == 0.0.0.0 ]] && echo 127.0.0.1 || echo "$HOST"):$PORT"; }

init_cluster() {
  [[ -f "$PGDATA/PG_VERSION" ]] && return 0
  local bin
  bin="$(pg_bin)"
  log "initialising a PostgreSQL cluster in $PGDATA"
  mkdir -p "$PGDATA"
  if [[ "$(id -u)" == 0 ]]; then chown postgres: "$PGDATA"; fi
  chmod 700 "$PGDATA"
  # Local (socket) connections: the cluster's owner only (the socket lives in PGDATA, mode 700);
  # TCP on 127.0.0.1: passwords (scram-sha-256).
  as_pg "$bin/initdb" -D "$PGDATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 -E UTF8 \
    --no-locale >"$STATE/initdb.log"
  cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'   # the MLflow server is the only client; it runs on this host
port = $PG_PORT
unix_socket_directories = '$PGDATA'
EOF
}

ensure_database() {  # the role and database MLflow uses; a new password whenever the password file is missing
  [[ -f "$PGPASSFILE" ]] && return 0
  local password
  password="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  as_pg "$(pg_bin)/psql" -h "$PGDATA" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -q <<EOF
SELECT 'CREATE ROLE $DB_USER LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') \gexec
ALTER ROLE $DB_USER PASSWORD '$password';
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_USER' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME') \gexec
EOF
  (umask 077 && echo "127.0.0.1:$PG_PORT:$DB_NAME:$DB_USER:$password" >"$PGPASSFILE")
  log "database $DB_NAME (owner $DB_USER) ready; its password is in $PGPASSFILE"
}

start_postgres() {
  init_cluster
  if ! pg_running; then
    as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w start >/dev/null
    log "PostgreSQL listening on 127.0.0.1:$PG_PORT"
  fi
  ensure_database
}

wait_healthy() {
  local started=$SECONDS
  until python - "$(local_uri)/health" <<'EOF' 2>/dev/null
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
EOF
  do
    if ! alive mlflow; then
      log "mlflow server exited; last lines of $STATE/mlflow.log:"; tail -n 20 "$STATE/mlflow.log" >&2; exit 1
    fi
    if (( SECONDS - started > HEALTH_TIMEOUT )); then
      log "mlflow server not healthy after ${HEALTH_TIMEOUT}s (see $STATE/mlflow.log)"; exit 1
    fi
    sleep 1
  done
  log "mlflow server healthy after $((SECONDS - started))s"
}

auth_setup() {  # basic-auth: its users in $STATE/basic_auth.db, a stable CSRF secret, the admin's first password
  cat >"$STATE/basic_auth.ini" <<EOF
[mlflow]
default_permission = READ
database_uri = sqlite:///$STATE/basic_auth.db
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOF
  export MLFLOW_AUTH_CONFIG_PATH="$STATE/basic_auth.ini"
  if [[ ! -f "$STATE/flask_secret" ]]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE/flask_secret")
  fi
  MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$STATE/flask_secret")"
  export MLFLOW_FLASK_SERVER_SECRET_KEY
  if [[ ! -f "$STATE/basic_auth.db" && -z "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]]; then
    log "the first basic-auth start creates the admin user: set MLFLOW_AUTH_ADMIN_PASSWORD"; exit 1
  fi
}

start() {
  start_postgres
  if alive mlflow; then
    log "mlflow server already running (pid $(cat "$STATE/mlflow.pid"))"
  else
    mkdir -p "$ARTIFACTS"
    local app=()
    if [[ -n "${MLFLOW_APP_NAME:-}" ]]; then app=(--app-name "$MLFLOW_APP_NAME"); fi
    if [[ "${MLFLOW_APP_NAME:-}" == basic-auth ]]; then auth_setup; fi
    # Own session (process group = PID), so stop reaches the server's workers too.
    setsid mlflow server "${app[@]}" \
      --backend-store-uri "postgresql://$DB_USER@127.0.0.1:$PG_PORT/$DB_NAME" \
      --artifacts-destination "$ARTIFACTS" \
      --host "$HOST" --port "$PORT" --workers 1 >"$STATE/mlflow.log" 2>&1 </dev/null &
    echo $! >"$STATE/mlflow.pid"
    log "mlflow server started (pid $!, log $STATE/mlflow.log)"
  fi
  wait_healthy
  echo "export MLFLOW_TRACKING_URI=$(uri)"
}

stop_mlflow() {
  local pid waited=0
  if ! alive mlflow; then rm -f "$STATE/mlflow.pid"; log "mlflow server not running"; return 0; fi
  pid="$(cat "$STATE/mlflow.pid")"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && (( waited < STOP_GRACE )); do sleep 1; waited=$((waited + 1)); done
  if kill -0 "$pid" 2>/dev/null || pgrep -g "$pid" >/dev/null 2>&1; then
    kill -KILL -- "-$pid" 2>/dev/null || true
    log "mlflow server (pid $pid) killed after ${STOP_GRACE}s"
  else
    log "mlflow server (pid $pid) stopped"
  fi
  rm -f "$STATE/mlflow.pid"
}

stop() {
  stop_mlflow
  if [[ -f "$PGDATA/PG_VERSION" ]] && pg_running; then
    as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
    log "PostgreSQL stopped"
  else
    log "PostgreSQL not running"
  fi
}

status() {
  if alive mlflow; then echo "mlflow server: running (pid $(cat "$STATE/mlflow.pid")) at $(uri)"; else echo "mlflow server: stopped"; fi
  if [[ -f "$PGDATA/PG_VERSION" ]] && pg_running; then echo "postgresql: running on 127.0.0.1:$PG_PORT ($PGDATA)"; else echo "postgresql: stopped"; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  uri) echo "export MLFLOW_TRACKING_URI=$(uri)" ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac
