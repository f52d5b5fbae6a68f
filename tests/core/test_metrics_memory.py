"""Counting reads only one tile's window of each mask at a time (the evaluate memory bug).

``confusion``/``evaluate`` once counted tiles with ``dask.delayed``, which
unpacks dataclass arguments: the masks' whole dask arrays became inputs of
every task and were computed whole (24 GB at 1 Gpx). The masks here are dask
arrays over an array-like that records every window it is asked for, in one
dask chunk: a whole-array compute shows up as one request of the whole mask,
while the per-tile reads (dask fuses a slice of a ``from_array`` chunk into
its getter) ask for one tile's window each.
"""

from __future__ import annotations

import threading

import dask
import dask.array as da
import numpy as np
import pytest

from napari_gigapixel.core.confusion import confusion
from napari_gigapixel.core.masks import AnnotationMask
from napari_gigapixel.core.metrics import evaluate
from napari_gigapixel.core.metrics_grid import confusion_grid

H, W = 700, 900
TILE = 128


class _Recorder:
    """A 2-D array-like that records the shape of every window read from it."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.ndim = array.ndim
        self.windows: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def __getitem__(self, key):
        out = self.array[key]
        if out.size:  # dask probes a 0 x 0 window for the dtype
            with self._lock:
                self.windows.append(tuple(out.shape))
        return out


def _recorded(array: np.ndarray) -> tuple[da.Array, _Recorder]:
    rec = _Recorder(array)
    return da.from_array(rec, chunks=array.shape), rec  # one chunk: the whole mask


def _blobs(shape, seed):
    rng = np.random.default_rng(seed)
    small = rng.random((shape[0] // 16 + 2, shape[1] // 16 + 2))
    return (np.kron(small, np.ones((16, 16)))[: shape[0], : shape[1]] < 0.5).astype(np.uint8)


def _reference(pred: np.ndarray, dp: int, truth: np.ndarray, dt: int, refined: bool = False):
    if refined:  # a stored prediction is counted along its probability's threshold line
        from napari_gigapixel.core.mask_refine import RefinedMask

        p = RefinedMask(pred * 255, pred, dp, 0.5).read_window(0, H, 0, W).astype(bool)
    else:
        p = np.repeat(np.repeat(pred, dp, 0), dp, 1)[:H, :W].astype(bool)
    t = np.repeat(np.repeat(truth, dt, 0), dt, 1)[:H, :W].astype(bool)
    return (int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum()), int((~p & ~t).sum()))


def _assert_tile_sized(rec: _Recorder, side: int) -> None:
    """Every request fits one tile (``side`` mask pixels, plus one for a straddle)."""
    assert rec.windows, "the mask was never read"
    biggest = max(rec.windows, key=lambda s: s[0] * s[1])
    assert biggest[0] <= side + 1 and biggest[1] <= side + 1, (biggest, rec.shape)
    # ... and together they read each mask pixel about once, not once per tile.
    assert sum(a * b for a, b in rec.windows) <= 1.5 * rec.shape[0] * rec.shape[1]


def test_the_recorder_sees_a_whole_mask_computed_through_dask_delayed():
    # The old counting's mechanism, reproduced: a dataclass argument of a
    # delayed call has its dask array computed whole before the task runs.
    arr, rec = _recorded(_blobs((H, W), 1))
    mask = AnnotationMask(arr)
    task = dask.delayed(lambda m: int(m.read_window(0, TILE, 0, TILE).sum()))(mask)
    dask.compute(task, scheduler="sync")
    assert (H, W) in rec.windows  # what the tile-sized assertion below rejects


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_confusion_reads_one_tile_window_at_a_time(scheduler):
    pred, truth = _blobs((-(-H // 4), -(-W // 4)), 2), _blobs((-(-H // 2), -(-W // 2)), 3)
    pred_d, pred_rec = _recorded(pred)
    truth_d, truth_rec = _recorded(truth)
    c = confusion(
        AnnotationMask(pred_d, downsample=4.0),
        AnnotationMask(truth_d, downsample=2.0),
        shape=(H, W),
        chunk=TILE,
        scheduler=scheduler,
    )
    assert (c.tp, c.fp, c.fn, c.tn) == _reference(pred, 4, truth, 2)
    _assert_tile_sized(pred_rec, TILE // 4)
    _assert_tile_sized(truth_rec, TILE // 2)


def test_confusion_grid_reads_one_block_window_at_a_time():
    pred, truth = _blobs((H, W), 4), _blobs((H, W), 5)
    pred_d, pred_rec = _recorded(pred)
    truth_d, truth_rec = _recorded(truth)
    # Pixels of a 1/2 working resolution, 64 of them a side at a time.
    c = confusion_grid(
        AnnotationMask(pred_d),
        AnnotationMask(truth_d),
        origin=(0.0, 0.0),
        shape=(H // 2, W // 2),
        step=2.0,
        chunk=64,
    )
    p, t = pred[1::2, 1::2].astype(bool), truth[1::2, 1::2].astype(bool)
    assert (c.tp, c.fn) == (int((p & t).sum()), int((~p & t).sum()))
    for rec in (pred_rec, truth_rec):
        biggest = max(rec.windows, key=lambda s: s[0] * s[1])
        assert biggest[0] <= 2 * 64 and biggest[1] <= 2 * 64, biggest


def test_evaluate_reads_the_truth_one_tile_window_at_a_time(tmp_path):
    from napari_gigapixel.core.prediction_store import build_pyramids, create_store, mark_complete

    pred = _blobs((-(-H // 4), -(-W // 4)), 6)
    meta = {
        "kind": "prediction",
        "downsample": 4.0,
        "slide_shape": [H, W],
        "slide_path": None,
        "roi": None,
        "offset": [0, 0],
        "region_shape": [H, W],
        "threshold": 0.5,
    }
    prob, mask = create_store(tmp_path / "p.zarr", pred.shape, 64, meta)
    prob[:] = pred * 255
    mask[:] = pred
    build_pyramids(tmp_path / "p.zarr")
    mark_complete(tmp_path / "p.zarr")
    truth = _blobs((H, W), 7)
    truth_d, truth_rec = _recorded(truth)
    out = evaluate(tmp_path / "p.zarr", AnnotationMask(truth_d), chunk=TILE)
    ref = _reference(pred, 4, truth, 1, refined=True)
    assert (out["tp"], out["fp"], out["fn"], out["tn"]) == ref
    _assert_tile_sized(truth_rec, TILE)
