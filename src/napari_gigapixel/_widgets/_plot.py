"""A small QPainter plot of training curves (loss and Dice against step, train and validation).

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
#: Validation curves (both panels) and the best step's marker.
_VAL = QColor(120, 230, 120)


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


def _value(v: float, digits: int) -> str:
    return f"{v:.{digits}f}" if abs(v) >= 0.01 else f"{v:.3g}"


class CurvesPlot(QWidget):
    """Loss and Dice curves (train, and validation when scored) that grow as steps arrive.

    Call :meth:`add_point` per step, :meth:`add_validation` per validation and
    :meth:`clear` for a new run; the data is kept in :attr:`steps`,
    :attr:`loss`, :attr:`dice`, :attr:`val_steps`, :attr:`val_loss`,
    :attr:`val_dice` and :attr:`best_step` (tests read them).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.steps: list[int] = []
        self.loss: list[float] = []
        self.dice: list[float] = []
        self.val_steps: list[int] = []
        self.val_loss: list[float] = []
        self.val_dice: list[float] = []
        self.best_step: int | None = None
        self.setMinimumSize(260, 170)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def clear(self) -> None:
        """Forget all points (a new run starts)."""
        for series in (self.steps, self.loss, self.dice):
            series.clear()
        for series in (self.val_steps, self.val_loss, self.val_dice):
            series.clear()
        self.best_step = None
        self.update()

    def add_validation(self, step: int, loss: float, dice: float, best_step: int | None) -> None:
        """Append one validation's loss and Dice (and the best step so far) and repaint."""
        self.val_steps.append(int(step))
        self.val_loss.append(float(loss))
        self.val_dice.append(float(dice))
        self.best_step = best_step
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
        self._panel(p, QRectF(0, 0, self.width(), half), "loss", self.loss, self.val_loss, None)
        # Dice: from 0, or zoomed to the tenths the curves span once they are high.
        lows = [*self.dice, *self.val_dice]
        lo = max(0.0, math.floor(min(lows) * 10 - 1e-9) / 10) if lows else 0.0
        self._panel(
            p, QRectF(0, half, self.width(), half), "Dice", self.dice, self.val_dice, (lo, 1.0)
        )
        p.setPen(_FG)
        p.drawText(QRectF(0, h - 22, self.width(), 20), Qt.AlignmentFlag.AlignCenter, "step")
        p.end()

    def _panel(
        self, p: QPainter, box: QRectF, title: str, ys: list[float], vys: list[float], yrange
    ) -> None:
        fm = p.fontMetrics()
        left = box.left() + fm.horizontalAdvance("0.000") + 12
        right = box.right() - 10
        top = box.top() + fm.height() + 6
        bottom = box.bottom() - fm.height() - 4
        plot = QRectF(left, top, max(10.0, right - left), max(10.0, bottom - top))
        colour = _COLOURS["loss" if title == "loss" else "dice"]
        digits = 3 if title == "Dice" else 2
        head = f"train {title}" if vys else title
        last = f" {_value(ys[-1], digits)}" if ys else ""
        p.setPen(colour)
        text = f"{head}{last}"
        line = QRectF(left, box.top() + 2, plot.width(), fm.height())
        p.drawText(line, Qt.AlignmentFlag.AlignLeft, text)
        if vys:
            # The validation legend, in its colour, after the train one.
            val = f"   val {_value(vys[-1], digits)}"
            if title == "Dice" and self.best_step is not None:
                val += f" (best {_value(max(vys), digits)} @ {self.best_step})"
            p.setPen(_VAL)
            p.drawText(
                line.translated(fm.horizontalAdvance(text), 0), Qt.AlignmentFlag.AlignLeft, val
            )
        # y range: given for Dice, from the data for the loss.
        if yrange is None:
            lo = min([*ys, *vys]) if ys or vys else 0.0
            hi = max([*ys, *vys]) if ys or vys else 1.0
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
        p.save()
        p.setClipRect(plot.adjusted(-3, -3, 3, 3))
        for xs, series, pen, dots in (
            (self.steps, ys, QPen(colour, 2), n < 40),
            (self.val_steps, vys, QPen(_VAL, 2), True),
        ):
            pts = [to_px(x, y) for x, y in zip(xs, series)]
            p.setPen(pen)
            for a, b in zip(pts, pts[1:]):
                p.drawLine(a, b)
            if dots:
                for pt in pts:
                    p.drawEllipse(pt, 2.5, 2.5)
        if title == "Dice" and self.best_step in self.val_steps:
            # Ring the best validation point: the step kept as <model>.best.keras.
            i = self.val_steps.index(self.best_step)
            p.setPen(QPen(_VAL, 2))
            p.drawEllipse(to_px(self.best_step, vys[i]), 6.0, 6.0)
        p.restore()
