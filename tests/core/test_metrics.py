"""Metrics: chunked full-resolution counts equal in-memory ones; Otsu baseline; evaluate."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_gigapixel.core import otsu
from napari_gigapixel.core.mask_refine import RefinedMask
from napari_gigapixel.core.masks import AnnotationMask, MaskError
from napari_gigapixel.core.metrics import (
    Confusion,
    confusion,
    dice,
    evaluate,
    iou,
    otsu_threshold,
    otsu_tissue_mask,
    precision,
    recall,
)

H, W = 517, 1301


def _blobs(shape, seed, frac=0.5):
    """A smooth random binary map (blobs, not salt and pepper)."""
    rng = np.random.default_rng(seed)
    small = rng.random((shape[0] // 16 + 2, shape[1] // 16 + 2))
    big = np.kron(small, np.ones((16, 16)))[: shape[0], : shape[1]]
    return (big < frac).astype(np.uint8)


def _up(mask, d, shape):
    """Reference nearest upsampling of an integer-downsample mask, in memory."""
    return np.repeat(np.repeat(mask, d, 0), d, 1)[: shape[0], : shape[1]]


def _counts(p, t, w=None):
    w = np.ones(p.shape, bool) if w is None else w
    p, t = p.astype(bool), t.astype(bool)
    return Confusion(
        int((p & t & w).sum()),
        int((p & ~t & w).sum()),
        int((~p & t & w).sum()),
        int((~p & ~t & w).sum()),
    )


@pytest.mark.parametrize(("dp", "dt"), [(1, 1), (4, 1), (4, 8), (8, 2), (2, 16)])
@pytest.mark.parametrize("chunk", [128, 333, 4096])
def test_chunked_counts_equal_in_memory_counts(dp, dt, chunk):
    pred = _blobs((-(-H // dp), -(-W // dp)), seed=1)
    truth = _blobs((-(-H // dt), -(-W // dt)), seed=2)
    ref = _counts(_up(pred, dp, (H, W)), _up(truth, dt, (H, W)))
    got = confusion(
        da.from_array(pred, chunks=64),
        truth,
        shape=(H, W),
        pred_downsample=dp,
        truth_downsample=dt,
        chunk=chunk,
    )
    assert got == ref
    assert got.total == H * W


def test_non_integer_levels_fall_back_to_full_resolution_sampling():
    # A level 3x smaller: sampled per level-0 pixel, like read_window(stride=1).
    pred = _blobs((H // 3 + 1, W // 3 + 1), seed=3)
    truth = AnnotationMask(_blobs((H, W), seed=4))
    pm = AnnotationMask(pred, downsample=3.0)
    ref = _counts(pm.read_window(0, H, 0, W, 1), truth.array)
    assert confusion(pm, truth, chunk=200) == ref


def test_scribbles_leave_unlabelled_pixels_out():
    rng = np.random.default_rng(5)
    scrib = rng.integers(0, 3, (H // 4 + 1, W // 4 + 1)).astype(np.uint8)
    pred = _blobs((H, W), seed=6)
    truth = AnnotationMask(scrib, downsample=4.0, kind="scribble")
    full = _up(scrib, 4, (H, W))
    ref = _counts(pred, full == 2, full > 0)
    got = confusion(pred, truth, shape=(H, W), chunk=256)
    assert got == ref and got.total == int((full > 0).sum())


def test_scores_from_counts_and_their_empty_cases():
    c = Confusion(tp=30, fp=10, fn=20, tn=40)
    assert dice(c) == pytest.approx(60 / 90)
    assert iou(c) == pytest.approx(30 / 60)
    assert precision(c) == pytest.approx(0.75) and recall(c) == pytest.approx(0.6)
    assert dice({"tp": 1, "fp": 1, "fn": 0}) == pytest.approx(2 / 3)
    nothing = Confusion(0, 0, 0, 100)  # no tissue anywhere, none predicted
    assert dice(nothing) == iou(nothing) == precision(nothing) == recall(nothing) == 1.0
    missed = Confusion(0, 0, 5, 95)  # predicted nothing, there was tissue
    assert dice(missed) == iou(missed) == precision(missed) == recall(missed) == 0.0
    invented = Confusion(0, 5, 0, 95)  # predicted tissue where there is none
    assert dice(invented) == precision(invented) == recall(invented) == 0.0


def test_otsu_threshold_matches_scikit_image():
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(80, 15, 5000), rng.normal(200, 20, 9000)])
    u8 = np.clip(values, 0, 255).astype(np.uint8)
    assert otsu_threshold(u8) == threshold_otsu(u8)
    f = values.astype(np.float64)
    assert otsu_threshold(f) == pytest.approx(threshold_otsu(f), abs=(f.max() - f.min()) / 256)
    assert otsu_threshold(np.full(10, 7, np.uint8)) == 7


def _slide(seed=0):
    """Glass (bright) with darker pink 'tissue' blobs, noisy; and its truth."""
    truth = _blobs((H, W), seed=seed, frac=0.4)
    rng = np.random.default_rng(seed)
    rgb = np.where(truth[..., None] == 1, [170, 90, 150], [238, 236, 240]).astype(np.float64)
    rgb += rng.normal(0, 12, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), truth


def test_otsu_tissue_mask_finds_tissue_at_a_low_level(monkeypatch):
    rgb, truth = _slide()
    levels = [rgb, rgb[1::4, 1::4], rgb[3::8, 3::8]]  # level 0, 1/4, 1/8 (block centres)
    monkeypatch.setattr(otsu, "OTSU_MAX_PIXELS", 20_000)  # picks the 1/8 level
    mask = otsu_tissue_mask(levels)
    assert mask.downsample == 8.0 and mask.shape == levels[2].shape[:2]
    assert 150 < mask.threshold < 238  # between tissue and glass gray values
    assert dice(confusion(mask, truth, shape=(H, W))) > 0.97
    sat = otsu_tissue_mask(levels, level=1, channel="saturation")
    assert sat.downsample == 4.0 and dice(confusion(sat, truth, shape=(H, W))) > 0.97
    # No level small enough: block-centre sampling of the coarsest one.
    monkeypatch.setattr(otsu, "OTSU_MAX_PIXELS", 4_000_000)
    one = otsu_tissue_mask(rgb)
    assert one.downsample == 1.0  # 517 x 1301 fits under the default budget
    monkeypatch.setattr(otsu, "OTSU_MAX_PIXELS", 10_000)
    sampled = otsu_tissue_mask([rgb])
    assert sampled.downsample == 9.0  # coarse: 16 px blobs sampled every 9 px
    assert dice(confusion(sampled, truth, shape=(H, W))) > 0.8


def _write_prediction(path, mask_level, downsample, slide_shape, slide_path=None, roi=None):
    """A finished prediction store written without a model (the store format only)."""
    from napari_gigapixel.core.prediction_store import build_pyramids, create_store, mark_complete

    region = (roi[2] - roi[0], roi[3] - roi[1]) if roi else slide_shape
    meta = {
        "kind": "prediction",
        "downsample": float(downsample),
        "slide_shape": list(slide_shape),
        "slide_path": slide_path,
        "roi": list(roi) if roi else None,
        "offset": [roi[0], roi[1]] if roi else [0, 0],
        "region_shape": list(region),
        "threshold": 0.5,
    }
    prob, mask = create_store(path, mask_level.shape, 64, meta)
    prob[:] = mask_level * 255
    mask[:] = mask_level
    build_pyramids(path)
    mark_complete(path)


def test_evaluate_scores_a_stored_prediction_beside_otsu(tmp_path):
    rgb, truth = _slide(seed=1)
    pred4 = _blobs((-(-H // 4), -(-W // 4)), seed=9)
    _write_prediction(tmp_path / "p.zarr", pred4, 4, (H, W))
    truth8 = truth[3::8, 3::8]  # the truth at 1/8, level inferred from its shape
    out = evaluate(tmp_path / "p.zarr", truth8, slide=[rgb, rgb[1::4, 1::4]], chunk=300)
    # Counted at level 0 along the probability's 0.5 line (core/mask_refine.py):
    # here a 0/255 probability, so the blocks with their corners rounded.
    refined = RefinedMask(pred4 * 255, pred4, 4, 0.5).read_window(0, H, 0, W)
    assert 0 < (refined != _up(pred4, 4, (H, W))).sum() < 0.01 * H * W
    ref = _counts(refined, _up(truth8, 8, (H, W)))
    assert out["tp"] == ref.tp and out["fn"] == ref.fn and out["pixels"] == H * W
    assert out["dice"] == pytest.approx(dice(ref)) and out["iou"] == pytest.approx(iou(ref))
    assert out["truth_downsample"] == 8.0 and out["pred_downsample"] == 4.0
    assert out["otsu_dice"] > 0.9 > out["dice"]  # random prediction vs a clean baseline
    no_slide = evaluate(tmp_path / "p.zarr", truth8)
    assert no_slide["otsu_dice"] is None and no_slide["dice"] == out["dice"]


def test_evaluate_a_region_of_interest(tmp_path):
    _, truth = _slide(seed=2)
    roi = (40, 200, 300, 900)  # y0, x0, y1, x1
    region_truth = truth[40:300, 200:900]
    pred = region_truth[::2, ::2].copy()
    pred[:20] = 1 - pred[:20]  # some errors
    _write_prediction(tmp_path / "r.zarr", pred, 2, (H, W), roi=roi)
    out = evaluate(tmp_path / "r.zarr", AnnotationMask(truth))
    ref = _counts(_up(pred, 2, region_truth.shape), region_truth)
    assert (out["tp"], out["fp"], out["fn"], out["tn"]) == (ref.tp, ref.fp, ref.fn, ref.tn)


def test_evaluate_rejects_a_truth_of_another_slide(tmp_path):
    _write_prediction(tmp_path / "p.zarr", np.zeros((130, 326), np.uint8), 4, (H, W))
    with pytest.raises(MaskError, match="cannot overlay a 517 x 1301 slide"):
        evaluate(tmp_path / "p.zarr", np.zeros((100, 100), np.uint8))
