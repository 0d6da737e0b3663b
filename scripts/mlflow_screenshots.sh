#!/usr/bin/env bash
# Screenshots of the MLflow UI for the README: the runs table and the compare view of two runs.
#
#   scripts/mlflow_screenshots.sh [STORE_DIR]
#
# STORE_DIR holds mlflow.db (+ mlruns/) with at least two runs in experiment maeum-lora (e.g. the
# repository after two `make run`s with different train settings). Without it, a demo store is
# built in a temporary folder by two real train-lora runs in a clone of the committed project
# (tiny preset, LoRA rank 2 and 4; a few minutes on 2 cores). Writes docs/images/mlflow_runs.png (runs table, best
# val_bpc_tuned first) and docs/images/mlflow_compare.png (OUT=folder to change).
# Needs Debian's `chromium` (apt-get install -y chromium fonts-noto-cjk). Not part of the test suite.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${VENV:-$REPO/.venv}/bin"
OUT="${OUT:-$REPO/docs/images}"
HEALTH_TIMEOUT=60   # seconds; ~5.5 s with job execution off
RENDER_BUDGET=20000 # ms of virtual time for the single-page app to fetch and draw

export PATH="$BIN:$PATH"
export MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 TF_CPP_MIN_LOG_LEVEL=2

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
    for _ in 1 2 3 4 5; do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if [[ -n "${1:-}" ]]; then
  STORE="$(cd "$1" && pwd)"
else
  echo "building a demo store with two train-lora runs in $WORK ..."
  python "$REPO/scripts/mlflow_demo_runs.py" demo "$WORK" > "$WORK/demo.log" 2>&1 || { tail -n 30 "$WORK/demo.log"; exit 1; }
  grep '^rank ' "$WORK/demo.log"
  STORE="$WORK/project"
fi
read -r EXPERIMENT RUN_A RUN_B < <(python "$REPO/scripts/mlflow_demo_runs.py" ids "$STORE")

PORT="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# The server listens on 127.0.0.1 only. The browser reaches it under another name because the UI
# opens its assistant panel (a third of the page) on the first visit from localhost/127.0.0.1.
UI_HOST="mlflow-ui.internal"
URL="http://$UI_HOST:$PORT"
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid mlflow server --host 127.0.0.1 --port "$PORT" --workers 1 \
  --backend-store-uri "sqlite:///$STORE/mlflow.db" --artifacts-destination "$WORK/mlartifacts" \
  --allowed-hosts "$UI_HOST:$PORT" --cors-allowed-origins "$URL" > "$WORK/server.log" 2>&1 < /dev/null &
SERVER_PID=$!
started=$SECONDS
until python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "http://127.0.0.1:$PORT/health" 2>/dev/null; do
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$WORK/server.log"; exit 1; }
  (( SECONDS - started < HEALTH_TIMEOUT )) || { echo "mlflow server not healthy after ${HEALTH_TIMEOUT}s"; exit 1; }
  sleep 1
done
echo "mlflow server healthy after $((SECONDS - started))s on 127.0.0.1:$PORT"

shot() {  # shot FILE HEIGHT URL
  chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
    --disable-sync --no-first-run --user-data-dir="$(mktemp -d -p "$WORK")" --virtual-time-budget="$RENDER_BUDGET" \
    --host-resolver-rules="MAP $UI_HOST 127.0.0.1" --window-size="1600,$2" --hide-scrollbars \
    --screenshot="$1" "$3" > /dev/null 2>&1
  echo "wrote $1"
}

mkdir -p "$OUT"
# workflowType=machine_learning: the model-training pages (not the GenAI ones); best run first.
RUNS="$URL/#/experiments/$EXPERIMENT/runs?workflowType=machine_learning&orderByKey=metrics.%60val_bpc_tuned%60&orderByAsc=true"
shot "$OUT/mlflow_runs.png" 1000 "$RUNS"
shot "$OUT/mlflow_compare.png" 1800 \
  "$URL/#/compare-runs?runs=%5B%22$RUN_A%22,%22$RUN_B%22%5D&experiments=%5B%22$EXPERIMENT%22%5D"
