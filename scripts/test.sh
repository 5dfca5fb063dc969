#!/usr/bin/env bash
# Installs everything the tests need, then runs them (extra arguments go to pytest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup-env.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "$PY" -m pytest -q "$@"
