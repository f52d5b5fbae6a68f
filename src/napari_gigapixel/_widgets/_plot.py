"""A small QPainter plot of training curves (loss and Dice against step).

No matplotlib, no vispy: two stacked panels drawn with QPainter on a fixed
dark background so the text stays legible whatever napari theme is active.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

_BG = QColor(38, 41, 48)
_FG = QColor(220, 222, 226)
_GRID = QColor(70, 74, 84)
_COLOURS = {"loss": QColor(255, 170, 60), "dice": QColor(90, 200, 255)}


def _nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    ticks = []
    v = start
    while v <= hi + 1e-12:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100 or abs(v) < 0.01:
        return f"{v:.2g}"
    return f"{v:.2f}".rstrip("0").rstrip(".")


class CurvesPlot(QWidget):
    """Loss and Dice curves that grow as steps arrive.

    Call :meth:`add_point` per step and :meth:`clear` for a new run; the data
    is kept in :attr:`steps`, :attr:`loss` and :attr:`dice` (tests read them).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.steps: list[int] = []
        self.loss: list[float] = []
        self.dice: list[float] = []
        self.setMinimumSize(260, 220)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def clear(self) -> None:
        """Forget all points (a new run starts)."""
        self.steps.clear()
        self.loss.clear()
        self.dice.clear()
        self.update()

    def add_point(self, step: int, loss: float, dice: float) -> None:
        """Append one step's loss and Dice and repaint."""
        self.steps.append(int(step))
        self.loss.append(float(loss))
        self.dice.append(float(dice))
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt name)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), _BG)
        font = QFont(self.font())
        font.setPointSizeF(max(8.0, font.pointSizeF()))
        p.setFont(font)
        h = self.height()
        half = (h - 24) / 2
        # x axis label shared at the bottom; two panels above it.
        self._panel(p, QRectF(0, 0, self.width(), half), "loss", self.loss, None)
        self._panel(p, QRectF(0, half, self.width(), half), "Dice", self.dice, (0.0, 1.0))
        p.setPen(_FG)
        p.drawText(QRectF(0, h - 22, self.width(), 20), Qt.AlignmentFlag.AlignCenter, "step")
        p.end()

    def _panel(self, p: QPainter, box: QRectF, title: str, ys: list[float], yrange) -> None:
        fm = p.fontMetrics()
        left = box.left() + fm.horizontalAdvance("0.000") + 12
        right = box.right() - 10
        top = box.top() + fm.height() + 6
        bottom = box.bottom() - fm.height() - 4
        plot = QRectF(left, top, max(10.0, right - left), max(10.0, bottom - top))
        colour = _COLOURS["loss" if title == "loss" else "dice"]
        last = f" = {_fmt(ys[-1]) if abs(ys[-1]) >= 0.01 else f'{ys[-1]:.3g}'}" if ys else ""
        p.setPen(colour)
        p.drawText(
            QRectF(left, box.top() + 2, plot.width(), fm.height()),
            Qt.AlignmentFlag.AlignLeft,
            f"{title}{last}",
        )
        # y range: fixed for Dice, from the data for the loss.
        if yrange is None:
            lo = min(ys) if ys else 0.0
            hi = max(ys) if ys else 1.0
            lo = min(0.0, lo)
            if hi - lo < 1e-9:
                hi = lo + 1.0
        else:
            lo, hi = yrange
        n = max(len(self.steps), 1)
        x_lo = self.steps[0] if self.steps else 0
        x_hi = self.steps[-1] if len(self.steps) > 1 else x_lo + 1

        def to_px(x: float, y: float) -> QPointF:
            fx = (x - x_lo) / (x_hi - x_lo)
            fy = (y - lo) / (hi - lo)
            return QPointF(plot.left() + fx * plot.width(), plot.bottom() - fy * plot.height())

        for t in _nice_ticks(lo, hi, 3):
            pt = to_px(x_lo, t)
            p.setPen(QPen(_GRID, 1))
            p.drawLine(QPointF(plot.left(), pt.y()), QPointF(plot.right(), pt.y()))
            p.setPen(_FG)
            p.drawText(
                QRectF(box.left(), pt.y() - fm.height() / 2, left - box.left() - 4, fm.height()),
                Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                _fmt(t),
            )
        for t in _nice_ticks(x_lo, x_hi, 4):
            if t != int(t):
                continue
            pt = to_px(t, lo)
            p.setPen(_FG)
            p.drawText(
                QRectF(pt.x() - 30, plot.bottom() + 2, 60, fm.height()),
                Qt.AlignmentFlag.AlignHCenter,
                str(int(t)),
            )
        p.setPen(QPen(_FG, 1))
        p.drawRect(plot)
        if not ys:
            return
        p.setPen(QPen(colour, 2))
        pts = [to_px(x, y) for x, y in zip(self.steps, ys)]
        for a, b in zip(pts, pts[1:]):
            p.drawLine(a, b)
        if n < 40:
            for pt in pts:
                p.drawEllipse(pt, 2.5, 2.5)
