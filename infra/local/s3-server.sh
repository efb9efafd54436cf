#!/usr/bin/env bash
# Run the embedded SeaweedFS S3 server on 127.0.0.1 in the foreground (Ctrl-C stops it), from any shell:
# no need to activate the project's virtual environment. Arguments go to `fastgen s3-server`, e.g.
#   infra/local/s3-server.sh --dir ./s3-data --port 8333 --bucket fastgen
# The venv defaults to <repo>/.venv (created by `make install`); set FASTGEN_VENV to use another one.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${FASTGEN_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  echo "s3-server.sh: no Python environment at $venv; run 'make install' in $root (or set FASTGEN_VENV)" >&2
  exit 2
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$venv/bin/python" -m jobs.cli s3-server "$@"
