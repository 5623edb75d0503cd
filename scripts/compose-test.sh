#!/usr/bin/env bash
# make compose-test: run the real docker-compose.yml (plus docker-compose.override.yml)
# with ../shared/tools/compose-up (podman and local stand-ins for the public images;
# Grafana and nats-exporter are skipped there), scaled to 3 codec and 2 gateway
# replicas; drive it from the host through the edge with tests/infra/compose_smoke.py;
# scale the gateways to 3 with no edit and check again (the edge and Prometheus must
# find the new replica by DNS); tear it all down, volumes included.
#
# Throwaway secrets and free host ports are exported for the run, so a developer's
# .env (and anything listening on 8000/9090) is left alone.
#   COMPOSE_UP        the tool (default ../shared/tools/compose-up)
#   COMPOSE_TEST_KEEP=1   leave the stack running afterwards (its settings go to
#                         var/compose-test.env; the script prints how to remove it)
set -euo pipefail
cd "$(dirname "$0")/.."
COMPOSE_UP=${COMPOSE_UP:-../shared/tools/compose-up}
PY=${PY:-.venv/bin/python}
[[ -x "$COMPOSE_UP" ]] || { echo "compose-test: $COMPOSE_UP not found" >&2; exit 1; }
[[ -x "$PY" ]] || { echo "compose-test: $PY not found (make setup)" >&2; exit 1; }

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
secret() {
  "$PY" -c 'import secrets, string; a = string.ascii_letters + string.digits; print("t" + "".join(secrets.choice(a) for _ in range(39)))'
}

# a project of its own, so that runs at the same time (two checkouts, CI) do not collide
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-sbtest-$("$PY" -c 'import secrets; print(secrets.token_hex(3))')}
export NATS_GATEWAY_PASSWORD=$(secret) NATS_CODEC_PASSWORD=$(secret)
export NATS_BINARY_PASSWORD=$(secret) NATS_CHAT_PASSWORD=$(secret)
export JWT_SECRET=$(secret) GRAFANA_ADMIN_PASSWORD=$(secret)
export SB_GATEWAY_ALLOW_ANONYMOUS=true SB_LOG_LEVEL=info
export EDGE_PORT=${EDGE_PORT:-$(free_port)}
export PROMETHEUS_PORT=${PROMETHEUS_PORT:-$(free_port)}
export GRAFANA_PORT=${GRAFANA_PORT:-$(free_port)}
export COMPOSE_UP_TIMEOUT=${COMPOSE_UP_TIMEOUT:-600}
unset COMPOSE_FILE COMPOSE_PROFILES

CODEC=3 GATEWAYS=2
status=1
finish() {
  if [[ $status -ne 0 ]]; then
    echo "compose-test: FAILED; last log lines of every service:" >&2
    "$COMPOSE_UP" . ps >&2 || true
    "$COMPOSE_UP" . logs --no-color --tail 40 >&2 || true
  fi
  if [[ "${COMPOSE_TEST_KEEP:-0}" == 1 ]]; then
    mkdir -p var && (umask 077 && for v in COMPOSE_PROJECT_NAME NATS_GATEWAY_PASSWORD \
        NATS_CODEC_PASSWORD NATS_BINARY_PASSWORD NATS_CHAT_PASSWORD JWT_SECRET \
        GRAFANA_ADMIN_PASSWORD EDGE_PORT PROMETHEUS_PORT GRAFANA_PORT; do
      echo "$v=${!v}"; done >var/compose-test.env)
    echo "compose-test: stack left running: edge http://127.0.0.1:$EDGE_PORT; remove it with"
    echo "  (set -a; . var/compose-test.env; $COMPOSE_UP . down -v)"
  else
    "$COMPOSE_UP" . down -v || true
  fi
  exit $status
}
trap finish EXIT
trap 'exit 130' INT TERM

echo "compose-test: project $COMPOSE_PROJECT_NAME, edge :$EDGE_PORT, prometheus :$PROMETHEUS_PORT"
"$COMPOSE_UP" . up --scale codec=$CODEC --scale gateway=$GATEWAYS

# the resolver the edge found (127.0.0.11 with Docker, the network's DNS with podman)
"$COMPOSE_UP" . exec -T edge sh -c 'grep -m1 "^resolver" /etc/nginx/conf.d/default.conf' || true

smoke() {
  "$PY" tests/infra/compose_smoke.py \
    --edge "http://127.0.0.1:$EDGE_PORT" \
    --prometheus "http://127.0.0.1:$PROMETHEUS_PORT" \
    --expect gateway="$1" codec=$CODEC binary=1 chat=1
}
smoke $GATEWAYS

echo "compose-test: scaling to $((GATEWAYS + 1)) gateways"
"$COMPOSE_UP" . up --scale codec=$CODEC --scale gateway=$((GATEWAYS + 1))
smoke $((GATEWAYS + 1))
status=0
