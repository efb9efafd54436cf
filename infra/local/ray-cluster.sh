#!/usr/bin/env bash
# A local two-node Ray cluster on loopback: a head node and one worker node with a custom resource, for trying
# multi-node placement (and the multi-node test) on one machine.
#
#   eval "$(infra/local/ray-cluster.sh start)"   # exports RAY_ADDRESS, RAY_API_SERVER_ADDRESS (the dashboard and job
#                                                 # server, for `ray job submit`), RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH
#   infra/local/ray-cluster.sh status
#   infra/local/ray-cluster.sh stop
#
# Settings (environment): HEAD_CPUS (default 2), WORKER_CPUS (2), WORKER_RESOURCES ('{"node_b": 1}'),
# RAY_CLUSTER_DIR (state folder: address, token, logs; default $TMPDIR/fastgen-ray-cluster-<uid>), FASTGEN_VENV
# (<repo>/.venv). Ray's own temp folder is a short mktemp folder (Ray's socket paths must stay under 108 bytes).
# Both nodes are separate `ray start` processes bound to 127.0.0.1 with their own temp dirs; every port is picked
# free at start. Tasks reach the worker node with `.options(resources={"node_b": 1})`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${FASTGEN_VENV:-$root/.venv}"
state="${RAY_CLUSTER_DIR:-${TMPDIR:-/tmp}/fastgen-ray-cluster-$(id -u)}"
ray="$venv/bin/ray"
py="$venv/bin/python"
if [ ! -x "$ray" ]; then
  echo "ray-cluster.sh: no ray at $ray; run 'make install' in $root (or set FASTGEN_VENV)" >&2
  exit 2
fi

free_ports() {  # free_ports N: N distinct free loopback TCP ports, one per line
  "$py" - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
PY
}

# The PIDs of this cluster's processes: those whose command line names a session folder in its Ray temp folder
# (every Ray process of both nodes does). `ray stop` is not used: it stops every Ray on the machine.
cluster_pids() {  # cluster_pids RAY_TEMP_DIR
  # (the pattern is assembled inside awk, so awk's own command line does not match it)
  ps -eo pid=,args= | awk -v base="$1" 'index($0, base "/session_") {print $1}'
}

stop_cluster() {
  local pids i raytmp
  [ -f "$state/ray_temp_dir" ] || return 0
  raytmp=$(cat "$state/ray_temp_dir")
  pids=$(cluster_pids "$raytmp")
  [ -n "$pids" ] && kill -TERM $pids 2>/dev/null
  for i in $(seq 1 50); do
    pids=$(cluster_pids "$raytmp")
    [ -z "$pids" ] && break
    sleep 0.2
  done
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  rm -rf "$raytmp"
}

case "${1:-}" in
  start)
    if [ -f "$state/address" ]; then
      echo "ray-cluster.sh: a cluster is already recorded in $state (RAY_ADDRESS=$(cat "$state/address")); stop it first" >&2
      exit 1
    fi
    mkdir -p "$state"
    raytmp=$(mktemp -d "${TMPDIR:-/tmp}/fgray.XXXXXX")
    echo "$raytmp" >"$state/ray_temp_dir"
    # Ray's token authentication, with a token of this cluster's own (both nodes and every client need it).
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$state/auth_token"
    (umask 077 && "$py" -c "import secrets; print(secrets.token_hex(32))" >"$RAY_AUTH_TOKEN_PATH")
    mapfile -t p < <(free_ports 14)
    gcs=${p[0]}
    dash=${p[1]}
    node_ports() {  # node_ports OFFSET: the per-node ports (two nodes on one host must not share any)
      echo --node-manager-port="${p[$1]}" --object-manager-port="${p[$(($1 + 1))]}" \
        --dashboard-agent-listen-port="${p[$(($1 + 2))]}" --dashboard-agent-grpc-port="${p[$(($1 + 3))]}" \
        --metrics-export-port="${p[$(($1 + 4))]}" --runtime-env-agent-port="${p[$(($1 + 5))]}"
    }
    # shellcheck disable=SC2046
    "$ray" start --head --node-ip-address=127.0.0.1 --port="$gcs" --num-cpus="${HEAD_CPUS:-2}" --num-gpus=0 \
      --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$dash" --temp-dir="$raytmp" $(node_ports 2) \
      --disable-usage-stats >"$state/head.log" 2>&1 \
      || { cat "$state/head.log" >&2; stop_cluster; rm -rf "$state"; exit 1; }
    # shellcheck disable=SC2046
    "$ray" start --address="127.0.0.1:$gcs" --node-ip-address=127.0.0.1 --num-cpus="${WORKER_CPUS:-2}" --num-gpus=0 \
      --resources="${WORKER_RESOURCES:-{\"node_b\": 1\}}" --temp-dir="$raytmp" $(node_ports 8) \
      --disable-usage-stats >"$state/worker.log" 2>&1 \
      || { cat "$state/worker.log" >&2; stop_cluster; rm -rf "$state"; exit 1; }
    echo "127.0.0.1:$gcs" >"$state/address"
    echo "http://127.0.0.1:$dash" >"$state/dashboard"
    echo "export RAY_ADDRESS=127.0.0.1:$gcs RAY_API_SERVER_ADDRESS=http://127.0.0.1:$dash RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"
    ;;
  status)
    [ -f "$state/address" ] || { echo "ray-cluster.sh: no cluster recorded in $state" >&2; exit 1; }
    RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$state/auth_token" "$ray" status --address="$(cat "$state/address")"
    ;;
  stop)
    stop_cluster
    rm -rf "$state"
    echo "ray-cluster.sh: stopped"
    ;;
  *)
    echo "usage: $0 start|status|stop" >&2
    exit 2
    ;;
esac
