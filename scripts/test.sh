#!/usr/bin/env bash
# Run the whole test suite headless. TensorFlow and a napari canvas must not
# share a process (DESIGN.md), so the engine tests and the widget tests run in
# two pytest invocations; the widget tests get a virtual display from Xvfb
# (`xvfb-run`) when there is no display.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { echo "No $PY: run 'bash scripts/demo.sh' (or scripts/setup.sh) first." >&2; exit 2; }
status=0
"$PY" -m pytest tests --ignore=tests/widgets "$@" || status=$?
if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null 2>&1; then
  xvfb-run -a -s "-screen 0 1600x1000x24" "$PY" -m pytest tests/widgets "$@" || status=$?
else
  "$PY" -m pytest tests/widgets "$@" || status=$?
fi
exit $status
