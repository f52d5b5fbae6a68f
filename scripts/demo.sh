#!/usr/bin/env bash
# The main job on the built-in default: set up ./.venv, make the synthetic
# sample slide and a held-out one, train the U-Net on the whole slide, predict
# the held-out slide, print Dice beside the Otsu baseline, then show the result
# in napari (or write a PNG overview when there is no display).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# --overwrite: a second run replaces the first run's results in runs/demo.
exec .venv/bin/napari-gigapixel demo --overwrite "$@"
