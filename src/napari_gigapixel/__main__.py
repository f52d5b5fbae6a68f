"""``python -m napari_gigapixel`` runs the command line."""

import sys

from napari_gigapixel.cli import main

sys.exit(main())
