"""The resolution picker shared by the Train and Predict widgets (not a widget of its own).

A combo box listing each working resolution of the selected slide (every
pyramid level, then 1, 2, 4, 8 and 16 um/px when the slide records its
um/px) with its um/px, size in megapixels and estimated cost
(:func:`napari_gigapixel.core.resolution_cost.choices`). Its value is a
:class:`~napari_gigapixel.core.resolution.Resolution`, or None for "as
trained" (Predict: the model's own resolution). No TensorFlow: the slide is
opened lazily and the model's metadata read from its zip.
"""

from __future__ import annotations

import os
from typing import Any

from magicgui.widgets import ComboBox, Label

from ..core.errors import GigapixelError
from ..core.resolution import Resolution
from ..core.tiled_model import DEFAULT_TTA

_SLIDES: dict[str, Any] = {}


def _open(path: str) -> Any:
    from ..core.slide import open_slide

    key = os.path.abspath(path)
    if key not in _SLIDES:
        _SLIDES[key] = open_slide(key)
    return _SLIDES[key]


class ResolutionPicker(ComboBox):
    """Combo box of working resolutions with their cost; ``value`` is a Resolution or None."""

    def __init__(self, kind: str = "train") -> None:
        self.kind = kind
        #: Predict's test-time augmentation, which the estimate counts (its widget sets it).
        self.tta = DEFAULT_TTA
        self.entries: list[Any] = []
        default = ("as trained", None) if kind == "predict" else ("level 0", Resolution())
        # What the box lists while no slide's entries are known.
        self._placeholder: list[tuple[str, Any]] = [default]
        super().__init__(
            label="resolution",
            choices=[default],
            tooltip=(
                "Work at a pyramid level or a chosen um/px: a level within 10% of it, else a "
                "mean of a finer level. Costs are estimates from benchmarks (2 shared cores)."
            ),
        )
        # The closed box may elide the costs: ``info`` (a row below) always shows them.
        self.native.setMinimumContentsLength(24)
        self.info = Label(label="estimate", value="")
        self.changed.connect(self._show_info)

    def update_for(
        self, slide_path: str | None, *, memory_gb: float = 3.5, model_path: str | None = None
    ) -> None:
        """List the choices of a slide (keeps the current choice when it is still there).

        ``model_path``: Predict's model (its own resolution is listed first) or
        the checkpoint Train continues: then the one entry is the resolution
        it was trained at (value None, which a resumed run uses).
        """
        from ..core.model_io import read_model_meta
        from ..core.resolution import ResolutionError, trained_request
        from ..core.resolution_cost import checkpoint_choice, choices

        old = self.value
        meta = None
        if model_path and os.path.isfile(model_path):
            try:
                meta = read_model_meta(model_path)
            except GigapixelError:
                meta = None  # Start reports the bad file
        if self.kind == "predict":
            meta = meta or {}
        elif meta is not None:
            head = f"as checkpoint ({trained_request(meta).describe()})"
            self._placeholder = [(head, None)]
        else:
            self._placeholder = [("level 0", Resolution())]
        slide = None
        if slide_path:
            try:
                slide = _open(slide_path)
            except GigapixelError:
                slide = None
        if slide is None:
            self.entries = []
            self._show_placeholder()
            return
        if self.kind == "train" and meta is not None:
            try:
                self.entries = [checkpoint_choice(slide, meta, memory_gb=memory_gb)]
            except ResolutionError:  # this slide lacks it: Start says so (preflight)
                self.entries = []
                self._show_placeholder()
                return
        else:
            self.entries = choices(
                slide, kind=self.kind, memory_gb=memory_gb, model_meta=meta, tta=self.tta
            )
        self._set_entries(old)

    def _show_placeholder(self) -> None:
        self.choices = self._placeholder
        self.value = self._placeholder[0][1]
        if hasattr(self, "info"):
            self._show_info()

    def _set_entries(self, old: Any) -> None:
        self.choices = [(c.label, c.request) for c in self.entries]
        values = [c.request for c in self.entries]
        self.value = old if old in values else values[0]
        # The drop-down list is as wide as its longest entry, whatever the dock's width.
        box = self.native
        widest = max(box.fontMetrics().horizontalAdvance(c.label) for c in self.entries)
        box.view().setMinimumWidth(widest + 40)
        self._show_info()

    def _show_info(self, _value: Any = None) -> None:
        c = self.selected()
        if c is None:
            self.info.value = ""
            return
        r = c.resolved
        um = f"{r.mpp:.3g} um/px, " if r.mpp else ""
        per = "" if self.kind == "predict" else " per step"
        self.info.value = (
            f"{um}downsample {r.downsample:.4g}, {r.shape[0]:,} x {r.shape[1]:,} px: "
            f"~{c.seconds:.2g} s{per}, peak {c.peak_bytes / 2**30:.1f} GiB"
        )
        self.native.setToolTip(c.label)

    def reset_choices(self, *_: Any) -> None:
        """Keep the slide's list (the container resets its children when layers change)."""
        if not getattr(self, "entries", None):
            if hasattr(self, "_placeholder"):
                self._show_placeholder()
            return
        self._set_entries(self.value)

    def selected(self) -> Any:
        """The chosen entry (a :class:`~napari_gigapixel.core.resolution_cost.Choice`) or None."""
        for c in self.entries:
            if c.request == self.value:
                return c
        return None
