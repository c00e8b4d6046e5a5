#!/usr/bin/env bash
# One entry point for a fresh machine: sets up .venv (torch + the ComfyUI runtime) on first use, then
#   bash devtools/run.sh demo [args]   -> run the main job (python -m devtools.demo)
#   bash devtools/run.sh test [args]   -> run the test suite (python -m pytest)
#   bash devtools/run.sh py ARGS...    -> any python command inside the environment
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ABCACHE_VENV:-.venv}
STAMP="$VENV/.abcache-setup"
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  python3 -m venv "$VENV"
fi
want=$(cat requirements.txt requirements-dev.txt devtools/runtime.py | sha1sum | cut -d" " -f1)-${COMFYUI_PATH:-bundled}-${ABCACHE_TORCH:-}
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "== installing torch, ComfyUI and test tools into $VENV (first run takes a few minutes)"
  "$VENV/bin/python" -m devtools.runtime setup
  echo "$want" > "$STAMP"
fi
cmd=${1:-test}
shift || true
case "$cmd" in
  demo) exec "$VENV/bin/python" -m devtools.demo "$@" ;;
  test) exec "$VENV/bin/python" -m pytest "$@" ;;
  py)   exec "$VENV/bin/python" "$@" ;;
  *) echo "usage: bash devtools/run.sh demo|test|py ..." >&2; exit 2 ;;
esac
