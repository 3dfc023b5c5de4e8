#!/usr/bin/env bash
# The lab's front door before any Python exists: pick the mode, and run the compose stack with
# nothing but Docker. `make up|down|status|clean|logs` call this first; the native lab is then
# run by `labctl` (which needs uv and the Python environment), compose never is.
#
#   deploy/lab.sh mode                 -> prints "native" or "compose" (MODE=auto|native|compose)
#   deploy/lab.sh compose up|down|status|clean|logs
set -euo pipefail
cd "$(dirname "$0")/.."

native_lab_running() {
  # A native lab records one pid per component in var/lab/pids (LAB_DIR overrides var/lab).
  local dir="${LAB_DIR:-var/lab}/pids" pid
  [ -d "$dir" ] || return 1
  for f in "$dir"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then return 0; fi
  done
  return 1
}

docker_answers() {
  command -v docker >/dev/null 2>&1 && timeout 15 docker info >/dev/null 2>&1
}

mode() {
  case "${MODE:-auto}" in
    native|compose) echo "$MODE" ;;
    auto)
      if native_lab_running; then echo native      # down/status must find a running native lab
      elif docker_answers; then echo compose
      else echo native
      fi ;;
    *) echo "MODE must be auto, native or compose (got '$MODE')" >&2; exit 2 ;;
  esac
}

compose_cmd() {
  if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    echo "docker compose"
  elif command -v docker-compose >/dev/null 2>&1; then
    echo "docker-compose"
  else
    echo "compose mode needs 'docker compose' or 'docker-compose'; install one, or run: make up MODE=native" >&2
    exit 1
  fi
}

compose() {
  local base args
  base=$(compose_cmd)
  case "$1" in
    up)
      args="up -d --build"
      [ "$base" = "docker compose" ] && args="$args --wait" ;;
    down) args="down" ;;
    clean) args="down --volumes" ;;
    status) args="ps" ;;
    logs) args="logs --tail 100" ;;
    *) echo "unknown compose action '$1'" >&2; exit 2 ;;
  esac
  echo "\$ $base $args"
  # shellcheck disable=SC2086  # word splitting of the two command variables is intended
  $base $args
  if [ "$1" = up ]; then
    cat <<'URLS'

TriageLab, compose mode (docs/compose.md):
  Grafana         http://127.0.0.1:3000   (dashboards: TriageLab folder)
  gateway         http://127.0.0.1:8000
  Locust          http://127.0.0.1:8089
  Prometheus      http://127.0.0.1:9090
  Alertmanager    http://127.0.0.1:9093
  alert receiver  http://127.0.0.1:9095/alerts
  Jaeger          http://127.0.0.1:16686
URLS
  fi
}

case "${1:-}" in
  mode) mode ;;
  compose) shift; compose "${1:?compose needs an action}" ;;
  *) echo "usage: deploy/lab.sh mode | compose up|down|status|clean|logs" >&2; exit 2 ;;
esac
