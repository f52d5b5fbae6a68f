"""Export a Labels layer (a prediction or a mask) as QuPath GeoJSON: the widgets' share.

The Review and Annotate widgets each show an "export to" field and an Export
button built here; the work is :func:`napari_gigapixel.core.export.export_events`,
run in a thread worker by the button (:func:`start_export`) and directly by the
widgets' ``export(path)`` methods.
A prediction layer added from a store (``metadata["path"]``) is traced from the
store itself (its finest level, strip by strip); any other Labels layer from
its finest level under the mask budget, placed on the slide by its scale and
translate.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from magicgui.widgets import FileEdit, PushButton

from ..core.masks import AnnotationMask, infer_downsample
from ._layers import LayerError, labels_level, level0_shape

GEOJSON_FILTER = "GeoJSON (*.geojson)"


def export_controls() -> tuple[FileEdit, PushButton]:
    """The "export to" file field and the Export button of a widget."""
    path = FileEdit(
        label="export to",
        mode="w",
        filter=GEOJSON_FILTER,
        tooltip="QuPath GeoJSON file (File > Import objects in QuPath). Leave empty to be asked.",
    )
    button = PushButton(
        text="Export to QuPath (GeoJSON)",
        tooltip="Polygons with holes, class Tissue, in level-0 pixel coordinates.",
    )
    return path, button


def ask_path(field: FileEdit) -> str:
    """The path in ``field``; when empty, ask with a save dialog (and fill the field)."""
    path = str(field.value)
    if path and path != "." and not os.path.isdir(path):
        return path
    from magicgui.widgets import show_file_dialog

    chosen = show_file_dialog(mode="w", caption="Export to QuPath GeoJSON", filter=GEOJSON_FILTER)
    if not chosen:
        raise LayerError("Export cancelled: choose a .geojson file to write.")
    if not chosen.lower().endswith((".geojson", ".json")):
        chosen += ".geojson"
    field.value = chosen
    return chosen


def layer_source(layer: Any, slide_layer: Any) -> Any:
    """What :func:`~napari_gigapixel.core.export.open_source` should trace for ``layer``."""
    from ..core.export import ExportSource
    from ..core.prediction_store import is_prediction_path

    meta = layer.metadata or {}
    store = meta.get("path")
    if store and is_prediction_path(store):
        return str(store)
    arr, level = labels_level(layer)
    sshape = level0_shape(slide_layer)
    if level == 0 and meta.get("downsample") is not None:  # our widgets record it
        d = float(meta["downsample"])
    else:
        d = infer_downsample(tuple(arr.shape[-2:]), sshape, name=f"layer '{layer.name}'")
    data = np.asarray(arr)
    if data.ndim != 2:
        raise LayerError(f"Labels layer '{layer.name}' is {data.ndim}-D; a tissue mask is 2-D.")
    # Where mask pixel (0, 0) starts on the slide: undo overlay_transform's centring.
    s = np.asarray(slide_layer.scale[-2:], float)
    d0 = float(np.asarray(layer.scale[-1], float) / s[-1])
    shift = np.asarray(layer.translate[-2:], float) - np.asarray(slide_layer.translate[-2:])
    offset = shift / s - (d0 - 1) / 2
    offset = tuple(0.0 if abs(v) < 1e-6 else float(v) for v in offset)
    mask = AnnotationMask(data, float(d), kind=meta.get("kind", "dense"), name=layer.name)
    extent = (sshape[0] - offset[0], sshape[1] - offset[1])
    return ExportSource(mask, offset, extent, layer.name)  # type: ignore[arg-type]


def export_layer(layer: Any, slide_layer: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Write ``layer`` as QuPath GeoJSON at ``path`` (replacing it: the dialog asked)."""
    from ..core.export import export_geojson

    if layer is None or slide_layer is None:
        raise LayerError("Pick the layer to export and the slide it lies on.")
    return export_geojson(layer_source(layer, slide_layer), path, overwrite=True)


def start_export(
    layer: Any, slide_layer: Any, path: str | os.PathLike, *, button: Any, status: Any
) -> Any:
    """Export ``layer`` in a background thread, so the viewer stays responsive.

    The layer is read here (in the GUI thread); the tracing and writing run in
    a napari thread worker. ``button`` is disabled until it ends; ``status``
    shows the progress, then :func:`summary` or the error (also as a
    notification). Returns the started worker.
    """
    from napari.qt.threading import thread_worker
    from napari.utils.notifications import show_error, show_info

    from ..core.events import Finished, Progress
    from ..core.export import export_events

    if layer is None or slide_layer is None:
        raise LayerError("Pick the layer to export and the slide it lies on.")
    source = layer_source(layer, slide_layer)

    # Errors go to on_error (a notification), not re-raised in the event loop.
    @thread_worker(start_thread=False, ignore_errors=True)
    def work() -> Any:
        yield from export_events(source, path, overwrite=True)

    def on_event(event: Any) -> None:
        if isinstance(event, Progress):
            status.value = f"exporting: {event.message}"
        elif isinstance(event, Finished):
            status.value = summary(event.result)
            show_info(f"Exported {event.result['features']} annotations to {path}")

    def on_error(exc: BaseException) -> None:
        status.value = "export failed: see notification"
        show_error(str(exc))

    def on_done() -> None:
        button.enabled = True

    worker = work()
    worker.yielded.connect(on_event)
    worker.errored.connect(on_error)
    worker.finished.connect(on_done)
    button.enabled = False
    status.value = f"exporting to {os.path.basename(str(path))}..."
    worker.start()
    return worker


def summary(result: dict[str, Any]) -> str:
    """One line for a widget's status label."""
    return (
        f"exported {os.path.basename(result['out'])}: {result['features']} annotations, "
        f"{result['holes']} holes"
    )
