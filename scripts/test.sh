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
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] || [ "$(uname)" = "Darwin" ]; then
  "$PY" -m pytest tests/widgets "$@" || status=$?
elif command -v xvfb-run >/dev/null 2>&1; then
  xvfb-run -a -s "-screen 0 1600x1000x24" "$PY" -m pytest tests/widgets "$@" || status=$?
else
  # Qt would abort without a display (offscreen Qt has no OpenGL for napari's canvas).
  echo "scripts/test.sh: the widget tests need a display: install Xvfb" \
    "(Debian/Ubuntu: apt-get install xvfb) or run them where there is a screen." >&2
  status=1
fi
exit $status
