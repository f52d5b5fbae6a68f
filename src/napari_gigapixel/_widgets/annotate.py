"""Annotate widget: make, load, correct and save a tissue mask at an annotation level.

A gigapixel mask lives at an annotation level (downsample 4, 8, 16 or 32 of
level 0) as a plain Labels layer whose ``scale`` overlays it on the slide, so
napari's paint and fill tools work on it directly. Start empty, from Otsu
tissue detection, from a raster/GeoJSON file, or from a Shapes layer, then
correct by painting and save through the plugin's writer, or export it as
QuPath GeoJSON polygons.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, PushButton
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info

from ..core.errors import GigapixelError
from ..core.masks import AnnotationMask, labels_to_uint8
from ._export import ask_path, export_controls, export_layer, start_export, summary
from ._layers import (
    ANNOTATION_LEVELS,
    LayerError,
    add_mask_layer,
    default_level,
    level0_shape,
    mask_shape,
    resample_mask,
    slide_path,
)
from ._layers import MAX_MASK_PIXELS as _MAX_PIXELS

KINDS = {
    "dense (0 = background)": "dense",
    "scribbles (0 = unlabelled, 1 = background, 2 = tissue)": "scribble",
}


def _layer_choices(kind: type, viewer: Any) -> Any:
    def choices(_widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]

    return choices


class AnnotateWidget(Container):
    """Make a tissue mask for a slide layer, correct it by painting, save it.

    Parameters
    ----------
    napari_viewer
        The viewer whose layers the widget reads and adds to.
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.slide = ComboBox(label="slide", choices=_layer_choices(Image, napari_viewer))
        self.level = ComboBox(
            label="annotation level",
            choices=[(f"1/{d} (downsample {d})", d) for d in ANNOTATION_LEVELS],
            tooltip="Level-0 pixels per mask pixel. Default: the finest level whose mask "
            "stays under about 16 Mpx.",
        )
        self.kind = ComboBox(label="mask kind", choices=list(KINDS.items()), value="dense")
        self.mask_name = LineEdit(label="mask layer", value="tissue mask")
        self.new_button = PushButton(text="New empty mask")
        self.otsu_button = PushButton(text="Start from Otsu tissue mask")
        self.file = FileEdit(
            label="mask file",
            mode="r",
            filter="Masks (*.tif *.tiff *.png *.zarr *.geojson *.json)",
        )
        self.load_button = PushButton(text="Load mask file")
        self.shapes = ComboBox(label="shapes", choices=_layer_choices(Shapes, napari_viewer))
        self.shapes_button = PushButton(text="Rasterise Shapes layer")
        self.save_path = FileEdit(
            label="save to", mode="w", filter="Masks (*.ome.zarr *.zarr *.tif *.tiff)"
        )
        self.save_button = PushButton(text="Save mask")
        self.export_path, self.export_button = export_controls()
        self.status = Label(value="")
        self.extend(
            [
                self.slide,
                self.level,
                self.kind,
                self.mask_name,
                self.new_button,
                self.otsu_button,
                self.file,
                self.load_button,
                self.shapes,
                self.shapes_button,
                self.save_path,
                self.save_button,
                self.export_path,
                self.export_button,
                self.status,
            ]
        )
        self.slide.changed.connect(self._on_slide_changed)
        self.new_button.changed.connect(self._guard(self.new_mask))
        self.otsu_button.changed.connect(self._guard(self.otsu_mask))
        self.load_button.changed.connect(self._guard(lambda: self.load_file(self.file.value)))
        self.shapes_button.changed.connect(self._guard(self.from_shapes))
        self.save_button.changed.connect(self._guard(lambda: self.save(self.save_path.value)))
        self.export_button.changed.connect(self._guard(self._export_clicked))
        napari_viewer.layers.events.inserted.connect(self.reset_choices)
        napari_viewer.layers.events.removed.connect(self.reset_choices)
        self._on_slide_changed(self.slide.value)

    # -- helpers -----------------------------------------------------------

    def _guard(self, fn: Any) -> Any:
        """Run ``fn`` and turn user errors into a napari notification."""

        def wrapped(*_: Any) -> Any:
            try:
                return fn()
            except GigapixelError as exc:
                self.status.value = "error: see notification"
                show_error(str(exc))
            return None

        return wrapped

    def _slide_layer(self) -> Any:
        layer = self.slide.value
        if layer is None:
            raise LayerError("Open a slide first (File > Open, or File > Open Sample).")
        return layer

    def _on_slide_changed(self, layer: Any) -> None:
        if layer is not None:
            self.level.value = default_level(level0_shape(layer))

    @property
    def kind_value(self) -> str:
        """The chosen mask kind: ``"dense"`` or ``"scribble"``."""
        return self.kind.value

    def _show(self, array: np.ndarray, downsample: float, source: str) -> Labels:
        slide = self._slide_layer()
        layer = add_mask_layer(
            self.viewer,
            np.ascontiguousarray(labels_to_uint8(array, self.kind_value)),
            slide,
            downsample,
            name=self.mask_name.value or "tissue mask",
            kind=self.kind_value,
        )
        # Ready to paint: tissue for dense masks, the tissue scribble for scribbles.
        layer.selected_label = 2 if self.kind_value == "scribble" else 1
        self.viewer.layers.selection.active = layer
        h, w = array.shape
        self.status.value = f"{source}: {h} x {w} px mask at 1/{downsample:g}"
        return layer

    # -- actions -----------------------------------------------------------

    def new_mask(self) -> Labels:
        """Add an empty mask at the chosen level, ready to paint."""
        slide = self._slide_layer()
        d = int(self.level.value)
        arr = np.zeros(mask_shape(level0_shape(slide), d), np.uint8)
        return self._show(arr, d, "new mask")

    def otsu_mask(self) -> Labels:
        """Add a mask from Otsu tissue detection on the slide, at the chosen level."""
        from ..core.metrics import otsu_tissue_mask

        slide_layer = self._slide_layer()
        sshape = level0_shape(slide_layer)
        d = int(self.level.value)
        try:
            source: Any = slide_path(slide_layer)
        except LayerError:
            # No file behind the layer: threshold its own (in-memory) pyramid.
            source = list(slide_layer.data) if slide_layer.multiscale else slide_layer.data
        otsu = otsu_tissue_mask(source)
        arr = resample_mask(otsu, sshape, d)
        arr = (np.asarray(arr) > 0).astype(np.uint8)
        if self.kind_value == "scribble":
            arr = arr + 1  # background 1, tissue 2: every pixel labelled
        return self._show(arr, d, "Otsu tissue mask")

    def load_file(self, path: str | os.PathLike) -> Labels:
        """Load a mask from a raster (any level) or QuPath GeoJSON file."""
        from ..core.mask_io import load_mask

        slide_layer = self._slide_layer()
        path = str(path)
        if not path or path == "." or not os.path.exists(path):
            raise LayerError(f"{path or 'mask file'}: no such file; choose a mask file first.")
        sshape = level0_shape(slide_layer)
        # A raster mask keeps the kind its file records (the combo follows it);
        # GeoJSON classes are read as the kind chosen here.
        is_geojson = path.lower().endswith((".geojson", ".json"))
        kind = self.kind_value if is_geojson else None
        mask: AnnotationMask = load_mask(path, sshape, kind=kind)
        if mask.kind != self.kind_value:
            self.kind.value = mask.kind
        # Keep the file's own level when it is small enough to paint on;
        # otherwise bring it to the chosen annotation level.
        if mask.downsample >= 1 and mask.shape[0] * mask.shape[1] <= _MAX_PIXELS:
            arr, d = np.asarray(mask.array), mask.downsample
        else:
            d = int(self.level.value)
            arr = resample_mask(mask, sshape, d)
        layer = self._show(arr, d, os.path.basename(path.rstrip("/")))
        layer.metadata["source_path"] = path
        return layer

    def from_shapes(self) -> Labels:
        """Rasterise the shapes of a Shapes layer (polygons, rectangles, ellipses, paths)."""
        from ..core.mask_io import shapes_to_mask

        slide_layer = self._slide_layer()
        shapes = self.shapes.value
        if shapes is None or len(shapes.data) == 0:
            raise LayerError("Pick a Shapes layer with at least one shape drawn on the slide.")
        d = int(self.level.value)
        sshape = level0_shape(slide_layer)
        scale = np.asarray(slide_layer.scale[-2:], float)
        translate = np.asarray(slide_layer.translate[-2:], float)
        level0 = []
        for verts in shapes.data:
            world = np.asarray(shapes._data_to_world(np.asarray(verts)))[..., -2:]
            # World -> level-0 pixel edges (napari places pixel centres, hence +0.5).
            level0.append((world - translate) / scale + 0.5)
        widths = [float(w) / float(scale[-1]) for w in shapes.edge_width]
        arr = shapes_to_mask(level0, list(shapes.shape_type), sshape, d, widths=widths)
        arr = (np.asarray(arr) > 0).astype(np.uint8)
        if self.kind_value == "scribble":
            arr = arr * 2  # shapes mark tissue; the rest stays unlabelled
        return self._show(arr, d, f"Shapes '{shapes.name}'")

    def save(self, path: str | os.PathLike) -> list[str]:
        """Save the mask layer through the plugin's writer (OME-Zarr or pyramidal TIFF)."""
        name = self.mask_name.value or "tissue mask"
        if name not in self.viewer.layers:
            raise LayerError(f"No mask layer named '{name}' to save; make or load one first.")
        path = str(path)
        if not path or path == ".":
            raise LayerError("Choose where to save the mask (a .ome.zarr or .tif path).")
        layer = self.viewer.layers[name]
        written = layer.save(path, plugin="napari-gigapixel")
        self.status.value = f"saved {os.path.basename(path)}"
        show_info(f"Saved mask to {path}")
        return written

    def _mask_layer(self) -> Labels:
        name = self.mask_name.value or "tissue mask"
        if name not in self.viewer.layers:
            raise LayerError(f"No mask layer named '{name}' to export; make or load one first.")
        return self.viewer.layers[name]

    def _export_clicked(self) -> Any:
        """The Export button: ask where (when no path is set), export in a thread."""
        layer, slide = self._mask_layer(), self._slide_layer()
        path = ask_path(self.export_path)
        self._export_worker = start_export(
            layer, slide, path, button=self.export_button, status=self.status
        )
        return self._export_worker

    def export(self, path: str | os.PathLike) -> dict[str, Any]:
        """Write the mask layer as QuPath GeoJSON (scribbles: Tissue and Background)."""
        result = export_layer(self._mask_layer(), self._slide_layer(), path)
        self.status.value = summary(result)
        show_info(f"Exported mask to {path}")
        return result


__all__ = ["AnnotateWidget", "KINDS"]
