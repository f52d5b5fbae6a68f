"""Open napari with the sample slide and the four napari-gigapixel widgets docked.

Run::

    python examples/viewer_with_widgets.py

The first run makes the 4096 x 16384 synthetic sample slide and its ground
truth in the cache folder (``$NAPARI_GIGAPIXEL_CACHE`` or the user cache);
later runs reuse it. Then: Annotate > "Start from Otsu tissue mask" (or pick
the ground truth layer), Train > Start, Predict, Review.
"""

from __future__ import annotations

import napari

PLUGIN = "napari-gigapixel"
WIDGETS = (
    "Annotate tissue mask",
    "Train whole-slide U-Net",
    "Predict tissue mask",
    "Review prediction",
)


def main() -> napari.Viewer:
    """Open the viewer, add the sample slide and dock every widget (tabbed)."""
    viewer = napari.Viewer(title="napari-gigapixel")
    viewer.open_sample(PLUGIN, "synthetic_slide")
    for name in WIDGETS:
        viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)
    return viewer


if __name__ == "__main__":
    main()
    napari.run()
