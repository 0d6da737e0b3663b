#!/usr/bin/env bash
# A local Prefect server + worker for the train-lora deployment, bound to 127.0.0.1.
#
#   scripts/prefect_local.sh up      # server, work pool, `prefect deploy --name default`, worker (all in background)
#   scripts/prefect_local.sh run     # prefect deployment run train-lora/default --watch [extra args, e.g. --param force=true]
#   scripts/prefect_local.sh ui      # the UI's address
#   scripts/prefect_local.sh status  # what is running
#   scripts/prefect_local.sh down    # stop the worker, then the server
#
# State (server database, cached task results, logs, PIDs) lives in .prefect/ in the repository
# (git-ignored). For other prefect commands in your shell: export PREFECT_HOME=$PWD/.prefect
# PREFECT_API_URL=http://127.0.0.1:4200/api
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

PORT="${PREFECT_PORT:-4200}"
POOL="maeum-process"
DEPLOYMENT="train-lora/default"
STATE="$REPO/.prefect/local"
BIN="${VENV:-$REPO/.venv}/bin"
HEALTH_TIMEOUT=60   # seconds; the server is usually healthy after 5-9 s
STOP_GRACE=10       # seconds between TERM and KILL (the worker ignores the first TERM)

export PATH="$BIN:$PATH"
export PREFECT_HOME="$REPO/.prefect"
export PREFECT_API_URL="http://127.0.0.1:$PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1 DO_NOT_TRACK=1
export TF_CPP_MIN_LOG_LEVEL=2

mkdir -p "$STATE"

log() { printf '%s prefect_local: %s\n' "$(date +%H:%M:%S)" "$*"; }

alive() {  # alive NAME: the process recorded in NAME.pid is running
  local file="$STATE/$1.pid"
  [[ -f "$file" ]] && kill -0 "$(cat "$file")" 2>/dev/null
}

start_bg() {  # start_bg NAME CMD...: own session (process group = PID), output to NAME.log
  local name="$1"; shift
  setsid "$@" >"$STATE/$name.log" 2>&1 < /dev/null &
  echo $! >"$STATE/$name.pid"
  log "$name started (pid $!, log $STATE/$name.log)"
}

stop_bg() {  # stop_bg NAME: TERM the process group, wait, then KILL what is left
  local name="$1" pid waited=0
  if ! alive "$name"; then
    rm -f "$STATE/$name.pid"
    log "$name not running"
    return 0
  fi
  pid="$(cat "$STATE/$name.pid")"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && (( waited < STOP_GRACE )); do
    sleep 1; waited=$((waited + 1))
    if (( waited == 3 )); then  # the worker only starts shutting down on a second TERM
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  if kill -0 "$pid" 2>/dev/null || pgrep -g "$pid" >/dev/null 2>&1; then
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    log "$name (pid $pid) killed after ${STOP_GRACE}s"
  else
    log "$name (pid $pid) stopped"
  fi
  rm -f "$STATE/$name.pid"
}

wait_healthy() {
  local started=$SECONDS
  until python - "$PREFECT_API_URL/health" <<'EOF' 2>/dev/null
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
EOF
  do
    if ! alive server; then
      log "server exited; last lines of $STATE/server.log:"; tail -n 20 "$STATE/server.log" >&2; exit 1
    fi
    if (( SECONDS - started > HEALTH_TIMEOUT )); then
      log "server not healthy after ${HEALTH_TIMEOUT}s (see $STATE/server.log)"; exit 1
    fi
    sleep 1
  done
  log "server healthy after $((SECONDS - started))s: http://127.0.0.1:$PORT"
}

up() {
  if alive server; then
    log "server already running (pid $(cat "$STATE/server.pid"))"
  else
    start_bg server prefect server start --host 127.0.0.1 --port "$PORT"
  fi
  wait_healthy
  if ! prefect work-pool inspect "$POOL" >/dev/null 2>&1; then
    prefect work-pool create "$POOL" --type process
  fi
  prefect --no-prompt deploy --name default
  if alive worker; then
    log "worker already running (pid $(cat "$STATE/worker.pid"))"
  else
    start_bg worker prefect worker start --pool "$POOL"
  fi
  log "ready: scripts/prefect_local.sh run   (UI: http://127.0.0.1:$PORT)"
}

case "${1:-}" in
  up) up ;;
  run) shift; prefect deployment run "$DEPLOYMENT" --watch "$@" ;;
  ui) echo "http://127.0.0.1:$PORT" ;;
  status)
    for name in server worker; do
      if alive "$name"; then echo "$name: running (pid $(cat "$STATE/$name.pid"))"; else echo "$name: stopped"; fi
    done ;;
  down) stop_bg worker; stop_bg server ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
