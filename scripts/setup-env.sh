#!/usr/bin/env bash
# Creates .venv (once) with safeclip and its extras. CPU hosts get the pinned CPU stack from
# docs/environment notes (torch 2.13.0 CPU + torchvision 0.28.0); GPU hosts get the normal CUDA torch.
# Usage: source scripts/setup-env.sh   (sets VENV and PY)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SAFECLIP_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.safeclip-installed"

if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ] || [ "$ROOT/scripts/constraints-cpu.txt" -nt "$STAMP" ]; then
    python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
        # GPU host: the registry's default CUDA build of torch and its matching torchvision
        "$PY" -m pip install --quiet torch torchvision
        "$PY" -m pip install --quiet -e "$ROOT[dev]"
    else
        # CPU host: install torch first and pin it, or a dependency pulls multi-GB CUDA wheels
        "$PY" -m pip install --quiet -c "$ROOT/scripts/constraints-cpu.txt" torch torchvision
        "$PY" -m pip install --quiet -c "$ROOT/scripts/constraints-cpu.txt" -e "$ROOT[dev]"
    fi
    touch "$STAMP"
fi

# headless Chromium for the search page's browser test (tests/test_serve_page.py skips without it):
# installed once on a Debian machine where we are root (about a minute; measured in docs/serving.md)
CHROMIUM_TRIED="$VENV/.chromium-tried"
if ! command -v chromium >/dev/null 2>&1 && [ ! -f "$CHROMIUM_TRIED" ] && [ "$(id -u)" = 0 ] \
        && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (apt-get) for the search page's browser test" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium fonts-liberation; } >/dev/null 2>&1; then
        echo "chromium could not be installed: the search page's browser test will be skipped" >&2
    fi
    touch "$CHROMIUM_TRIED"
fi
export VENV PY
