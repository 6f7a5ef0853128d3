#!/usr/bin/env bash
# Serve polymicro for development: `make run` (gunicorn) and `make dev` (scripts/run.sh
# --dev: flask run --debug, the reloader).  Both start the embedded SecantusDB with its
# data in var/db unless POLYMICRO_MONGODB_URI is set, and seed the demo data when the
# database is empty: python -m polymicro_dev.serve (polymicro_dev/serve.py) does it all.
# Ctrl-C or SIGTERM stops everything it started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -x .venv/bin/python ] || {
    echo "run.sh: .venv is missing; run 'make run' (it installs it) or 'make venv'" >&2
    exit 1
}
exec .venv/bin/python -m polymicro_dev.serve "$@"
