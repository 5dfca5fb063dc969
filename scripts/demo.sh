#!/usr/bin/env bash
# The main job, offline: build a world, train a base CLIP, Safe-CLIP it, evaluate, export, search.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup-env.sh"
exec "$VENV/bin/safeclip" demo "$@"
